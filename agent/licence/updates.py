"""After activation: the check, licence updates and the 12-hour task.

- ``check``: ask the server for the newest licence of this serial and node. A newer
  version is verified and kept as *available*; it is applied only by ``update``. A failed
  check keeps the installed licence; after 3 failures in a row ``license show`` (and an
  event) raise the alarm, with the last successful check.
- ``update``: without ``apply`` it returns the review (changed modules, units that start
  or stop, whether service is interrupted, blocked reductions); with ``apply`` it
  installs and notifies processes and restarts when units change. A limit lowered below
  the assignments in use is refused until ``release`` names enough holders.
- ``run``: the periodic task — a check every 12 h ± 30 min, and the state changes that
  time alone brings (grace over, expiry; ``tick``), with an injectable clock and sleep.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agent.errors import Conflict, InvalidInput, Problem, VoxnodeError
from agent.licence.changes import module_changes, reduction_problems
from agent.licence.client import BadResponse
from agent.licence.errors import ServerRefused
from agent.licence.state import (
    ALARM_AFTER_FAILURES,
    CHECK_JITTER_S,
    Record,
    next_check_at,
)
from agent.ports.files import durable

if TYPE_CHECKING:
    from agent.licence.manager import LicenceManager

log = logging.getLogger("voxnode.licence")

MAX_SLEEP_S = 3600.0
Sleep = Callable[[float], Awaitable[None]]


# the server's refusals of a check that end the licence here, and the event each gives
LICENCE_ENDED = {"revoked": "revoked", "not_active": "released-elsewhere"}


async def _failed(manager: LicenceManager, record: Record, exc: VoxnodeError,
                  now: float) -> None:
    """A check that told nothing: counted, and an alarm once they keep failing."""
    record.failures += 1
    record.failing_since = record.failing_since or now
    record.last_error = exc.message
    await durable(manager.store.write_record, record)
    if record.failures >= ALARM_AFTER_FAILURES:
        manager.events.emit("licence.check-alarm", f"{record.failures} licence checks "
                            f"failed in a row: {exc.message}", level=logging.ERROR)


async def check(manager: LicenceManager, *, automatic: bool = False) -> dict[str, Any]:
    how = "automatic" if automatic else "manual"
    async with manager.lock:
        before, record, licence = manager.status()
        if licence is None or record.ended:
            raise Conflict("there is no active licence to check",
                           remedy="Activate one with `voxnode license activate`.")
        now = manager.clock()
        record.last_check = now
        record.max_seen = max(record.max_seen, now)
        try:
            version, text = await manager.client().check(licence.serial,
                                                         manager.fingerprint().value)
            newer = manager.received(text)
            if newer.serial != licence.serial:
                raise BadResponse(f"the licence server sent a licence for serial "
                                  f"{newer.serial}, not {licence.serial}")
        except ServerRefused as exc:
            if exc.reason not in LICENCE_ENDED:
                await _failed(manager, record, exc, now)
                raise
            # the server says this node's licence is over: revoked by the vendor (it ends
            # now), or the serial released from this node elsewhere (the removal's grace)
            record.answered(now)
            record.available = None
            if exc.reason == "revoked":
                record.revoked_at = now
                text = (f"licence {licence.serial} was revoked by the vendor: the node is "
                        "unlicensed")
            else:
                record.removed_at = now  # not ended before: the check would be refused
                text = (f"licence {licence.serial} is no longer active on this node (released "
                        f"elsewhere): the node works unlicensed for the grace period")
            await durable(manager.store.write_record, record)
            manager.events.emit(f"licence.{LICENCE_ENDED[exc.reason]}", text,
                                level=logging.ERROR)
            await manager.apply_effects(before.modules)  # a revoked licence runs nothing
            return {"check": how, "installed_version": licence.version, "server_version": None,
                    "update_available": False, "modules": [], "ended": exc.reason,
                    "licence": manager.show()}
        except VoxnodeError as exc:
            await _failed(manager, record, exc, now)
            raise
        record.answered(now)
        changes = module_changes(licence, newer)
        if newer.version > licence.version:
            record.available = text
            manager.events.emit("licence.update-available", f"licence version {newer.version} "
                                f"is available ({len(changes)} module changes)")
        else:
            record.available = None
        await durable(manager.store.write_record, record)
    return {"check": how, "installed_version": licence.version, "server_version": version,
            "update_available": newer.version > licence.version,
            "modules": [c.to_dict() for c in changes] if newer.version > licence.version
            else [], "licence": manager.show()}


async def update(manager: LicenceManager, *, apply: bool, release: list[str]) -> dict[str, Any]:
    async with manager.lock:
        status, record, old = manager.status()
        if record.available is None or old is None:
            raise Conflict("no licence update is waiting",
                           remedy="Run `voxnode license check` to look for one.")
        new = manager.received(record.available)
        unknown = sorted({r for r in release} - {h for hs in record.assignments.values()
                                                 for h in hs})
        if unknown:
            raise InvalidInput("cannot release what is not assigned", problems=[
                Problem("release", f"'{u}' holds no counted module") for u in unknown])
        before = status.modules
        after = new.enabled_modules if status.active else frozenset()
        units = await manager.unit_plan(before, after)
        blocked = reduction_problems(new, record.assignments, release)
        changed = module_changes(old, new)
        review: dict[str, Any] = {
            "version": {"installed": old.version, "new": new.version},
            "modules": [c.to_dict() for c in changed],
            "units": [u.to_dict() for u in units],
            "interruption": bool(units),
            "reductions": [p.to_dict() for p in blocked],
        }
        if not apply:
            return {"applied": False, **review}
        if blocked:
            raise Conflict(
                "the update lowers licence limits below the assignments in use",
                problems=blocked,
                remedy="Choose who loses the feature: `voxnode license update --release "
                "USER,…`; nothing was changed.")
        problems = manager.pure_cloud_problems(new)
        if problems:
            raise InvalidInput("a licence with PURE_CLOUD needs the public IP and domain "
                               "first", problems=problems,
                               remedy="Set them, then run `voxnode license update` again.")
        dropped = set(release)
        record.assignments = {m: [h for h in hs if h not in dropped]
                              for m, hs in record.assignments.items()}
        record.assignments = {m: hs for m, hs in record.assignments.items() if hs}
        await durable(manager.store.write_licence, record.available)
        record.available = None
        await durable(manager.store.write_record, record)
        manager.events.emit("licence.updated", f"licence {new.serial} version {new.version} "
                            f"applied ({len(changed)} module changes)")
        effects = await manager.apply_effects(before)
    return {"applied": True, **review, **effects, "released": sorted(dropped),
            "licence": manager.show()}


async def tick(manager: LicenceManager) -> None:
    """Record the time seen; restart the services if time alone changed the modules."""
    status, record, _ = manager.status()
    now = manager.clock()
    if now > record.max_seen + 60:
        record.max_seen = now
        await durable(manager.store.write_record, record)
    if manager.applied_modules is None:
        manager.applied_modules = status.modules
    elif status.modules != manager.applied_modules:
        async with manager.lock:
            manager.events.emit("licence.state", f"licence state is now {status.state.value}: "
                                f"{status.reason}", level=logging.WARNING)
            await manager.apply_effects(manager.applied_modules)


async def run(manager: LicenceManager, sleep: Sleep = asyncio.sleep,
              rng: random.Random | None = None) -> None:
    """Until cancelled: the 12 h check (jittered) and time-driven transitions."""
    rng = rng or random.Random()
    jitter = rng.uniform(-CHECK_JITTER_S, CHECK_JITTER_S)
    while True:
        try:
            await tick(manager)
            status, record, licence = manager.status()
            now = manager.clock()
            checking = licence is not None and not record.ended
            due = next_check_at(record, now, jitter) if checking else None
            if due is not None and due <= now:
                jitter = rng.uniform(-CHECK_JITTER_S, CHECK_JITTER_S)
                try:
                    await check(manager, automatic=True)
                except VoxnodeError as exc:
                    log.warning("automatic licence check failed: %s", exc.message)
                continue
            # next_transition: the end of a grace period or the expiry, whichever comes first
            wake = [now + MAX_SLEEP_S, *(t for t in (due, status.next_transition)
                                         if t is not None)]
            await sleep(max(1.0, min(wake) - now))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the licence task hit an unexpected error")
            await sleep(60.0)
