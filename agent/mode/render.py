"""Pure renderers of the files the working mode decides (no I/O here).

- the Asterisk pjsip fragment with the extensions' transport and endpoint template,
- the co-resident coturn configuration (Pure Cloud only),
- ``working-mode.json``, the derived settings for the application layer.

Each takes the validated ``DesiredState`` and returns the file's text; the working-mode
subsystem writes them.
"""

from __future__ import annotations

import ipaddress
import json

from agent.mode.table import settings_for
from agent.paths import NODE_TLS_CERT, NODE_TLS_KEY, TURN_SECRET
from agent.state.document import gateway_interface
from agent.state.model import DesiredState, IPAddress, WorkingMode

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SIP_UDP_PORT = 5060
SIP_TLS_PORT = 5061
TURN_PORT = 3478
TURN_RELAY_PORTS = (20001, 30000)  # requirements §4: "RTP via TURN", apart from 10000-20000
ENDPOINT_TEMPLATE = "voxnode-extension"
TRANSPORT_UDP = "voxnode-udp"
TRANSPORT_TLS = "voxnode-tls"

# Peers a TURN relay must not reach: otherwise anyone with credentials could use the relay
# to probe the node's private networks (the node's own subnets are allowed back below,
# because the PBX's media lives there).
_DENIED_PEERS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "240.0.0.0/4",
        "::1/128",
        "::ffff:0:0/96",  # IPv4-mapped: the same private ranges, spelled as IPv6
        "fc00::/7",
        "fe80::/10",
    )
)


def node_subnets(state: DesiredState, version: int | None = None) -> list[Network]:
    """The static subnets of every interface, in document order, without repeats.

    Interfaces on DHCP contribute nothing: their subnet is only known at runtime.
    """
    out: list[Network] = []
    for iface in state.network.interfaces.values():
        for addr in iface.addresses:
            if (version is None or addr.version == version) and addr.network not in out:
                out.append(addr.network)
    return out


def nat_private_address(state: DesiredState) -> IPAddress | None:
    """The private address that NAT 1:1 maps the public IP to.

    The address on the gateway's interface (where internet traffic arrives), else the first
    static address of the public IP's family; None when only DHCP is configured.
    """
    public = state.network.public_ip
    if public is None:
        return None
    preferred = gateway_interface(state)
    names = list(state.network.interfaces)
    if preferred is not None:
        names.remove(preferred)
        names.insert(0, preferred)
    for name in names:
        for addr in state.network.interfaces[name].addresses:
            if addr.version == public.version:
                return addr.ip
    return None


def _need_public(state: DesiredState) -> tuple[IPAddress, str]:
    net = state.network
    if state.mode is not WorkingMode.PURE_CLOUD or net.public_ip is None or net.domain is None:
        raise ValueError("needs pure-cloud mode with network.public_ip and network.domain")
    return net.public_ip, net.domain


def render_pjsip(state: DesiredState) -> str:
    """``pjsip_voxnode.conf``: the extensions' transport and the template endpoints inherit."""
    settings = settings_for(state.mode)
    lines = [
        f"; Rendered by voxnode for the {state.mode.value} working mode; manual edits are",
        "; overwritten. Transport and template for extensions only: trunks keep their own.",
        "",
    ]
    pure_cloud = state.mode is WorkingMode.PURE_CLOUD
    if pure_cloud:
        public_ip, _ = _need_public(state)
        any_address = "[::]" if public_ip.version == 6 else "0.0.0.0"
        transport = TRANSPORT_TLS
        lines += [
            f"[{TRANSPORT_TLS}]",
            "type=transport",
            "protocol=tls",
            f"bind={any_address}:{SIP_TLS_PORT}",
            f"cert_file={NODE_TLS_CERT}",
            f"priv_key_file={NODE_TLS_KEY}",
            "method=tlsv1_2",
            # NAT 1:1: advertise the public address to everyone outside the node's subnets.
            f"external_signaling_address={public_ip}",
            f"external_media_address={public_ip}",
            *(f"local_net={net}" for net in node_subnets(state, public_ip.version)),
        ]
    else:
        transport = TRANSPORT_UDP
        lines += [
            f"[{TRANSPORT_UDP}]",
            "type=transport",
            "protocol=udp",
            f"bind=0.0.0.0:{SIP_UDP_PORT}",
        ]
    # Every option the mode decides is written in both modes, so that switching mode flips
    # values instead of relying on Asterisk's defaults.
    lines += [
        "",
        f"[{ENDPOINT_TEMPLATE}](!)",
        "type=endpoint",
        f"transport={transport}",
        f"direct_media={_yes_no(settings.peer_to_peer_media)}",
        f"ice_support={_yes_no(settings.ice_nat_traversal)}",
        # SDES keys travel inside SIP, so SRTP goes with the TLS transport only.
        f"media_encryption={'sdes' if pure_cloud else 'no'}",
        f"rtp_symmetric={_yes_no(pure_cloud)}",
        "force_rport=yes",
        f"rewrite_contact={_yes_no(pure_cloud)}",
    ]
    return "\n".join(lines) + "\n"


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _peer_range(net: Network) -> str:
    return f"{net.network_address}-{net.broadcast_address}"


def render_coturn(state: DesiredState, secret: str) -> str:
    """``turnserver.conf`` of the co-resident TURN/STUN server (Pure Cloud).

    ``secret`` is the shared secret for TURN REST credentials; the result therefore is as
    sensitive as the secret and is never logged.
    """
    public_ip, domain = _need_public(state)
    private = nat_private_address(state)
    low, high = TURN_RELAY_PORTS
    lines = [
        "# Rendered by voxnode for the pure-cloud working mode (co-resident TURN/STUN);",
        "# manual edits are overwritten.",
        "",
        "# STUN/TURN on 3478 over UDP and TCP only: 5349 (TLS/DTLS) is not exposed.",
        f"listening-port={TURN_PORT}",
        "no-tls",
        "no-dtls",
        f"min-port={low}",
        f"max-port={high}",
        "",
        "# NAT 1:1: relayed addresses are announced as the public IP.",
    ]
    if private is not None:
        lines += [f"external-ip={public_ip}/{private}", f"relay-ip={private}"]
    else:
        # DHCP only: the private address is unknown here; coturn maps its one address.
        lines.append(f"external-ip={public_ip}")
    lines += [
        "",
        f"realm={domain}",
        f"server-name={domain}",
        "fingerprint",
        "use-auth-secret",
        f"static-auth-secret={secret}",
        "stale-nonce=600",
        "",
        "no-cli",
        "# Should a TLS listener be enabled later, never with TLS 1.0 or 1.1.",
        "no-tlsv1",
        "no-tlsv1_1",
        "no-software-attribute",
        "no-multicast-peers",
        "",
        "# The relay must not reach private networks, except the node's own subnets.",
        *(f"denied-peer-ip={_peer_range(net)}" for net in _DENIED_PEERS),
        *(f"allowed-peer-ip={_peer_range(net)}" for net in node_subnets(state)),
        "",
        "syslog",
    ]
    return "\n".join(lines) + "\n"


def render_working_mode_json(state: DesiredState) -> str:
    """``working-mode.json``: the mode and its derived settings for the application layer."""
    settings = settings_for(state.mode)
    pure_cloud = state.mode is WorkingMode.PURE_CLOUD
    turn: dict[str, object] | None = None
    if settings.turn_stun_server:
        _, domain = _need_public(state)
        turn = {
            "urls": [
                f"stun:{domain}:{TURN_PORT}",
                f"turn:{domain}:{TURN_PORT}?transport=udp",
                f"turn:{domain}:{TURN_PORT}?transport=tcp",
            ],
            # TURN REST API credentials are derived from this file (never copied here).
            "secret_file": TURN_SECRET,
        }
    doc = {
        "version": 1,
        "mode": state.mode.value,
        "settings": settings.to_dict(),
        "pjsip": {
            "endpoint_template": ENDPOINT_TEMPLATE,
            "transport": TRANSPORT_TLS if pure_cloud else TRANSPORT_UDP,
            "port": SIP_TLS_PORT if pure_cloud else SIP_UDP_PORT,
        },
        "turn": turn,
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"
