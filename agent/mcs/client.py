"""The MCS client: install, remove, start, stop and observe the OpenVPN tunnel to the MCS.

Owns the files of the MCS client configuration (``MCS_CLIENT_CONF``, the certificates under
``MCS_CERT_DIR``) and the operator's STOP (``MCS_STOP_FLAG``). Whether the unit may run is
the services catalogue's business (licence, role, Standard mode, configured); START and
STOP are the operator's switch *within* that: START never runs a client the catalogue does
not want (it says why instead), STOP keeps a wanted client down until START.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from agent.errors import ConfirmationRequired, Conflict, SubsystemError, VoxnodeError
from agent.events import EventLog
from agent.mcs import MCS_STOP_FLAG, MCS_UNIT
from agent.mcs.bundle import Bundle, load_bundle
from agent.mcs.ovpn import MATERIAL, read_directives
from agent.mcs.pem import certificate_summary
from agent.mcs.tunnel import TunnelPort
from agent.paths import MCS_CERT_DIR, MCS_CLIENT_CONF
from agent.ports.files import FileTree, durable
from agent.ports.systemd import JOB_DONE
from agent.services.catalogue import Condition, UnitDecision
from agent.services.subsystem import ServicesSubsystem
from agent.state.model import DesiredState, WorkingMode

log = logging.getLogger("voxnode.mcs")

PURE_CLOUD_REFUSAL = ("the MCS client is not used in Pure Cloud mode: smart working runs on "
                      "the node itself, without MCS")
NOT_CONFIGURED = "the MCS client is not configured"
UPLOAD_REMEDY = "Upload the VPN bundle downloaded from MCS: voxnode mcs upload FILE"


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class McsClient:
    def __init__(
        self, files: FileTree, services: ServicesSubsystem | None,
        current: Callable[[], DesiredState | None], tunnel: TunnelPort, *,
        events: EventLog | None = None, lock: asyncio.Lock | None = None,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._files = files
        self._services = services  # None where units are not driven (an agent on --root)
        self._current = current  # the committed document, for the working mode
        self.tunnel = tunnel
        self.events = events or EventLog()
        self._lock = lock or asyncio.Lock()  # the engine's: no upload during a mode switch
        self._clock = clock

    @property
    def configured(self) -> bool:
        return self._files.exists(MCS_CLIENT_CONF)

    @property
    def operator_stopped(self) -> bool:
        return self._files.exists(MCS_STOP_FLAG)

    # --- upload and remove --------------------------------------------------------------------

    async def upload(self, name: str, data: bytes, extra: dict[str, bytes] | None = None,
                     dry_run: bool = False) -> dict[str, Any]:
        """Validate, install (certificates first, configuration last) and (re)start."""
        self._refuse_in_pure_cloud()
        # parsing certificates and archives is CPU work: off the event loop too
        bundle = await durable(load_bundle, name, data, extra, self._clock())
        if dry_run:
            return {"dry_run": True, "summary": bundle.summary,
                    "would_write": [*bundle.files, MCS_CLIENT_CONF], "ignored": bundle.ignored}
        async with self._lock:
            self._refuse_in_pure_cloud()  # the mode may have changed while we validated
            changed = await durable(self._install, bundle)
            stopped = await durable(self._files.remove, MCS_STOP_FLAG)
            self.events.emit("mcs.installed", f"MCS client configuration installed from "
                             f"{bundle.summary['source']} (remote {bundle.summary['remote']}, "
                             f"certificate {bundle.summary['subject_cn']})")
            started = await self._run_unit(restart=bool(changed))
        return {"dry_run": False, "summary": bundle.summary, "written": changed,
                "cleared_stop": stopped, "unit": started, "ignored": bundle.ignored}

    def _refuse_in_pure_cloud(self) -> None:
        state = self._current()
        if state is not None and state.mode is WorkingMode.PURE_CLOUD:
            raise Conflict(PURE_CLOUD_REFUSAL, remedy="MCS serves smart working for on-premise "
                           "(Standard mode) nodes; switch to Standard first if this node "
                           "should use one.")

    def _install(self, bundle: Bundle) -> list[str]:
        """Write the files; on a failure put back what was there before, then raise."""
        targets = {**bundle.files, MCS_CLIENT_CONF: bundle.config.encode()}  # config last
        before = {path: self._files.read(path) for path in targets}
        written: list[str] = []
        try:
            for path, content in targets.items():
                if self._files.write_if_changed(path, content, 0o600):
                    written.append(path)
        except VoxnodeError:
            for path in reversed(written):
                old = before[path]
                if old is None:
                    self._files.remove(path)
                else:
                    self._files.write_if_changed(path, old, 0o600)
            raise
        self._files.path(MCS_CERT_DIR).chmod(0o700)
        keep = {p.rsplit("/", 1)[1] for p in targets} | {MCS_STOP_FLAG.rsplit("/", 1)[1]}
        for stale in sorted(self._files.path(MCS_CERT_DIR).iterdir()):
            if stale.name not in keep:  # e.g. the tls-auth key of the previous bundle
                self._files.remove(f"{MCS_CERT_DIR}/{stale.name}")
                written.append(f"{MCS_CERT_DIR}/{stale.name} (removed)")
        return written

    async def remove(self, yes: bool) -> dict[str, Any]:
        if not yes:
            raise ConfirmationRequired(
                "removing the MCS client deletes its certificate and configuration; smart "
                "working through MCS stops until a bundle is uploaded again")
        async with self._lock:
            unit = await self._stop_unit()
            removed = [p for p in (MCS_CLIENT_CONF, MCS_CERT_DIR)
                       if await durable(self._files.remove, p)]
            if removed:
                self.events.emit("mcs.removed", "MCS client configuration removed by the "
                                 "operator")
        return {"removed": removed, "unit": unit}

    # --- start and stop -----------------------------------------------------------------------

    async def stop(self) -> dict[str, Any]:
        """The operator's STOP: remembered (``MCS_STOP_FLAG``) and the unit stopped."""
        self._require_configured()
        async with self._lock:
            if not self.operator_stopped:
                when = self._clock().isoformat(timespec="seconds")
                await durable(self._files.write_if_changed, MCS_STOP_FLAG,
                              f"stopped by the operator at {when}\n", 0o600)
            unit = await self._stop_unit()
            self.events.emit("mcs.stopped", "MCS client stopped by the operator")
        return {"operator_stopped": True, "unit": unit}

    async def start(self) -> dict[str, Any]:
        """The operator's START: forget the STOP and start the unit if the catalogue wants
        it; if it does not (no licence, wrong mode or role), refuse and change nothing."""
        self._require_configured()
        async with self._lock:
            was_stopped = await durable(self._files.remove, MCS_STOP_FLAG)
            decision = await self._decision()
            if decision is not None and not decision.wanted:
                if was_stopped:
                    await durable(self._files.write_if_changed, MCS_STOP_FLAG,
                                  "stopped by the operator\n", 0o600)
                raise Conflict(f"the MCS client cannot run on this node: {decision.reason}",
                               remedy="START only starts a client the service catalogue "
                               "allows; see `voxnode services list`.")
            unit = await self._run_unit(restart=False)
            self.events.emit("mcs.started", "MCS client started by the operator")
        return {"operator_stopped": False, "unit": unit}

    def _require_configured(self) -> None:
        if not self.configured:
            raise Conflict(NOT_CONFIGURED, remedy=UPLOAD_REMEDY)

    async def _decision(self) -> UnitDecision | None:
        """The catalogue's decision on the MCS client unit; None without a services view."""
        if self._services is None:
            return None
        for decision in await self._services.wanted(self._current()):
            if decision.entry.condition is Condition.MCS_CLIENT_CONFIGURED:
                return decision
        return None

    def _unit_name(self, decision: UnitDecision | None) -> str:
        return decision.unit if decision is not None else MCS_UNIT

    async def _run_unit(self, restart: bool) -> dict[str, Any]:
        """Start the unit (restart it when its files changed) if the catalogue wants it."""
        if self._services is None:
            return {"running": False, "why": "units are not managed by this agent"}
        if self.operator_stopped:
            return {"running": False, "why": "stopped by the operator (voxnode mcs start)"}
        decision = await self._decision()
        if decision is None:
            return {"running": False, "why": "the service catalogue has no MCS client unit"}
        if not decision.wanted:
            return {"running": False, "why": decision.reason}
        systemd, unit = self._services.systemd, decision.unit
        state = await systemd.unit_state(unit)
        if restart and state.running:
            _expect(unit, "restart", await systemd.restart(unit, decision.entry.timeout))
            return {"running": True, "why": "restarted with the new configuration"}
        if self._services.last is None:
            return {"running": False, "why": "this node has no configuration yet: the "
                    "services are not managed"}
        _, failures = await self._services.reconcile()
        for failure in failures:
            if failure.details.get("unit") == unit:
                raise failure
        return {"running": True, "why": decision.reason}

    async def _stop_unit(self) -> dict[str, Any]:
        if self._services is None:
            return {"running": False, "why": "units are not managed by this agent"}
        systemd, unit = self._services.systemd, self._unit_name(await self._decision())
        state = await systemd.unit_state(unit)
        if state.installed and not state.stopped:
            _expect(unit, "stop", await systemd.stop(unit))
        if state.enabled:
            await systemd.disable(unit)
        return {"running": False, "why": "stopped"}

    # --- status -------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        decision = await self._decision()
        unit_name = self._unit_name(decision)
        unit = None
        if self._services is not None:
            st = await self._services.systemd.unit_state(unit_name)
            unit = {"name": unit_name, "state": st.describe(), "active_state": st.active_state,
                    "enabled": st.unit_file_state or "-", "running": st.running}
        tunnel = (await self.tunnel.observe()).to_dict()
        configured, stopped = self.configured, self.operator_stopped
        if not configured:
            word = "not-configured"
        elif stopped:
            word = "stopped"
        elif tunnel["connected"]:
            word = "connected"
        elif unit is not None and unit["running"]:
            word = "connecting"
        elif unit is not None and unit["active_state"] == "failed":
            word = "failed"
        else:
            word = "not-running"
        state = self._current()
        return {
            "status": word, "configured": configured, "operator_stopped": stopped,
            "mode": state.mode.value if state else None, "config": MCS_CLIENT_CONF,
            "bundle": self._installed_summary() if configured else None,
            "wanted": decision.wanted if decision else None,
            "reason": decision.reason if decision else None, "unit": unit, "tunnel": tunnel,
        }

    def _installed_summary(self) -> dict[str, Any]:
        text = (self._files.read(MCS_CLIENT_CONF) or b"").decode(errors="replace")
        directives, _ = read_directives(text, MCS_CLIENT_CONF)
        remotes = [":".join(d.args[:2]) + (f"/{d.args[2]}" if len(d.args) > 2 else "")
                   for d in directives if d.name == "remote"]
        cert = self._files.read(f"{MCS_CERT_DIR}/{MATERIAL['cert']}")
        summary = certificate_summary(cert, self._clock()) if cert else None
        return {"remotes": remotes, "remote": remotes[0] if remotes else None,
                **(summary or {"certificate": "missing or unreadable"})}


def _expect(unit: str, verb: str, result: str) -> None:
    if result != JOB_DONE:
        raise SubsystemError(
            f"systemd could not {verb} {unit} (the MCS client): the job ended with '{result}'",
            remedy=f"See `systemctl status {unit}` and `journalctl -u {unit}`.",
            details={"unit": unit, "job_result": result})
