"""The working-mode subsystem's plan: what a change of ``mode`` (or of the network inputs
of the rendered files) will do. Pure: the two documents say it all.

A switch lists the derived settings that change (``agent.mode.table``), the files it
renders, the side effects operators must know (service restarts, phones to re-provision)
and, from Standard to Pure Cloud, the irrecoverable deletion of the MCS client
configuration, which needs consent. Within one mode, a change of the public IP, domain or
subnets re-renders the files that depend on them.
"""

from __future__ import annotations

from enum import StrEnum

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
from agent.mode.table import MODE_TITLES, SmartWorking, setting_changes, settings_for
from agent.paths import (
    COTURN_CONF,
    MCS_CLIENT_PATHS,
    PJSIP_VOXNODE_CONF,
    TURN_SECRET,
    WORKING_MODE_JSON,
)
from agent.state.model import DesiredState, WorkingMode
from agent.subsystems.base import PlanItem, Scalar, SubsystemPlan, item, joined

# A placeholder, so that plans compare renderings without reading the real secret.
_PLAN_SECRET = "x" * 64


class ModeCode(StrEnum):
    MODE_SET = "mode-set"
    MODE_CHANGE = "mode-change"
    MODE_SETTING_CHANGE = "mode-setting-change"
    PJSIP_RENDER_TLS = "pjsip-render-tls"
    PJSIP_RENDER_UDP = "pjsip-render-udp"
    TURN_SECRET_CREATE = "turn-secret-create"
    COTURN_RENDER = "coturn-render"
    COTURN_REMOVE = "coturn-remove"
    WORKING_MODE_RENDER = "working-mode-render"
    MCS_CLIENT_DELETE = "mcs-client-delete"
    FILE_RERENDER = "file-rerender"
    # warnings
    AUTH_SERVICE_RESTART = "auth-service-restart"
    PHONES_REPROVISION = "phones-reprovision"
    ICE_OFF = "ice-off"
    TURN_SERVER_OFF = "turn-server-off"
    SMART_WORKING_ON = "smart-working-on"
    SMART_WORKING_OFF = "smart-working-off"
    PBX_RESTART = "pbx-restart"
    # acknowledgements
    MCS_CLIENT_LOST = "mcs-client-lost"


C = ModeCode

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
WARN_TURN_OFF = "The co-resident TURN/STUN server is turned off."
WARN_PBX_RESTART = (
    "The new SIP transport takes effect when the PBX engine restarts: calls in progress "
    "are dropped then."
)
_PBX_RESTART = item(C.PBX_RESTART, WARN_PBX_RESTART)


def plan_mode(old: DesiredState | None, new: DesiredState,
              mcs_present: tuple[str, ...] = MCS_CLIENT_PATHS) -> SubsystemPlan:
    """Describe going from ``old`` (None: first start, plan everything) to ``new``;
    ``mcs_present``: the MCS client paths that exist on the node (a switch to Pure Cloud
    deletes them and needs consent only when there are some)."""
    name = "mode"
    title = MODE_TITLES[new.mode]
    if old is None:
        steps = [item(C.MODE_SET, f"set the working mode to {title}", mode=new.mode.value),
                 *_file_steps(new)]
        return SubsystemPlan(name, steps=tuple(steps))
    if old.mode is not new.mode:
        steps = [item(C.MODE_CHANGE, f"working mode: {MODE_TITLES[old.mode]} → {title}",
                      old=old.mode.value, new=new.mode.value)]
        steps += [item(C.MODE_SETTING_CHANGE, f"{c.label}: {c.old_text} → {c.new_text}",
                       setting=c.setting, old=c.old, new=c.new)
                  for c in setting_changes(old.mode, new.mode)]
        steps += _file_steps(new)
        acknowledge: tuple[PlanItem, ...] = ()
        if new.mode is WorkingMode.PURE_CLOUD and mcs_present:
            paths = ", ".join(mcs_present)
            steps.append(item(C.MCS_CLIENT_DELETE, f"delete the MCS client configuration "
                              f"({paths})", paths=joined(mcs_present)))
            acknowledge = (item(C.MCS_CLIENT_LOST, ACK_MCS, paths=joined(mcs_present)),)
        return SubsystemPlan(
            name,
            steps=tuple(steps),
            warnings=tuple(_switch_warnings(old.mode, new.mode)),
            acknowledge=acknowledge,
        )
    # Same mode: the network inputs may still change what is rendered (Pure Cloud).
    before, after = _renderings(old), _renderings(new)
    changed = [path for path in after if before.get(path) != after[path]]
    if not changed:
        return SubsystemPlan(name)
    inputs = _network_differences(old, new)
    why = "; ".join(text for _, _, _, text in inputs)
    params: dict[str, Scalar] = {"changed": joined(key for key, _, _, _ in inputs)}
    for key, was, now, _ in inputs:
        params[f"{key}_old"], params[f"{key}_new"] = was, now
    return SubsystemPlan(
        name,
        steps=tuple(PlanItem(C.FILE_RERENDER, f"re-render {path} ({why})",
                             {"path": path, **params}) for path in changed),
        warnings=(_PBX_RESTART,) if PJSIP_VOXNODE_CONF in changed else (),
    )


def _file_steps(new: DesiredState) -> list[PlanItem]:
    mode_json = item(C.WORKING_MODE_RENDER, f"render {WORKING_MODE_JSON}",
                     path=WORKING_MODE_JSON)
    if new.mode is WorkingMode.PURE_CLOUD:
        low, high = TURN_RELAY_PORTS
        public_ip = str(new.network.public_ip)
        return [
            item(C.PJSIP_RENDER_TLS, f"render {PJSIP_VOXNODE_CONF} (TLS transport on "
                 f"{SIP_TLS_PORT} for extensions, NAT 1:1 to {public_ip})",
                 path=PJSIP_VOXNODE_CONF, port=SIP_TLS_PORT, public_ip=public_ip),
            item(C.TURN_SECRET_CREATE, f"create the TURN shared secret {TURN_SECRET} unless "
                 "it exists", path=TURN_SECRET),
            item(C.COTURN_RENDER, f"render {COTURN_CONF} (co-resident TURN/STUN on {TURN_PORT} "
                 f"udp/tcp, relay ports {low}-{high}, realm {new.network.domain})",
                 path=COTURN_CONF, port=TURN_PORT, relay_low=low, relay_high=high,
                 realm=new.network.domain),
            mode_json,
        ]
    return [
        item(C.PJSIP_RENDER_UDP, f"render {PJSIP_VOXNODE_CONF} (UDP transport on "
             f"{SIP_UDP_PORT} for extensions)", path=PJSIP_VOXNODE_CONF, port=SIP_UDP_PORT),
        item(C.COTURN_REMOVE, f"remove {COTURN_CONF} if present (co-resident TURN/STUN off)",
             path=COTURN_CONF),
        mode_json,
    ]


def _switch_warnings(old: WorkingMode, new: WorkingMode) -> list[PlanItem]:
    """Side effects of a mode switch, one per derived setting that has one, in table order."""
    before, after = settings_for(old), settings_for(new)
    warnings: list[PlanItem] = []
    if before.user_password_security != after.user_password_security:
        warnings.append(item(C.AUTH_SERVICE_RESTART, WARN_AUTH_RESTART))
    if before.sip_transport != after.sip_transport:
        transport = after.sip_transport.value.upper()
        warnings.append(item(
            C.PHONES_REPROVISION,
            WARN_REPROVISION.format(transport=transport, how=_REPROVISION_HOW[new]),
            transport=after.sip_transport.value, mode=new.value))
    if before.ice_nat_traversal and not after.ice_nat_traversal:
        warnings.append(item(C.ICE_OFF, WARN_ICE_OFF))
    if before.turn_stun_server and not after.turn_stun_server:
        warnings.append(item(C.TURN_SERVER_OFF, WARN_TURN_OFF))
    if before.smart_working != after.smart_working:
        if after.smart_working is SmartWorking.ALL_DEVICES:
            warnings.append(item(C.SMART_WORKING_ON, WARN_SMART_WORKING_ON))
        else:
            warnings.append(item(C.SMART_WORKING_OFF, WARN_SMART_WORKING_OFF))
    if before.sip_transport != after.sip_transport:
        warnings.append(_PBX_RESTART)
    return warnings


def _renderings(state: DesiredState) -> dict[str, str]:
    """What apply() would write for ``state``, with a placeholder for the TURN secret."""
    out = {PJSIP_VOXNODE_CONF: render_pjsip(state)}
    if settings_for(state.mode).turn_stun_server:
        out[COTURN_CONF] = render_coturn(state, _PLAN_SECRET)
    out[WORKING_MODE_JSON] = render_working_mode_json(state)
    return out


def _network_differences(old: DesiredState, new: DesiredState
                         ) -> list[tuple[str, Scalar, Scalar, str]]:
    """The network inputs of the rendered files that changed: (key, old, new, operator
    wording)."""
    out: list[tuple[str, Scalar, Scalar, str]] = []
    a, b = old.network, new.network
    if a.public_ip != b.public_ip:
        out.append(("public_ip", _text(a.public_ip), _text(b.public_ip),
                    f"public IP {a.public_ip} → {b.public_ip}"))
    if a.domain != b.domain:
        out.append(("domain", a.domain, b.domain, f"domain {a.domain} → {b.domain}"))
    subnets_a, subnets_b = node_subnets(old), node_subnets(new)
    if subnets_a != subnets_b:
        text_a = ", ".join(map(str, subnets_a)) or "none"
        text_b = ", ".join(map(str, subnets_b)) or "none"
        out.append(("node_subnets", joined(subnets_a), joined(subnets_b),
                    f"node subnets {text_a} → {text_b}"))
    nat_a, nat_b = nat_private_address(old), nat_private_address(new)
    if nat_a != nat_b:
        out.append(("nat_private_address", _text(nat_a), _text(nat_b),
                    f"NAT 1:1 private address {nat_a or 'unknown'} → {nat_b or 'unknown'}"))
    return out


def _text(value: object | None) -> str | None:
    return None if value is None else str(value)
