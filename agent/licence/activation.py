"""Activation and removal: serial → emailed code → licence, and the release of a serial.

- ``activate``: the server emails a verification code to the order's address; the node
  records the pending activation (CODE_SENT), never the code.
- ``verify``: the emailed code brings the signed licence; it is verified with the vendor
  key and its binding to this node, installed, and processes are notified and restarted
  when the units change. A licence with PURE_CLOUD needs the public IP and domain first.
- ``remove``: the server releases the serial (and emails the notice); the node keeps
  its modules for 30 calendar days (GRACE), then is UNLICENSED.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.errors import Conflict, InvalidInput, Problem
from agent.licence.changes import module_changes
from agent.licence.client import BadResponse
from agent.licence.state import LicenceState, Pending
from agent.ports.files import durable

if TYPE_CHECKING:
    from agent.licence.manager import LicenceManager


async def activate(manager: LicenceManager, serial: str, email: str) -> dict[str, Any]:
    serial, email = serial.strip().upper(), email.strip()
    problems = []
    if not serial:
        problems.append(Problem("serial", "required (the serial number of the order)"))
    if "@" not in email or email.startswith("@") or email.endswith("@"):
        problems.append(Problem("email", f"'{email}' is not an email address"))
    if problems:
        raise InvalidInput("the activation request is not valid", problems=problems)
    async with manager.lock:
        status, record, licence = manager.status()
        if status.state is LicenceState.ACTIVE and licence is not None:
            raise Conflict(f"licence {licence.serial} is already active on this node",
                           remedy="Remove it first with `voxnode license remove`.")
        answer = await manager.client().activate(serial, email, manager.fingerprint().value)
        record.pending = Pending(serial, email, manager.clock())
        await durable(manager.store.write_record, record)
    manager.events.emit("licence.code-sent", f"verification code for {serial} requested; "
                        "it is emailed to the order's address")
    return {"state": LicenceState.CODE_SENT.value, "serial": serial,
            "sent_to": answer.get("sent_to"), "expires_in": answer["expires_in"]}


async def verify(manager: LicenceManager, code: str) -> dict[str, Any]:
    code = code.strip()
    if not code.isdigit() or not 4 <= len(code) <= 12:
        raise InvalidInput("the verification code is not valid",
                           problems=[Problem("code", "the digits of the emailed code")])
    async with manager.lock:
        status, record, old = manager.status()
        if record.pending is None:
            raise Conflict("no activation is waiting for a code",
                           remedy="Run `voxnode license activate --serial S --email E` first.")
        pending = record.pending
        text = await manager.client().verify(pending.serial, manager.fingerprint().value, code)
        new = manager.received(text)
        if new.serial != pending.serial:
            raise BadResponse(f"the licence server sent a licence for serial {new.serial}, "
                              f"not {pending.serial}")
        problems = manager.pure_cloud_problems(new)
        if problems:
            raise InvalidInput(
                "a licence with PURE_CLOUD needs the public IP and domain first",
                problems=problems,
                remedy="Set them (voxnode network set domain=… public_ip=…), then activate "
                "again; nothing was installed.")
        before = status.modules
        await durable(manager.store.write_licence, text)
        now = manager.clock()
        record.pending, record.removed_at, record.available = None, None, None
        record.revoked_at = None
        record.ever_licensed, record.last_check, record.last_ok = True, now, now
        record.failures, record.failing_since, record.last_error = 0, None, ""
        record.max_seen = max(record.max_seen, now)
        await durable(manager.store.write_record, record)
        held = ", ".join(sorted(new.enabled_modules)) or "no modules"
        manager.events.emit("licence.activated", f"licence {new.serial} version {new.version} "
                            f"installed ({held})")
        effects = await manager.apply_effects(before)
    return {"licence": manager.show(), "modules": [c.to_dict() for c in
                                                   module_changes(old, new)], **effects}


async def remove(manager: LicenceManager) -> dict[str, Any]:
    async with manager.lock:
        _, record, licence = manager.status()
        if licence is None or record.removed_at is not None:
            raise Conflict("there is no active licence to remove")
        answer = await manager.client().release(licence.serial, manager.fingerprint().value)
        record.removed_at = manager.clock()
        record.available = None
        await durable(manager.store.write_record, record)
    manager.events.emit("licence.removed", f"licence {licence.serial} removed; the node works "
                        "unlicensed for 30 days", level=logging.WARNING)
    return {"licence": manager.show(), "notice_sent_to": answer.get("notice_sent_to")}
