"""MongoDB (the chat's database) as a replica set across the pair: rendered, not run here.

No MongoDB server can be installed on the machines this project is built and tested on, so
this module only renders what the appliance needs, golden-tested: the ``mongod.conf``
replication part of each node, and the ``mongosh`` script that initiates the set.

The set: two data-bearing members (the two nodes, priorities favouring neither: the
pair's own failover decides who serves, MongoDB follows its election) and an arbiter on
the pair's third machine (the arbiter's address: it votes, holds no data), so either node
alone with the arbiter keeps a primary. Members authenticate with a key file derived from
the pair key (``keyfile_for``): both nodes compute it; a new pair key gives a new one.

Write concern is explicit (``setDefaultRWConcern``), because a primary-secondary-arbiter
set has no safe implicit one: ``{w: 1, j: true}``, journaled on the primary. ``majority``
would need both data nodes, so every chat message would wait (and fail after
``wtimeout``) whenever one node is down, which is exactly when the pair is failing over;
the price of ``w: 1`` is that a message acknowledged in the last moments before a crash of
the primary may be rolled back (MongoDB keeps it in the rollback directory).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import json
from dataclasses import dataclass

SET_NAME = "voxnode-chat"
PORT = 27017
KEYFILE = "/etc/voxnode/mongodb/pair.keyfile"
_KEY_INFO = b"voxnode mongodb replica set keyfile v1"

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ChatSet:
    nodes: tuple[IP, IP]  # the two nodes' management addresses, lower first
    arbiter: IP | None

    @classmethod
    def of(cls, own: IP, peer: IP, arbiter: IP | None) -> ChatSet:
        low, high = sorted((own, peer), key=lambda a: (a.version, int(a)))
        return cls((low, high), arbiter)


def keyfile_for(pair_key: bytes) -> str:
    """The members' shared key file content (MongoDB: 6-1024 base64 characters)."""
    digest = hmac.new(pair_key, _KEY_INFO, hashlib.sha512).digest()
    return base64.b64encode(digest).decode() + "\n"


def _host(address: IP) -> str:
    return f"[{address}]:{PORT}" if address.version == 6 else f"{address}:{PORT}"


def render_mongod_conf(own: IP) -> str:
    """The replication, security and network part of a node's ``mongod.conf`` (YAML)."""
    return "\n".join([
        "# Written by voxnode-agent: the chat database as one member of the pair's",
        "# replica set. Edits are overwritten.",
        "net:",
        f"  port: {PORT}",
        f"  bindIp: 127.0.0.1,{own}",
        "replication:",
        f"  replSetName: {SET_NAME}",
        "security:",
        "  authorization: enabled",
        f"  keyFile: {KEYFILE}",
        "storage:",
        "  journal:",
        "    enabled: true",
        "",
    ])


def render_initiate(chat: ChatSet) -> str:
    """The ``mongosh`` script, run once on the first master, that creates the set and sets
    its write concern."""
    members: list[dict[str, object]] = [
        {"_id": i, "host": _host(a), "priority": 1, "votes": 1}
        for i, a in enumerate(chat.nodes)
    ]
    if chat.arbiter is not None:
        members.append({"_id": 2, "host": _host(chat.arbiter), "arbiterOnly": True,
                        "votes": 1})
    config = {"_id": SET_NAME, "members": members,
              "settings": {"electionTimeoutMillis": 5000, "heartbeatTimeoutSecs": 5}}
    concern = {"setDefaultRWConcern": 1,
               "defaultWriteConcern": {"w": 1, "j": True, "wtimeout": 5000},
               "defaultReadConcern": {"level": "local"}}
    return "\n".join([
        "// Written by voxnode-agent: initiates the chat database's replica set.",
        f"rs.initiate({json.dumps(config, indent=2)});",
        f"db.adminCommand({json.dumps(concern, indent=2)});",
        "",
    ])
