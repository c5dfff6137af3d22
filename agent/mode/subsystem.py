"""The working-mode subsystem: owns ``mode`` and the files that follow from it.

It renders the extensions' pjsip fragment, the co-resident coturn configuration (Pure
Cloud) and ``working-mode.json``; keeps the TURN shared secret; and, on the switch from
Standard to Pure Cloud, deletes the MCS client configuration. It reads ``network.domain``,
``network.public_ip`` and the interface subnets. Its plan (``agent.mode.plan``) needs
nothing from the machine. Starting and stopping units (Asterisk reload, coturn on/off)
belongs to the services subsystem.
"""

from __future__ import annotations

import asyncio
import re
import secrets

from agent.errors import Problem, SubsystemError
from agent.mode.plan import plan_mode
from agent.mode.render import render_coturn, render_pjsip, render_working_mode_json
from agent.mode.table import settings_for
from agent.paths import (
    COTURN_CONF,
    MCS_CLIENT_PATHS,
    PJSIP_VOXNODE_CONF,
    TURN_SECRET,
    WORKING_MODE_JSON,
)
from agent.ports.files import FileTree, durable
from agent.ports.licence import PURE_CLOUD, LicencePort
from agent.state.model import DesiredState, WorkingMode
from agent.subsystems.base import Change, SubsystemPlan

LICENCE_TIMEOUT_S = 10.0
# coturn reads the line up to its end; keep the secret to characters that need no quoting.
_SECRET_RE = re.compile(r"^[A-Za-z0-9+/=_-]{16,256}$")
COTURN_GROUPS = ("coturn", "turnserver")


class ModeSubsystem:
    name: str = "mode"
    owns: tuple[str, ...] = ("mode",)

    def _coturn_group(self) -> str | None:
        """coturn's group on this node: ``coturn`` (EL packages) or ``turnserver`` (Debian)."""
        return next((g for g in COTURN_GROUPS if self._files.group_id(g) is not None), None)

    def __init__(self, files: FileTree, licence: LicencePort) -> None:
        self._files = files
        self._licence = licence

    async def check(self, new: DesiredState) -> list[Problem]:
        if new.mode is not WorkingMode.PURE_CLOUD:
            return []
        needs = "pure-cloud needs the PURE_CLOUD licence module; "
        try:
            async with asyncio.timeout(LICENCE_TIMEOUT_S):
                view = await self._licence.current()
        except TimeoutError:
            return [
                Problem(
                    "mode",
                    f"{needs}the licence could not be read within {LICENCE_TIMEOUT_S:g} s",
                )
            ]
        if view.has(PURE_CLOUD):
            return []
        if view.active:
            held = ", ".join(sorted(view.modules)) or "none"
            why = f"the active licence does not include it (licensed modules: {held})"
            return [Problem("mode", needs + why)]
        return [Problem("mode", needs + view.reason)]

    async def observe(self, new: DesiredState) -> tuple[str, ...]:
        """Which parts of the MCS client configuration exist: a switch to Pure Cloud asks
        consent to delete them only when there is something to lose."""
        return await asyncio.to_thread(self._mcs_present)

    def _mcs_present(self) -> tuple[str, ...]:
        found = []
        for node_path in MCS_CLIENT_PATHS:
            path = self._files.path(node_path)
            try:
                if path.is_dir():
                    if next(path.iterdir(), None) is not None:
                        found.append(node_path)
                elif path.exists():
                    found.append(node_path)
            except OSError:  # unreadable: say it may be lost
                found.append(node_path)
        return tuple(found)

    def plan(self, old: DesiredState | None, new: DesiredState,
             observed: tuple[str, ...] | None) -> SubsystemPlan:
        """``observed``: the MCS client paths that exist (None: not looked, assume all)."""
        return plan_mode(old, new, MCS_CLIENT_PATHS if observed is None else observed)

    async def apply(self, old: DesiredState | None, new: DesiredState) -> list[Change]:
        # the writes fsync: off the event loop the failover heartbeats share
        return await durable(self._write, old, new)

    def _write(self, old: DesiredState | None, new: DesiredState) -> list[Change]:
        changes: list[Change] = []
        try:
            if settings_for(new.mode).turn_stun_server:
                secret = self._ensure_turn_secret(changes)
                if self._files.write_if_changed(
                    COTURN_CONF, render_coturn(new, secret), 0o640, group=self._coturn_group()
                ):
                    changes.append(Change("write", COTURN_CONF, "co-resident TURN/STUN on"))
            elif self._files.remove(COTURN_CONF):
                changes.append(Change("remove", COTURN_CONF, "co-resident TURN/STUN off"))
            if self._files.write_if_changed(PJSIP_VOXNODE_CONF, render_pjsip(new)):
                transport = settings_for(new.mode).sip_transport.value.upper()
                changes.append(
                    Change("write", PJSIP_VOXNODE_CONF, f"{transport} transport for extensions")
                )
            if self._files.write_if_changed(WORKING_MODE_JSON, render_working_mode_json(new)):
                changes.append(Change("write", WORKING_MODE_JSON, f"mode {new.mode.value}"))
            # Last, because it cannot be undone: any failure above leaves the MCS link intact.
            if (
                old is not None
                and old.mode is WorkingMode.STANDARD
                and new.mode is WorkingMode.PURE_CLOUD
            ):
                for path in MCS_CLIENT_PATHS:
                    if self._files.remove(path):
                        changes.append(Change("delete", path, "MCS client configuration"))
        except OSError as exc:
            # os.replace() names the temporary file first and the target second
            where = exc.filename2 or exc.filename or "a rendered file"
            raise SubsystemError(
                f"cannot update {where}: {exc.strerror or exc}",
                remedy="Check the file system (permissions, free space) and apply again.",
            ) from exc
        return changes

    def _ensure_turn_secret(self, changes: list[Change]) -> str:
        """Read the TURN shared secret, creating it (0600) once; its value is never reported."""
        existing = self._files.read(TURN_SECRET)
        if existing is None or not existing.strip():
            secret = secrets.token_hex(32)
            self._files.write_if_changed(TURN_SECRET, secret + "\n", 0o600)
            changes.append(Change("create", TURN_SECRET, "new TURN shared secret"))
            return secret
        secret = existing.decode("ascii", errors="replace").strip()
        if not _SECRET_RE.match(secret):
            raise SubsystemError(
                f"the TURN shared secret in {TURN_SECRET} is malformed",
                remedy=f"Delete {TURN_SECRET} and apply again: a new secret is generated.",
            )
        # Same content; tightens the mode if someone loosened it.
        if self._files.write_if_changed(TURN_SECRET, existing, 0o600):
            changes.append(Change("set", TURN_SECRET, "mode 0600"))
        return secret
