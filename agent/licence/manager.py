"""The node's licensing service (the Security Update client) and the licence port.

``LicenceManager`` is the one service: it owns the licence state directory, reads and
verifies what the node holds, and is the ``LicencePort`` the working mode and the
services read — ``current()``: the modules in force while ACTIVE or GRACE, nothing
otherwise, and why. Its actions are plain functions, one module per concern, that the
manager's methods call:

- ``agent.licence.activation``: serial → emailed code → licence, and removal;
- ``agent.licence.updates``: the check, the review and apply of an update, the 12-hour
  task and the state changes that time alone brings;
- ``agent.licence.holders``: who holds a counted module (the assignments).

Every action that changes the installed licence is serialized with configuration changes
(the engine's lock), refuses before touching anything when an input or an answer is bad,
and ends with "notify processes and restart" (the services subsystem's ``restart_all``)
only when the units the catalogue wants change. Verification codes are never logged or
stored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import Problem
from agent.events import EventLog
from agent.licence import activation, holders, updates
from agent.licence.changes import module_changes, unit_changes
from agent.licence.client import BadResponse, LicenceServerClient
from agent.licence.document import Licence, LicenceDocumentError, load_public_key, verify_licence
from agent.licence.fingerprint import Fingerprint
from agent.licence.state import LicenceFiles, Record, Status, evaluate
from agent.ports.files import FileTree, durable
from agent.ports.licence import PURE_CLOUD, LicenceView
from agent.services.catalogue import Catalogue, Facts, Role
from agent.services.subsystem import ServicesSubsystem
from agent.state.model import DesiredState, LicenceConfig, WorkingMode

Clock = Callable[[], float]
ClientFactory = Callable[[str], LicenceServerClient]


class LicenceManager:
    """The node's one licensing service, and the ``LicencePort`` of the other subsystems."""

    def __init__(
        self, state_dir: Path, files: FileTree, desired: Callable[[], DesiredState | None], *,
        fingerprint: Callable[[], Fingerprint], catalogue: Catalogue,
        services: ServicesSubsystem | None = None, events: EventLog | None = None,
        lock: asyncio.Lock | None = None, clock: Clock = time.time,
        client_factory: ClientFactory = LicenceServerClient,
    ) -> None:
        self.store = LicenceFiles(state_dir)
        self._files = files
        self._desired = desired
        self._fingerprint = fingerprint
        self._fp: Fingerprint | None = None
        self.catalogue = catalogue
        self.services = services
        self.events = events or EventLog()
        self.lock = lock or asyncio.Lock()
        self.clock = clock
        self._client_factory = client_factory
        self.applied_modules: frozenset[str] | None = None  # what the units last followed
        self._reported_refusal = ""  # the last refusal of the installed file reported

    # --- reading --------------------------------------------------------------------------------

    def settings(self) -> LicenceConfig:
        state = self._desired()
        return state.licence_settings if state is not None else LicenceConfig()

    def fingerprint(self) -> Fingerprint:
        if self._fp is None:
            self._fp = self._fingerprint()
        return self._fp

    def client(self) -> LicenceServerClient:
        return self._client_factory(self.settings().server_url)

    def _public_key_text(self) -> bytes:
        path = self.settings().public_key_file
        pem = self._files.read(path)
        if pem is None:
            raise LicenceDocumentError(f"the vendor public key {path} is missing")
        return pem

    def parse(self, text: str | bytes) -> Licence:
        """Verify a licence text with the vendor key and its binding to this node."""
        try:
            key = load_public_key(self._public_key_text())
        except LicenceDocumentError as exc:
            path = self.settings().public_key_file
            raise LicenceDocumentError(f"the vendor public key {path} is unusable: {exc}"
                                       if "missing" not in str(exc) else str(exc)) from None
        licence = verify_licence(text, key)
        mine = self.fingerprint().value
        if licence.fingerprint != mine:
            raise LicenceDocumentError(
                f"the licence is bound to another node (fingerprint {licence.fingerprint}; "
                f"this node is {mine})")
        return licence

    def installed(self) -> tuple[Licence | None, str]:
        """The installed licence if it verifies, else None and why it was refused."""
        text = self.store.read_licence()
        if text is None:
            return None, ""
        try:
            licence = self.parse(text)
        except LicenceDocumentError as exc:
            return None, self._refused(f"the installed licence is refused: {exc}")
        except Exception as exc:  # e.g. no fingerprint: never trust, never crash the port
            return None, self._refused(f"the installed licence cannot be checked: {exc}")
        self._reported_refusal = ""
        return licence, ""

    def _refused(self, why: str) -> str:
        """Report a refused installed licence once (an event and the log), not per read."""
        if why != self._reported_refusal:
            self._reported_refusal = why
            self.events.emit("licence.refused", f"{why}; the file is kept, never trusted",
                             level=logging.ERROR)
        return why

    def status(self) -> tuple[Status, Record, Licence | None]:
        record = self.store.read_record()
        licence, invalid = self.installed()
        return evaluate(record, licence, invalid, self.clock()), record, licence

    async def current(self) -> LicenceView:
        """The licence as the subsystems see it: read (two files) and verified in a worker
        thread, so a slow disk holds up only the caller, which bounds its wait."""
        return await durable(self._view)

    def _view(self) -> LicenceView:
        status, _, _ = self.status()
        reason = "; ".join(x for x in (status.reason, status.alarm, status.clock_warning) if x)
        return LicenceView(status.active, status.modules, reason)

    def show(self) -> dict[str, Any]:
        status, record, licence = self.status()
        settings = self.settings()
        available = None
        if record.available and licence is not None:
            try:
                newer = self.parse(record.available)
                available = {"version": newer.version, "modules": [
                    c.to_dict() for c in module_changes(licence, newer)]}
            except LicenceDocumentError:
                available = None
        return {
            "state": status.state.value, "active": status.active, "reason": status.reason,
            "serial": licence.serial if licence else (
                record.pending.serial if record.pending else None),
            "company": licence.company if licence else None,
            "email": licence.email if licence else (
                record.pending.email if record.pending else None),
            "version": licence.version if licence else None,
            "issued_at": licence.issued_at if licence else None,
            "valid_until": licence.valid_until if licence else None,
            "modules": [m.to_dict() for m in licence.modules] if licence else [],
            "grace_until": status.grace_until,
            "removed_at": record.removed_at,
            "last_check": record.last_check, "last_successful_check": record.last_ok,
            "failed_checks": record.failures, "last_error": record.last_error or None,
            "alarm": status.alarm or None, "clock_warning": status.clock_warning or None,
            "update_available": available,
            "assignments": record.assignments,
            "server_url": settings.server_url, "public_key_file": settings.public_key_file,
            "fingerprint": self._fingerprint_or_none(),
        }

    def summary(self) -> dict[str, Any]:
        """The licence at a glance, for ``voxnode status``: state, serial, expiry, checks and
        the alarm (``show()`` has everything)."""
        status, record, licence = self.status()
        return {
            "state": status.state.value, "active": status.active, "reason": status.reason,
            "serial": licence.serial if licence else (
                record.pending.serial if record.pending else None),
            "valid_until": licence.valid_until if licence else None,
            "grace_until": status.grace_until,
            "last_check": record.last_check, "last_successful_check": record.last_ok,
            "alarm": status.alarm or None, "clock_warning": status.clock_warning or None,
        }

    def _fingerprint_or_none(self) -> dict[str, str] | None:
        try:
            return self.fingerprint().to_dict()
        except Exception:
            return None

    # --- effects ----------------------------------------------------------------------------

    async def _facts(self, view: LicenceView) -> Facts:
        if self.services is not None:
            facts = await self.services.facts()
            return Facts(view, facts.role, facts.mcs_client_configured, facts.mcs_client_stopped)
        return Facts(view, Role.STANDALONE, False)

    async def unit_plan(self, before: frozenset[str], after: frozenset[str]) -> list[Any]:
        state = self._desired()
        mode = state.mode if state else WorkingMode.STANDARD
        facts = await self._facts(LicenceView(True, before, ""))
        return unit_changes(self.catalogue, mode, facts, before, after)

    async def apply_effects(self, before: frozenset[str]) -> dict[str, Any]:
        """After the modules in force changed: restart the services if their units change."""
        status, _, _ = self.status()
        after = status.modules
        units = await self.unit_plan(before, after)
        self.applied_modules = after
        result: dict[str, Any] = {"units": [u.to_dict() for u in units], "restart": None}
        if not units:
            result["restart"] = "not needed: no unit starts or stops"
            return result
        if self.services is None or self.services.last is None:
            result["restart"] = "units are not managed by this agent"
            return result
        steps = await self.services.restart_all()
        failed = [s for s in steps if s.status == "failed"]
        self.events.emit("licence.restarted", f"notify processes and restart: {len(steps)} "
                         f"steps, {len(failed)} failed",
                         level=logging.ERROR if failed else logging.INFO)
        result["restart"] = {"steps": [s.to_dict() for s in steps], "failed": len(failed)}
        return result

    def pure_cloud_problems(self, licence: Licence) -> list[Problem]:
        if PURE_CLOUD not in licence.enabled_modules:
            return []
        state = self._desired()
        net = state.network if state else None
        problems = []
        if net is None or net.domain is None:
            problems.append(Problem("network.domain", "required before a licence with "
                                    "PURE_CLOUD is activated (the public DNS name)"))
        if net is None or net.public_ip is None:
            problems.append(Problem("network.public_ip", "required before a licence with "
                                    "PURE_CLOUD is activated (the static public address)"))
        return problems

    def received(self, text: str) -> Licence:
        """A licence text the server sent, verified; BadResponse if it is refused."""
        try:
            return self.parse(text)
        except LicenceDocumentError as exc:
            raise BadResponse(f"the licence server sent a licence that is refused: {exc}",
                              remedy="Nothing was installed; the node keeps its licence.",
                              ) from None

    # --- actions (agent.licence.activation, .updates, .holders) -------------------------------

    async def activate(self, serial: str, email: str) -> dict[str, Any]:
        return await activation.activate(self, serial, email)

    async def verify(self, code: str) -> dict[str, Any]:
        return await activation.verify(self, code)

    async def remove(self) -> dict[str, Any]:
        return await activation.remove(self)

    async def check(self, *, automatic: bool = False) -> dict[str, Any]:
        return await updates.check(self, automatic=automatic)

    async def update(self, *, apply: bool, release: list[str]) -> dict[str, Any]:
        return await updates.update(self, apply=apply, release=release)

    async def assign(self, module: str, add: list[str], drop: list[str]) -> dict[str, Any]:
        return await holders.assign(self, module, add, drop)

    def assignments(self) -> dict[str, Any]:
        return holders.show(self)

    async def tick(self) -> None:
        await updates.tick(self)

    async def run(self, sleep: updates.Sleep = asyncio.sleep,
                  rng: random.Random | None = None) -> None:
        await updates.run(self, sleep, rng)
