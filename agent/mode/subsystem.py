"""The working-mode subsystem: owns ``mode`` and the files that follow from it.

It renders the extensions' pjsip fragment, the co-resident coturn configuration (Pure
Cloud) and ``working-mode.json``; keeps the TURN shared secret; and, on the switch from
Standard to Pure Cloud, deletes the MCS client configuration. It reads ``network.domain``,
``network.public_ip`` and the interface subnets. Starting and stopping units (Asterisk
reload, coturn on/off) belongs to the services subsystem.
"""

from __future__ import annotations

import asyncio
import re
import secrets

from agent.errors import Problem, SubsystemError
from agent.mode.render import (
    SIP_TLS_PORT,
    SIP_UDP_PORT,
    TURN_PORT,
    TURN_RELAY_PORTS,
    nat_private_address,
    node_subnets,
    render_coturn,
    render_pjsip,
    render_working_mode_json,
)
from agent.mode.table import MODE_TITLES, SmartWorking, differences, settings_for
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
# A placeholder, so that plan() can compare renderings without reading the real secret.
_PLAN_SECRET = "x" * 64

ACK_MCS = (
    "Switching to Pure Cloud deletes the MCS client configuration (the OpenVPN certificate "
    "and settings for smart working through MCS) irrecoverably."
)
WARN_AUTH_RESTART = (
    "User password security changes: the authentication service restarts, and nobody can "
    "log in until it is back."
)
WARN_REPROVISION = (
    "The SIP transport for extensions becomes {transport}: every phone must be "
    "re-provisioned to get the new SIP settings ({how})."
)
# How phones get re-provisioned in each mode (the seed's "Provisioning telefoni").
_REPROVISION_HOW = {
    WorkingMode.PURE_CLOUD: "Yealink through RPS, other phones by setting the provisioning "
    "URL on each phone",
    WorkingMode.STANDARD: "by setting the provisioning URL on each phone, or through DHCP "
    "auto-provisioning",
}
WARN_SMART_WORKING_ON = (
    "Smart working turns on for all WebRTC and mobile app devices: they become usable "
    "from the internet."
)
WARN_SMART_WORKING_OFF = "Smart working is turned off for all users."
WARN_ICE_OFF = "ICE NAT traversal is turned off for supported Yealink phones."
COTURN_GROUPS = ("coturn", "turnserver")

WARN_TURN_OFF = "The co-resident TURN/STUN server is turned off."
WARN_PBX_RESTART = (
    "The new SIP transport takes effect when the PBX engine restarts: calls in progress "
    "are dropped then."
)


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

    def plan(self, old: DesiredState | None, new: DesiredState) -> SubsystemPlan:
        title = MODE_TITLES[new.mode]
        if old is None:
            steps = [f"set the working mode to {title}", *self._file_steps(new)]
            return SubsystemPlan(self.name, steps=tuple(steps))
        if old.mode is not new.mode:
            steps = [f"working mode: {MODE_TITLES[old.mode]} → {title}"]
            steps += [f"{label}: {a} → {b}" for label, a, b in differences(old.mode, new.mode)]
            steps += self._file_steps(new)
            acknowledge: tuple[str, ...] = ()
            if new.mode is WorkingMode.PURE_CLOUD:
                steps.append(f"delete the MCS client configuration ({', '.join(MCS_CLIENT_PATHS)})")
                acknowledge = (ACK_MCS,)
            return SubsystemPlan(
                self.name,
                steps=tuple(steps),
                warnings=tuple(_switch_warnings(old.mode, new.mode)),
                acknowledge=acknowledge,
            )
        # Same mode: the network inputs may still change what is rendered (Pure Cloud).
        before, after = _renderings(old), _renderings(new)
        changed = [path for path in after if before.get(path) != after[path]]
        if not changed:
            return SubsystemPlan(self.name)
        why = "; ".join(_network_differences(old, new))
        return SubsystemPlan(
            self.name,
            steps=tuple(f"re-render {path} ({why})" for path in changed),
            warnings=(WARN_PBX_RESTART,) if PJSIP_VOXNODE_CONF in changed else (),
        )

    def _file_steps(self, new: DesiredState) -> list[str]:
        if new.mode is WorkingMode.PURE_CLOUD:
            low, high = TURN_RELAY_PORTS
            return [
                f"render {PJSIP_VOXNODE_CONF} (TLS transport on {SIP_TLS_PORT} for extensions, "
                f"NAT 1:1 to {new.network.public_ip})",
                f"create the TURN shared secret {TURN_SECRET} unless it exists",
                f"render {COTURN_CONF} (co-resident TURN/STUN on {TURN_PORT} udp/tcp, relay "
                f"ports {low}-{high}, realm {new.network.domain})",
                f"render {WORKING_MODE_JSON}",
            ]
        return [
            f"render {PJSIP_VOXNODE_CONF} (UDP transport on {SIP_UDP_PORT} for extensions)",
            f"remove {COTURN_CONF} if present (co-resident TURN/STUN off)",
            f"render {WORKING_MODE_JSON}",
        ]

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


def _switch_warnings(old: WorkingMode, new: WorkingMode) -> list[str]:
    """Side effects of a mode switch, one per derived setting that has one, in table order."""
    before, after = settings_for(old), settings_for(new)
    warnings: list[str] = []
    if before.user_password_security != after.user_password_security:
        warnings.append(WARN_AUTH_RESTART)
    if before.sip_transport != after.sip_transport:
        transport = after.sip_transport.value.upper()
        warnings.append(WARN_REPROVISION.format(transport=transport, how=_REPROVISION_HOW[new]))
    if before.ice_nat_traversal and not after.ice_nat_traversal:
        warnings.append(WARN_ICE_OFF)
    if before.turn_stun_server and not after.turn_stun_server:
        warnings.append(WARN_TURN_OFF)
    if before.smart_working != after.smart_working:
        on = after.smart_working is SmartWorking.ALL_DEVICES
        warnings.append(WARN_SMART_WORKING_ON if on else WARN_SMART_WORKING_OFF)
    if before.sip_transport != after.sip_transport:
        warnings.append(WARN_PBX_RESTART)
    return warnings


def _renderings(state: DesiredState) -> dict[str, str]:
    """What apply() would write for ``state``, with a placeholder for the TURN secret."""
    out = {PJSIP_VOXNODE_CONF: render_pjsip(state)}
    if settings_for(state.mode).turn_stun_server:
        out[COTURN_CONF] = render_coturn(state, _PLAN_SECRET)
    out[WORKING_MODE_JSON] = render_working_mode_json(state)
    return out


def _network_differences(old: DesiredState, new: DesiredState) -> list[str]:
    """Operator wording for the network inputs of the rendered files that changed."""
    out: list[str] = []
    a, b = old.network, new.network
    if a.public_ip != b.public_ip:
        out.append(f"public IP {a.public_ip} → {b.public_ip}")
    if a.domain != b.domain:
        out.append(f"domain {a.domain} → {b.domain}")
    subnets_a, subnets_b = node_subnets(old), node_subnets(new)
    if subnets_a != subnets_b:
        text_a = ", ".join(map(str, subnets_a)) or "none"
        text_b = ", ".join(map(str, subnets_b)) or "none"
        out.append(f"node subnets {text_a} → {text_b}")
    nat_a, nat_b = nat_private_address(old), nat_private_address(new)
    if nat_a != nat_b:
        out.append(f"NAT 1:1 private address {nat_a or 'unknown'} → {nat_b or 'unknown'}")
    return out
