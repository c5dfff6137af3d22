"""The forced command of the replication's SSH daemon: what a pair key's client may run.

Every key in the sync daemon's authorized keys runs this program (``command=`` in
``ha.replication.sshkeys``), with the one thing that key may do as its arguments; what the
client asked for is in ``SSH_ORIGINAL_COMMAND`` and is checked against that, never run as
given:

- ``receive DIR [PAUSE]``: an rsync receiver writing into DIR (the master's pushes of one
  replicated path); while the file PAUSE exists (this node runs a full sync, which pulls
  the same trees) it answers ``paused:`` instead, and the master tries again later. Only
  ``rsync --server`` with options from a short list (no devices or specials, no other
  directory: the client's destination is replaced by DIR; links that would lead out of
  DIR are left out, ``--safe-links``; setuid and setgid bits are dropped).
- ``send DIR``: an rsync sender reading DIR (a full sync pulling one path from the
  master), same list, ``--sender`` required; or ``voxnode-stat``: DIR's file count, bytes
  and directory count as JSON (the full sync's check).
- ``database SOCKET``: ``voxnode-db info`` (the application's databases, their size and
  the binary log position, as JSON) or ``voxnode-db dump`` (``mariadb-dump`` of those
  databases, one consistent snapshot with its GTID position).
- ``check MODE ARG``: print what would run for ``SSH_ORIGINAL_COMMAND`` (tests, and an
  administrator asking why a client is refused); never runs it.

A refusal says why on stderr (the client shows it) and exits 1. It is a script of its own,
not part of the agent's binary: sshd starts it for every transfer, so it must start fast,
and it runs under the system's Python (AlmaLinux 8's ``platform-python``, Python 3.6): only
the standard library, and nothing newer than 3.6.
"""

import json
import os
import re
import subprocess
import sys
from typing import Any, Dict, List, Optional, Set, TextIO

RSYNC = "/usr/bin/rsync"
MARIADB = "/usr/bin/mariadb"
MARIADB_DUMP = "/usr/bin/mariadb-dump"
PARTIAL_DIR = ".voxnode-partial"
MAX_TOKENS = 24
MAX_TOKEN = 200
# rsync's short options a client of ours sends (-rlptgo, -n for a dry run, -v, -c, -W,
# -I, -x, -z); never D (devices and special files)
SHORT_RECEIVE = set("logtprvcWIxz")
SHORT_SEND = SHORT_RECEIVE | {"n"}
SYSTEM_DATABASES = ("mysql", "information_schema", "performance_schema", "sys")
DUMP_OPTIONS = ("--single-transaction", "--gtid", "--master-data=2", "--skip-extended-insert",
                "--no-autocommit", "--add-drop-database", "--routines", "--events",
                "--triggers", "--hex-blob", "--skip-dump-date")
DUMP_DONE = "-- Dump completed"
PAUSED = "paused:"
# what every receiver of ours runs with: no link that leads out of the tree, no setuid or
# setgid program (a stolen write key plants neither)
RECEIVER_SAFETY = ["--safe-links", "--chmod=u-s,g-s"]


class Refused(Exception):
    pass


def _tokens(command: str) -> List[str]:
    if not command:
        raise Refused("no command given (this key runs only the replication's transfers)")
    if len(command) > MAX_TOKENS * MAX_TOKEN:
        raise Refused("the command is too long")
    if re.search(r"[^A-Za-z0-9 ._/=,:+-]", command):
        raise Refused("the command has characters no transfer of ours uses")
    tokens = command.split()
    if len(tokens) > MAX_TOKENS or any(len(t) > MAX_TOKEN for t in tokens):
        raise Refused("the command has too many or too long words")
    return tokens


def _short_cluster(token: str, allowed: Set[str]) -> None:
    """``-logtpre.iLsfxC``: options, then ``e.`` and the protocol's capability letters."""
    body = token[1:]
    options, _, capabilities = body.partition("e.")
    if "e" in options or not options.isalpha() or not set(options) <= allowed:
        bad = "".join(sorted(set(options) - allowed - {"e"})) or options
        raise Refused(f"rsync option -{bad} is not allowed")
    if capabilities and not capabilities.isalpha():
        raise Refused(f"malformed rsync capabilities in {token}")


def rsync_argv(mode: str, target: str, command: str) -> List[str]:
    """The rsync server to run for the client's ``command`` (``mode``: receive or send)."""
    tokens = _tokens(command)
    if tokens[:2] != ["rsync", "--server"]:
        raise Refused("only rsync transfers are allowed")
    rest = tokens[2:]
    sender = bool(rest) and rest[0] == "--sender"
    if sender:
        rest = rest[1:]
    if sender != (mode == "send"):
        raise Refused("this key may only {} {}".format(
            "read" if mode == "send" else "write", target))
    if len(rest) < 2 or rest[-2] != ".":
        raise Refused("malformed rsync server command")
    options = []  # type: List[str]
    receive_only = ("--delete", "--partial-dir=" + PARTIAL_DIR)
    i = 0
    words = rest[:-2]
    while i < len(words):
        word = words[i]
        if re.match(r"^-[A-Za-z]", word):
            _short_cluster(word, SHORT_SEND if sender else SHORT_RECEIVE)
            options.append(word)
        elif word in (receive_only if not sender else ()) or word in (
                "--numeric-ids", "--safe-links") or (
                re.match(r"^--(bwlimit|timeout)=[0-9]{1,9}$", word)):
            options.append(word)
        elif word == "--partial-dir" and not sender and i + 1 < len(words) and (
                words[i + 1] == PARTIAL_DIR):
            options.append("--partial-dir=" + PARTIAL_DIR)
            i += 1
        else:
            raise Refused(f"rsync option {word} is not allowed")
        i += 1
    argv = [RSYNC, "--server"] + (["--sender"] if sender else []) + options
    if not sender:
        argv += RECEIVER_SAFETY
    return [*argv, ".", target.rstrip("/") + "/"]


def safe_link(root: str, link: str) -> bool:
    """A link rsync's ``--safe-links`` keeps: relative, and not leading out of ``root``."""
    try:
        target = os.readlink(link)
    except OSError:
        return False
    if target.startswith("/"):
        return False
    where = os.path.normpath(os.path.join(os.path.dirname(link), target))
    return where == root or where.startswith(root.rstrip("/") + "/")


def tree_stat(target: str) -> Dict[str, int]:
    """Regular files, their bytes, directories and the links that stay inside under
    ``target`` (not following links; rsync's partial files left out): what a copy of the
    tree must show the same."""
    files = size = directories = links = 0
    root = os.path.normpath(target)
    for current, dirs, names in os.walk(target):
        kept = []
        for d in dirs:
            full = os.path.join(current, d)
            if d == PARTIAL_DIR:
                continue
            if os.path.islink(full):
                links += safe_link(root, full)
            else:
                kept.append(d)
        dirs[:] = kept
        directories += len(dirs)
        for name in names:
            full = os.path.join(current, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue  # gone meanwhile
            if (st.st_mode & 0o170000) == 0o100000:
                files += 1
                size += st.st_size
            elif (st.st_mode & 0o170000) == 0o120000:
                links += safe_link(root, full)
    return {"files": files, "bytes": size, "directories": directories, "links": links}


def _query(socket: str, sql: str) -> str:
    proc = subprocess.Popen([MARIADB, "--socket=" + socket, "-N", "-B", "-e", sql],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, universal_newlines=True)
    out, err = proc.communicate(timeout=60)
    if proc.returncode != 0:
        raise Refused("the database cannot be read: " + (err.strip().splitlines() or ["?"])[-1])
    return out


def user_databases(socket: str) -> List[str]:
    names = ", ".join(f"'{n}'" for n in SYSTEM_DATABASES)
    out = _query(socket, "SELECT schema_name FROM information_schema.schemata "
                 f"WHERE schema_name NOT IN ({names}) ORDER BY schema_name")
    return [line for line in out.split("\n") if line]


def database_info(socket: str) -> Dict[str, Any]:
    databases = user_databases(socket)
    names = ", ".join("'{}'".format(n.replace("\\", "\\\\").replace("'", "\\'")) for n in databases)
    size = tables = 0
    if databases:
        out = _query(socket, "SELECT COALESCE(SUM(data_length + index_length), 0), COUNT(*) "
                     "FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND "
                     f"table_schema IN ({names})")
        first = out.split()
        size, tables = int(first[0]), int(first[1])
    position = _query(socket, "SELECT @@GLOBAL.gtid_binlog_pos").strip()
    return {"databases": databases, "bytes": size, "tables": tables, "position": position}


def dump_argv(socket: str, databases: List[str]) -> List[str]:
    return [MARIADB_DUMP, "--socket=" + socket, *DUMP_OPTIONS, "--databases", *databases]


def database(socket: str, command: str, check: bool) -> Optional[List[str]]:
    tokens = _tokens(command)
    if tokens == ["voxnode-db", "info"]:
        if check:
            return ["info", socket]
        sys.stdout.write(json.dumps(database_info(socket)) + "\n")
        return None
    if tokens == ["voxnode-db", "dump"]:
        if check:
            return ["dump", socket]
        databases = user_databases(socket)
        if not databases:  # nothing to copy: only the position, in the dump's own words
            position = _query(socket, "SELECT @@GLOBAL.gtid_binlog_pos").strip()
            sys.stdout.write(f"-- SET GLOBAL gtid_slave_pos='{position}';\n{DUMP_DONE}\n")
            return None
        return dump_argv(socket, databases)
    raise Refused("this key may only read the database (voxnode-db info|dump)")


def run(argv: List[str], command: str, out: TextIO = sys.stdout) -> Optional[List[str]]:
    """What to do for ``argv`` (this program's arguments) and the client's ``command``:
    an argv to exec, or None when the answer was written already. Raises Refused."""
    check = bool(argv) and argv[0] == "check"
    if check:
        argv = argv[1:]
    pause = None
    if len(argv) == 3 and argv[0] == "receive" and argv[2].startswith("/"):
        argv, pause = argv[:2], argv[2]
    if len(argv) != 2 or argv[0] not in ("receive", "send", "database"):
        raise Refused("usage: sync-shell [check] receive DIR [PAUSE] | send DIR | "
                      "database SOCKET")
    mode, arg = argv
    if pause is not None and os.path.exists(pause):
        raise Refused(PAUSED + " this node is running a full sync; pushes wait for its end")
    if not arg.startswith("/"):
        raise Refused(f"{arg} is not an absolute path")
    if mode == "database":
        return database(arg, command, check)
    if mode == "send" and command.strip() == "voxnode-stat":
        if check:
            return ["stat", arg]
        out.write(json.dumps(tree_stat(arg)) + "\n")
        return None
    return rsync_argv(mode, arg, command)


def main() -> int:
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    try:
        todo = run(sys.argv[1:], command)
    except Refused as exc:
        sys.stderr.write(f"voxnode-sync-shell: refused: {exc}\n")
        return 1
    except (OSError, subprocess.SubprocessError) as exc:
        sys.stderr.write(f"voxnode-sync-shell: {exc}\n")
        return 1
    if todo is None:
        return 0
    if sys.argv[1:2] == ["check"]:
        sys.stdout.write(json.dumps(todo) + "\n")
        return 0
    sys.stdout.flush()
    os.execv(todo[0], todo)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
