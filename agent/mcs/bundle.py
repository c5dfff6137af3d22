"""Validating an MCS bundle and rendering the configuration the node runs (pure).

Owns the rules an uploaded OpenVPN client configuration must meet before it is installed
(``client``; at least one good ``remote``; ``dev tun``; a CA, a certificate and an
unencrypted key that parse, match, are in date and chain; no option that runs a program)
and the normalised configuration written to ``MCS_CLIENT_CONF``: certificates and keys as
0600 files under ``MCS_CERT_DIR`` referenced by path, a fixed tunnel name and OpenVPN's
management socket for the status. Every problem is reported at once as ``NAME:LINE: what``.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from agent.errors import InvalidInput, Problem
from agent.mcs import MCS_MANAGEMENT_SOCKET, MCS_TUN_DEV
from agent.mcs.ovpn import (
    MATERIAL,
    BundleUnreadable,
    Directive,
    Upload,
    quote,
    read_directives,
    unpack,
)
from agent.mcs.pem import PemMaterial, check_material
from agent.paths import MCS_CERT_DIR

PROTOS = ("udp", "tcp", "udp4", "tcp4", "tcp-client")
DEFAULT_PORT = 1194
RUNS_PROGRAMS = frozenset({
    "up", "down", "route-up", "route-pre-down", "ipchange", "tls-verify", "learn-address",
    "client-connect", "client-disconnect", "auth-user-pass-verify", "plugin", "iproute",
    "tls-export-cert",
})
# Options voxnode sets itself, or that would fight the unit (logging, daemonising, files).
OWNED = frozenset({
    "dev", "dev-type", "proto", "port", "rport", "key-direction", "script-security",
    "management", "management-hold", "management-query-passwords", "status", "status-version",
    "log", "log-append", "writepid", "daemon", "syslog", "cd", "chroot", "config",
})
WINDOWS_ONLY = frozenset({"block-outside-dns", "register-dns", "route-method", "ip-win32",
                          "win-sys", "dhcp-release", "dhcp-renew", "tap-sleep"})
REFUSED = {
    "auth-user-pass": "asks for a user name and password, which a service cannot type "
    "(MCS bundles authenticate with the certificate)",
    "askpass": "asks for the key's passphrase, which a service cannot type: upload the key "
    "unencrypted",
    "pkcs12": "PKCS#12 files are not supported: export the CA, certificate and key as PEM",
    "connection": "<connection> blocks are not supported: use remote lines",
    "tls-crypt-v2": "tls-crypt-v2 is not supported: use tls-crypt or tls-auth",
}
PASS_THROUGH = frozenset({
    "client", "tls-client", "pull", "nobind", "persist-key", "persist-tun", "resolv-retry",
    "remote-cert-tls", "remote-cert-ku", "remote-cert-eku", "ns-cert-type", "verify-x509-name",
    "peer-fingerprint", "cipher", "data-ciphers", "data-ciphers-fallback", "ncp-ciphers",
    "auth", "tls-cipher", "tls-ciphersuites", "tls-groups", "tls-version-min",
    "tls-version-max", "tls-cert-profile", "ecdh-curve", "verb", "mute", "mute-replay-warnings",
    "comp-lzo", "compress", "allow-compression", "keepalive", "ping", "ping-restart",
    "ping-exit", "ping-timer-rem", "reneg-sec", "reneg-bytes", "reneg-pkts", "tun-mtu",
    "tun-mtu-extra", "mssfix", "fragment", "link-mtu", "mtu-disc", "float", "auth-nocache",
    "explicit-exit-notify", "connect-retry", "connect-retry-max", "connect-timeout",
    "server-poll-timeout", "hand-window", "tran-window", "tls-timeout", "inactive",
    "remote-random", "route", "route-ipv6", "route-nopull", "route-delay", "route-metric",
    "pull-filter", "sndbuf", "rcvbuf", "txqueuelen", "setenv", "push-peer-info", "topology",
    "replay-window", "auth-retry", "disable-occ", "persist-remote-ip", "persist-local-ip",
    "x509-username-field", "key-method", "tls-exit", "fast-io", "lport", "bind", "mark",
    "passtos", "http-proxy", "http-proxy-retry", "socks-proxy", "dhcp-option", "user", "group",
    "redirect-gateway", "redirect-private", "disable-dco", "remote",
    "ca", "cert", "key", "tls-auth", "tls-crypt",
})
# ``setenv`` names a bundle may set: peer information the MCS may read. Any other name is
# refused; ``setenv opt X`` in particular is OpenVPN's way to give option X, which would
# slip every refused option (plugin, up, script-security) back in.
SETENV_ALLOWED = frozenset({"CLIENT_CERT", "PUSH_PEER_INFO"})
SETENV_USER_PREFIX = "UV_"  # user variables sent to the server as peer information
# Local ports the link must never take: SIP, the web console, the database and the pair's
# own traffic (heartbeats, arbiter, replication, file sync).
RESERVED_LOCAL_PORTS = frozenset({22, 80, 443, 694, 3306, 5060, 5061, 7412, 7422, 9090})
_HOST_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)"
                      r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$")


@dataclass(frozen=True)
class Remote:
    host: str
    port: int
    proto: str

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.proto}"


@dataclass
class Bundle:
    """A valid bundle: the normalised configuration and the files it references."""

    config: str
    files: dict[str, bytes]  # node path -> content, each written 0600
    summary: dict[str, Any]
    ignored: list[str] = field(default_factory=list)


def load_bundle(name: str, data: bytes, extra: dict[str, bytes] | None = None,
                now: dt.datetime | None = None) -> Bundle:
    """Unpack, validate and normalise an upload; raises ``InvalidInput`` with every problem."""
    try:
        upload = unpack(name, data, extra)
    except BundleUnreadable as exc:
        raise invalid([exc.problem]) from None
    return validate(upload, now or dt.datetime.now(dt.UTC))


def invalid(problems: list[Problem]) -> InvalidInput:
    return InvalidInput(
        "the MCS bundle is not valid; nothing was installed", problems=problems,
        remedy="Download the VPN bundle for this node from the MCS again, or correct the "
        "listed problems, then upload it again.",
    )


def validate(upload: Upload, now: dt.datetime) -> Bundle:
    src = upload.source
    directives, problems = read_directives(upload.text, src)
    at = {d.name: d for d in directives}  # the last of each, as OpenVPN reads them
    known = [d for d in directives if d.name in PASS_THROUGH | OWNED | WINDOWS_ONLY]
    if not known and not problems:
        raise invalid([Problem(src, "not an OpenVPN client configuration: none of its lines "
                                    "is an OpenVPN option")])
    kept: list[Directive] = []
    ignored: list[str] = []
    for d in directives:
        where = f"{src}:{d.line}"
        if d.name in RUNS_PROGRAMS:
            problems.append(Problem(where, f"'{d.name}' runs a program on the node and is "
                                           "refused for safety: remove it"))
        elif d.name in REFUSED:
            problems.append(Problem(where, f"'{d.name}': {REFUSED[d.name]}"))
        elif d.name == "script-security":
            level = d.args[0] if d.args else ""
            if level not in ("0", "1"):
                problems.append(Problem(where, f"'script-security {level}' allows running "
                                               "programs and is refused for safety: remove it "
                                               "(or use 1)"))
        elif d.name in WINDOWS_ONLY or (d.name in OWNED and d.name not in _READ_LATER):
            ignored.append(f"{d.name} (line {d.line})")
        elif (refusal := _refusal(d, at)) is not None:
            problems.append(Problem(where, refusal))
        elif d.name in PASS_THROUGH:
            if d.name not in MATERIAL and d.name != "remote":
                kept.append(d)
        elif d.name not in _READ_LATER:
            problems.append(Problem(where, f"'{d.name}' is not an OpenVPN client option "
                                           "voxnode accepts"))
    if "client" not in at:
        problems.append(Problem(src, "the 'client' directive is missing (an MCS bundle is a "
                                     "client configuration)"))
    problems += _check_dev(src, at.get("dev"), at.get("dev-type"))
    remotes = _remotes(src, directives, problems)
    material = _material(upload, at, problems)
    if material is not None:
        problems += check_material(material, now)
    if problems or material is None:
        raise invalid(sorted(set(problems), key=_problem_order))
    return _render(upload, remotes, kept, material, ignored)


def _refusal(d: Directive, at: dict[str, Directive]) -> str | None:
    """Why a pass-through option is refused as written: it would run, read or bind
    something on the node, or take the node's routing."""
    if d.name == "setenv":
        name = d.args[0] if d.args else ""
        if name.lower() == "opt":
            return ("'setenv opt' gives OpenVPN any option, including refused ones, and is "
                    "refused for safety: remove it")
        if name not in SETENV_ALLOWED and not (
                name.startswith(SETENV_USER_PREFIX) and len(name) > len(SETENV_USER_PREFIX)):
            return (f"'setenv {name}' is not allowed (allowed: "
                    f"{', '.join(sorted(SETENV_ALLOWED))}, {SETENV_USER_PREFIX}*)")
        return None
    if d.name in ("redirect-gateway", "redirect-private"):
        return (f"'{d.name}' would send the node's own traffic through the MCS link and is "
                "refused: the link carries only the MCS networks")
    if d.name == "http-proxy" and len(d.args) > 2:
        return ("'http-proxy' with an authentication file or method reads a file of the "
                "node and is refused: give the proxy's host and port only")
    if d.name == "socks-proxy" and len(d.args) > 2:
        return ("'socks-proxy' with an authentication file reads a file of the node and is "
                "refused: give the proxy's host and port only")
    if d.name in ("lport", "bind"):
        port = _local_port(at)
        if port in RESERVED_LOCAL_PORTS:
            return (f"'{d.name}' would bind local port {port}, which the node uses "
                    f"(reserved: {', '.join(map(str, sorted(RESERVED_LOCAL_PORTS)))}): "
                    "remove it or use nobind")
    return None


def _local_port(at: dict[str, Directive]) -> int | None:
    """The local port OpenVPN binds: the last ``lport``, else the last ``port``, else the
    default (when a ``bind`` asks for one)."""
    found = at.get("lport") or at.get("port")
    if found is None:
        return DEFAULT_PORT
    return _port(found.args[0] if found.args else "")


def _port(text: str) -> int | None:
    """A port number as a bundle writes it: ASCII digits (``str.isdigit`` also takes '²'),
    1 to 65535; None otherwise."""
    if text.isascii() and text.isdigit() and len(text) <= 5 and 1 <= int(text) <= 65535:
        return int(text)
    return None


_READ_LATER = frozenset({"dev", "dev-type", "proto", "port", "rport", "key-direction"})


def _problem_order(p: Problem) -> tuple[int, str]:
    _, _, line = p.path.rpartition(":")
    return (int(line) if line.isdigit() else 0, p.message)


def _check_dev(src: str, dev: Directive | None, dev_type: Directive | None) -> list[Problem]:
    if dev is None:
        return [Problem(src, "'dev' is missing: the MCS link is a routed tunnel (dev tun)")]
    name = dev.args[0] if dev.args else ""
    kind = dev_type.args[0] if dev_type and dev_type.args else name[:3]
    if kind != "tun":
        return [Problem(f"{src}:{dev.line}", f"'dev {name}' is not allowed: the MCS link is "
                                             "a routed tunnel (dev tun)")]
    return []


def _remotes(src: str, directives: list[Directive], problems: list[Problem]) -> list[Remote]:
    port_d = next((d for d in reversed(directives) if d.name in ("port", "rport")), None)
    proto_d = next((d for d in reversed(directives) if d.name == "proto"), None)
    default_port = port_d.args[0] if port_d and port_d.args else str(DEFAULT_PORT)
    default_proto = proto_d.args[0] if proto_d and proto_d.args else "udp"
    remotes: list[Remote] = []
    lines = [d for d in directives if d.name == "remote"]
    if not lines:
        problems.append(Problem(src, "no 'remote' directive: the bundle must name the MCS "
                                     "to connect to"))
    for d in lines:
        where = f"{src}:{d.line}"
        host = d.args[0] if d.args else ""
        port = d.args[1] if len(d.args) > 1 else default_port
        proto = d.args[2] if len(d.args) > 2 else default_proto
        bad = False
        if not host.strip():
            problems.append(Problem(where, "remote: the host is empty"))
            bad = True
        elif not _is_host(host):
            problems.append(Problem(where, f"remote: '{host}' is not a host name or an IP "
                                           "address"))
            bad = True
        if _port(port) is None:
            problems.append(Problem(where, f"remote: port '{port}' is not a number from 1 "
                                           "to 65535"))
            bad = True
        if proto not in PROTOS:
            problems.append(Problem(where, f"remote: protocol '{proto}' is not allowed "
                                           f"(allowed: {', '.join(PROTOS)})"))
            bad = True
        if not bad:
            remotes.append(Remote(host, int(port), proto))
    return remotes


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return bool(_HOST_RE.match(host)) and not host.replace(".", "").isdigit()


def _material(upload: Upload, at: dict[str, Directive],
              problems: list[Problem]) -> PemMaterial | None:
    """The CA, certificate, key and TLS key, inline or from the upload's other files."""
    found: dict[str, tuple[str, bytes]] = {}
    src = upload.source
    for what in MATERIAL:
        d = at.get(what)
        if d is None:
            if what in ("ca", "cert", "key"):
                problems.append(Problem(src, f"the {_TITLES[what]} is missing (a '{what}' "
                                             f"file or an inline <{what}> block)"))
            continue
        where = f"{src}:{d.line}"
        if d.inline is not None:
            found[what] = (f"{where}: <{what}>", d.inline.encode())
            continue
        ref = d.args[0] if d.args else ""
        if not ref or ref == "[inline]":
            problems.append(Problem(where, f"'{what}' names no file"))
            continue
        hit = upload.find(ref)
        if hit is None:
            where_to_look = "in the archive" if upload.archive else "next to the configuration"
            problems.append(Problem(where, f"{what}: the file '{ref}' is not {where_to_look} "
                                           "(upload the zip or tar bundle from MCS, or inline "
                                           "it)"))
            continue
        found[what] = (f"{where}: {what} {ref}", hit[1])
    if not all(k in found for k in ("ca", "cert", "key")):
        return None
    direction = _key_direction(at)
    return PemMaterial(ca=found["ca"], cert=found["cert"], key=found["key"],
                       tls_auth=found.get("tls-auth"), tls_crypt=found.get("tls-crypt"),
                       key_direction=direction)


_TITLES = {"ca": "CA certificate", "cert": "client certificate", "key": "client private key"}


def _key_direction(at: dict[str, Directive]) -> str | None:
    tls_auth = at.get("tls-auth")
    if tls_auth is not None and tls_auth.inline is None and len(tls_auth.args) > 1:
        return tls_auth.args[1]
    kd = at.get("key-direction")
    return kd.args[0] if kd and kd.args else None


def _render(upload: Upload, remotes: list[Remote], kept: list[Directive],
            material: PemMaterial, ignored: list[str]) -> Bundle:
    files = {f"{MCS_CERT_DIR}/{MATERIAL[k]}": v[1] for k, v in (
        ("ca", material.ca), ("cert", material.cert), ("key", material.key),
        ("tls-auth", material.tls_auth), ("tls-crypt", material.tls_crypt)) if v is not None}
    lines = [
        "# MCS client (OpenVPN), written by voxnode-agent from the uploaded bundle",
        f"# ({upload.source}). Do not edit: upload a new bundle with `voxnode mcs upload`.",
        "client",
        f"dev {MCS_TUN_DEV}",
        "dev-type tun",
        *(f"remote {quote(r.host)} {r.port} {r.proto}" for r in remotes),
        f"ca {MCS_CERT_DIR}/{MATERIAL['ca']}",
        f"cert {MCS_CERT_DIR}/{MATERIAL['cert']}",
        f"key {MCS_CERT_DIR}/{MATERIAL['key']}",
    ]
    if material.tls_auth is not None:
        direction = f" {material.key_direction}" if material.key_direction else ""
        lines.append(f"tls-auth {MCS_CERT_DIR}/{MATERIAL['tls-auth']}{direction}")
    if material.tls_crypt is not None:
        lines.append(f"tls-crypt {MCS_CERT_DIR}/{MATERIAL['tls-crypt']}")
    lines += [" ".join([d.name, *map(quote, d.args)]) for d in kept if d.name != "client"]
    lines += ["script-security 1", f"management {MCS_MANAGEMENT_SOCKET} unix"]
    summary = {
        "source": upload.archive or upload.source,
        "remotes": [{"host": r.host, "port": r.port, "proto": r.proto} for r in remotes],
        "remote": str(remotes[0]),
        **material.summary,
        "tls": "tls-crypt" if material.tls_crypt else "tls-auth" if material.tls_auth
        else "none",
        "ignored": ignored,
    }
    return Bundle("\n".join(lines) + "\n", files, summary, ignored)
