"""The node fingerprint a licence is bound to: stable across reboots, different elsewhere.

The fingerprint is ``sha256:`` + the hex SHA-256 of a *material* string, chosen in this
order (the first that applies):

1. ``--root`` is not ``/`` (an agent for tests or another tree): ``machine-id:<id>`` from
   ``<root>/etc/machine-id``.
2. In a container (``/run/systemd/container`` exists, as systemd-nspawn, podman and
   docker with systemd write it): ``machine-id:<id>`` — the DMI data there is the host's,
   shared by every container on it.
3. On AWS EC2 (``/sys/class/dmi/id/sys_vendor`` is ``Amazon EC2``, or
   ``/sys/hypervisor/uuid`` starts with ``ec2``): ``aws:<instanceId>`` from the instance
   identity document of IMDSv2 (token first, then the document). The instance id survives
   reboots and stop/start, and a copied AMI gets another.
4. Hardware and other VMs: ``dmi:<product_uuid>|mac:<mac>`` — the DMI product UUID
   (``/sys/class/dmi/id/product_uuid``, lower case) and the permanent MAC of the *primary*
   interface: the first, by name, of the interfaces under ``/sys/class/net`` that have a
   ``device`` link (physical or virtio NICs; no bridges, veth, bonds or VLANs).
5. Otherwise (no DMI UUID or no NIC): ``machine-id:<id>``.

A missing or empty machine-id where one is needed is an error: the agent cannot bind a
licence to a machine it cannot tell apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.licence.errors import FingerprintError

__all__ = ["CachedFingerprint", "Fingerprint", "FingerprintError", "node_fingerprint"]

IMDS_URL = "http://169.254.169.254"
IMDS_TIMEOUT_S = 2.0

InstanceIdentity = Callable[[], str]  # returns the EC2 instance id


@dataclass(frozen=True)
class Fingerprint:
    value: str  # sha256:<hex>
    source: str  # machine-id, aws, dmi: which rule chose the material

    def to_dict(self) -> dict[str, str]:
        return {"value": self.value, "source": self.source}


def _digest(material: str) -> str:
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def imds_instance_id() -> str:
    """IMDSv2: a session token, then the instance identity document (real AWS only)."""
    token_req = urllib.request.Request(
        f"{IMDS_URL}/latest/api/token", method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
    with urllib.request.urlopen(token_req, timeout=IMDS_TIMEOUT_S) as resp:
        token = resp.read().decode()
    doc_req = urllib.request.Request(
        f"{IMDS_URL}/latest/dynamic/instance-identity/document",
        headers={"X-aws-ec2-metadata-token": token})
    with urllib.request.urlopen(doc_req, timeout=IMDS_TIMEOUT_S) as resp:
        document = json.loads(resp.read())
    return str(document["instanceId"])


def _machine_id(root: Path) -> Fingerprint:
    path = root / "etc/machine-id"
    value = _read(path)
    if not value:
        raise FingerprintError(
            f"cannot determine this node's fingerprint: {path} is missing or empty")
    return Fingerprint(_digest(f"machine-id:{value}"), "machine-id")


def primary_mac(sys_root: Path) -> str | None:
    """The MAC of the first physical interface by name (see the module docstring)."""
    net = sys_root / "class/net"
    try:
        names = sorted(p.name for p in net.iterdir())
    except OSError:
        return None
    for name in names:
        if not (net / name / "device").exists():
            continue
        mac = _read(net / name / "address").lower()
        if mac and mac != "00:00:00:00:00:00":
            return mac
    return None


def is_aws(sys_root: Path) -> bool:
    return (_read(sys_root / "class/dmi/id/sys_vendor") == "Amazon EC2"
            or _read(sys_root / "hypervisor/uuid").lower().startswith("ec2"))


def node_fingerprint(
    root: Path, *, sys_root: Path = Path("/sys"), run_root: Path = Path("/run"),
    instance_identity: InstanceIdentity = imds_instance_id,
) -> Fingerprint:
    """This node's fingerprint (the rules of the module docstring, in order)."""
    if root != Path("/") or (run_root / "systemd/container").exists():
        return _machine_id(root)
    if is_aws(sys_root):
        try:
            instance = instance_identity()
        except (OSError, ValueError, KeyError) as exc:
            raise FingerprintError(
                f"cannot determine this node's fingerprint: the EC2 instance metadata "
                f"(IMDSv2) did not answer ({exc})",
                remedy="Allow IMDSv2 on this instance (http-tokens required is fine).",
            ) from None
        return Fingerprint(_digest(f"aws:{instance}"), "aws")
    uuid = _read(sys_root / "class/dmi/id/product_uuid").lower()
    mac = primary_mac(sys_root)
    if uuid and mac:
        return Fingerprint(_digest(f"dmi:{uuid}|mac:{mac}"), "dmi")
    return _machine_id(root)


class CachedFingerprint:
    """The fingerprint read once, in a worker thread (on AWS it is an HTTP call to the
    instance metadata service, which must never block the event loop), and kept. A failure
    is kept too (so a licence check fails at once rather than waiting on the network) and
    read again every ``retry_s`` by ``keep_trying``."""

    def __init__(self, read: Callable[[], Fingerprint], retry_s: float = 60.0) -> None:
        self._read = read
        self._retry_s = retry_s
        self._value: Fingerprint | None = None
        self._error: FingerprintError | None = FingerprintError(
            "this node's fingerprint has not been read yet")

    async def refresh(self) -> None:
        try:
            self._value = await asyncio.to_thread(self._read)
            self._error = None
        except FingerprintError as exc:
            self._error = exc
            logging.getLogger("voxnode.licence").error("%s", exc.message)

    async def keep_trying(self) -> None:
        """Until a read succeeds: read again every ``retry_s``."""
        while self._value is None:
            await asyncio.sleep(self._retry_s)
            with contextlib.suppress(Exception):
                await self.refresh()

    def __call__(self) -> Fingerprint:
        if self._value is not None:
            return self._value
        assert self._error is not None
        raise self._error

