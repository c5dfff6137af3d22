"""The working-mode plan: its sentences, codes and params, from the two documents alone."""

from __future__ import annotations

from agent.mode.subsystem import ModeSubsystem
from agent.state.model import DesiredState
from agent.subsystems.base import PlanItem, SubsystemPlan, texts
from tests.unit.purity import Untouchable, forbid_io
from tests.unit.test_mode_subsystem import PURE_CLOUD, STANDARD, state


def plan(old: DesiredState | None, new: DesiredState) -> SubsystemPlan:
    """Through the subsystem, with ports that refuse any use and no I/O allowed."""
    sub = ModeSubsystem(Untouchable("files"), Untouchable("licence"))
    with forbid_io():
        return sub.plan(old, new, None)


def test_plan_standard_to_pure_cloud() -> None:
    result = plan(STANDARD, PURE_CLOUD)
    assert texts(result.acknowledge) == (
        "Switching to Pure Cloud deletes the MCS client configuration (the OpenVPN "
        "certificate and settings for smart working through MCS) irrecoverably.",
    )
    assert texts(result.warnings) == (
        "User password security changes: the authentication service restarts, and nobody "
        "can log in until it is back.",
        "The SIP transport for extensions becomes TLS: every phone must be re-provisioned to "
        "get the new SIP settings (Yealink through RPS, other phones by setting the "
        "provisioning URL on each phone).",
        "Smart working turns on for all WebRTC and mobile app devices: they become usable "
        "from the internet.",
        "The new SIP transport takes effect when the PBX engine restarts: calls in progress "
        "are dropped then.",
    )
    assert texts(result.steps) == (
        "working mode: Standard → Pure Cloud (NAT 1:1)",
        "User password security: not secure → secure",
        "SIP password security: not secure → secure",
        "Phone provisioning security: basic → secure, RPS enabled",
        "SIP transport for extensions: UDP → TLS",
        "ICE NAT traversal (supported Yealink): no → yes",
        "Peer-to-peer media: yes → no",
        "Co-resident TURN/STUN server: off → on",
        "Smart working (WebRTC, mobile app): per user (needs MCS and a licence) → on for all "
        "WebRTC and mobile app devices",
        "render /etc/asterisk/pjsip_voxnode.conf (TLS transport on 5061 for extensions, "
        "NAT 1:1 to 203.0.113.10)",
        "create the TURN shared secret /etc/voxnode/secrets/turn.secret unless it exists",
        "render /etc/coturn/turnserver.conf (co-resident TURN/STUN on 3478 udp/tcp, relay "
        "ports 20001-30000, realm pbx.example.com)",
        "render /etc/voxnode/working-mode.json",
        "delete the MCS client configuration (/etc/openvpn/client/mcs.conf, /etc/voxnode/mcs)",
    )


def test_plan_pure_cloud_to_standard() -> None:
    result = plan(PURE_CLOUD, STANDARD)
    assert texts(result.acknowledge) == ()
    assert texts(result.warnings) == (
        "User password security changes: the authentication service restarts, and nobody "
        "can log in until it is back.",
        "The SIP transport for extensions becomes UDP: every phone must be re-provisioned to "
        "get the new SIP settings (by setting the provisioning URL on each phone, or through "
        "DHCP auto-provisioning).",
        "ICE NAT traversal is turned off for supported Yealink phones.",
        "The co-resident TURN/STUN server is turned off.",
        "Smart working is turned off for all users.",
        "The new SIP transport takes effect when the PBX engine restarts: calls in progress "
        "are dropped then.",
    )
    assert "SIP transport for extensions: TLS → UDP" in texts(result.steps)
    assert "remove /etc/coturn/turnserver.conf if present (co-resident TURN/STUN off)" in (
        texts(result.steps)
    )
    assert not any(step.startswith("delete") for step in texts(result.steps))


def test_plan_first_start_needs_no_consent() -> None:
    result = plan(None, PURE_CLOUD)
    assert texts(result.acknowledge) == ()
    assert texts(result.warnings) == ()
    assert texts(result.steps)[0] == "set the working mode to Pure Cloud (NAT 1:1)"
    assert not any(step.startswith("delete") for step in texts(result.steps))


def test_plan_unchanged_is_empty() -> None:
    assert plan(STANDARD, STANDARD).empty
    assert plan(PURE_CLOUD, PURE_CLOUD).empty
    # Standard renders nothing from the network: moving the public IP changes nothing here
    assert plan(STANDARD, state(public_ip="203.0.113.20")).empty


def test_plan_public_ip_change_in_pure_cloud_rerenders() -> None:
    result = plan(PURE_CLOUD, state("pure-cloud", public_ip="203.0.113.20"))
    why = "public IP 203.0.113.10 → 203.0.113.20"
    assert texts(result.steps) == (
        f"re-render /etc/asterisk/pjsip_voxnode.conf ({why})",
        f"re-render /etc/coturn/turnserver.conf ({why})",
    )
    assert texts(result.warnings) == (
        "The new SIP transport takes effect when the PBX engine restarts: calls in progress "
        "are dropped then.",
    )
    assert texts(result.acknowledge) == ()


def test_plan_domain_and_interface_changes_in_pure_cloud() -> None:
    domain = plan(PURE_CLOUD, state("pure-cloud", domain="voice.example.com"))
    why = "domain pbx.example.com → voice.example.com"
    assert texts(domain.steps) == (
        f"re-render /etc/coturn/turnserver.conf ({why})",
        f"re-render /etc/voxnode/working-mode.json ({why})",
    )
    assert texts(domain.warnings) == ()
    two = {"eth0": {"addresses": ["10.0.0.11/24"]}, "eth1": {"addresses": ["192.168.5.2/24"]}}
    subnets = plan(PURE_CLOUD, state("pure-cloud", interfaces=two))
    why = "node subnets 10.0.0.0/24 → 10.0.0.0/24, 192.168.5.0/24"
    assert texts(subnets.steps) == (
        f"re-render /etc/asterisk/pjsip_voxnode.conf ({why})",
        f"re-render /etc/coturn/turnserver.conf ({why})",
    )


# --- codes and params -------------------------------------------------------------------------


def codes(items: tuple[PlanItem, ...]) -> list[str]:
    return [i.code for i in items]


def test_a_switch_to_pure_cloud_in_codes_and_params() -> None:
    result = plan(STANDARD, PURE_CLOUD)
    assert codes(result.steps) == [
        "mode-change", *["mode-setting-change"] * 8, "pjsip-render-tls", "turn-secret-create",
        "coturn-render", "working-mode-render", "mcs-client-delete"]
    first, setting = result.steps[0], result.steps[1]
    assert first.params == {"old": "standard", "new": "pure-cloud"}
    assert setting.params == {"setting": "user_password_security", "old": "not-secure",
                              "new": "secure"}
    ice = next(s for s in result.steps if s.params.get("setting") == "ice_nat_traversal")
    assert ice.params == {"setting": "ice_nat_traversal", "old": False, "new": True}
    assert result.steps[9].params == {"path": "/etc/asterisk/pjsip_voxnode.conf",
                                      "port": 5061, "public_ip": "203.0.113.10"}
    assert result.steps[11].params == {
        "path": "/etc/coturn/turnserver.conf", "port": 3478, "relay_low": 20001,
        "relay_high": 30000, "realm": "pbx.example.com"}
    assert result.steps[13].params == {
        "paths": "/etc/openvpn/client/mcs.conf,/etc/voxnode/mcs"}
    assert codes(result.warnings) == [
        "auth-service-restart", "phones-reprovision", "smart-working-on", "pbx-restart"]
    assert result.warnings[1].params == {"transport": "tls", "mode": "pure-cloud"}
    [ack] = result.acknowledge
    assert ack.to_dict() == {
        "code": "mcs-client-lost",
        "params": {"paths": "/etc/openvpn/client/mcs.conf,/etc/voxnode/mcs"},
        "text": "Switching to Pure Cloud deletes the MCS client configuration (the OpenVPN "
                "certificate and settings for smart working through MCS) irrecoverably.",
    }


def test_back_to_standard_in_codes() -> None:
    result = plan(PURE_CLOUD, STANDARD)
    assert codes(result.steps)[-3:] == ["pjsip-render-udp", "coturn-remove",
                                        "working-mode-render"]
    assert codes(result.warnings) == [
        "auth-service-restart", "phones-reprovision", "ice-off", "turn-server-off",
        "smart-working-off", "pbx-restart"]
    first = plan(None, STANDARD).steps[0]
    assert (first.code, dict(first.params)) == ("mode-set", {"mode": "standard"})


def test_a_rerender_names_the_inputs_that_changed() -> None:
    moved = plan(PURE_CLOUD, state("pure-cloud", public_ip="203.0.113.20",
                                   domain="voice.example.com"))
    assert [(s.code, dict(s.params)) for s in moved.steps] == [
        ("file-rerender", {"path": path, "changed": "public_ip,domain",
                           "public_ip_old": "203.0.113.10", "public_ip_new": "203.0.113.20",
                           "domain_old": "pbx.example.com", "domain_new": "voice.example.com"})
        for path in ("/etc/asterisk/pjsip_voxnode.conf", "/etc/coturn/turnserver.conf",
                     "/etc/voxnode/working-mode.json")
    ]
    assert codes(moved.warnings) == ["pbx-restart"]
    two = {"eth0": {"addresses": ["10.0.0.11/24"]}, "eth1": {"addresses": ["192.168.5.2/24"]}}
    subnets = plan(PURE_CLOUD, state("pure-cloud", interfaces=two)).steps[0]
    assert subnets.params == {"path": "/etc/asterisk/pjsip_voxnode.conf",
                              "changed": "node_subnets", "node_subnets_old": "10.0.0.0/24",
                              "node_subnets_new": "10.0.0.0/24,192.168.5.0/24"}
