"""The typed desired-state document (schema version 1).

Only shapes and field-level rules live here; rules that relate several fields are in
``agent.state.rules`` so that every problem of a document is reported at once.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    StrictBool,
)
from pydantic_core import PydanticCustomError

SCHEMA_VERSION = 2

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_HOSTNAME_RE = re.compile(rf"^{_LABEL}$")
_DOMAIN_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})+$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

_RFC1918 = (
    ipaddress.ip_network("10.0.0.0/8"),
    ipaddress.ip_network("172.16.0.0/12"),
    ipaddress.ip_network("192.168.0.0/16"),
    ipaddress.ip_network("100.64.0.0/10"),
)


def _need_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError(
            "voxnode", "must be a string ({what})", {"what": what}
        )
    return value.strip()


def _parse_cidr(value: Any) -> IPInterface:
    text = _need_str(value, "an address with prefix length, like 10.0.0.11/24")
    if "/" not in text:
        raise PydanticCustomError(
            "voxnode",
            "'{value}' has no prefix length (expected CIDR like 10.0.0.11/24)",
            {"value": text},
        )
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise PydanticCustomError(
            "voxnode",
            "'{value}' is not a valid address (expected CIDR like 10.0.0.11/24)",
            {"value": text},
        ) from None
    if iface.ip == iface.network.network_address and iface.network.prefixlen < (
        iface.max_prefixlen - 1
    ):
        raise PydanticCustomError(
            "voxnode",
            "'{value}' is the network address of its subnet, not a host address",
            {"value": text},
        )
    if iface.version == 4 and iface.network.prefixlen < 31 and (
        iface.ip == iface.network.broadcast_address
    ):
        raise PydanticCustomError(
            "voxnode",
            "'{value}' is the broadcast address of its subnet, not a host address",
            {"value": text},
        )
    _reject_special(iface.ip, text)
    return iface


def _reject_special(ip: IPAddress, text: str) -> None:
    for flag, name in (
        (ip.is_unspecified, "unspecified"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_link_local, "link-local (assigned automatically)"),
    ):
        if flag:
            raise PydanticCustomError(
                "voxnode", "'{value}' is {name}; give a unicast host address",
                {"value": text, "name": name},
            )


def _parse_ip(value: Any) -> IPAddress:
    text = _need_str(value, "an IP address like 10.0.0.1")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise PydanticCustomError(
            "voxnode",
            "'{value}' is not a valid IP address (expected e.g. 10.0.0.1 or 2001:db8::1)",
            {"value": text},
        ) from None
    _reject_special(ip, text)
    return ip


def _parse_public_ip(value: Any) -> IPAddress:
    ip = _parse_ip(value)
    if any(ip in net for net in _RFC1918):
        raise PydanticCustomError(
            "voxnode",
            "'{value}' is a private address; public_ip is the address the internet "
            "reaches the node at (NAT 1:1)",
            {"value": str(ip)},
        )
    return ip


def _parse_hostname(value: Any) -> str:
    text = _need_str(value, "a host name like pbx1")
    if not _HOSTNAME_RE.match(text):
        raise PydanticCustomError(
            "voxnode",
            "'{value}' is not a valid host name (letters, digits and '-', 1-63 "
            "characters, no dots; put the domain in network.domain)",
            {"value": text},
        )
    return text.lower()


def _parse_domain(value: Any) -> str:
    text = _need_str(value, "a DNS name like pbx.example.com").rstrip(".")
    if len(text) > 253 or not _DOMAIN_RE.match(text) or text.rsplit(".", 1)[-1].isdigit():
        raise PydanticCustomError(
            "voxnode",
            "'{value}' is not a valid DNS name (expected e.g. pbx.example.com)",
            {"value": text},
        )
    return text.lower()


def _parse_host_or_ip(value: Any) -> str:
    text = _need_str(value, "a host name or IP address")
    try:
        return str(_parse_ip(text))
    except PydanticCustomError:
        pass
    if _HOSTNAME_RE.match(text) or _DOMAIN_RE.match(text.rstrip(".")):
        return text.rstrip(".").lower()
    raise PydanticCustomError(
        "voxnode",
        "'{value}' is neither an IP address nor a DNS name",
        {"value": text},
    )


def _parse_ifname(value: Any) -> str:
    text = _need_str(value, "an interface name like eth0")
    if not _IFNAME_RE.match(text) or text in (".", ".."):
        raise PydanticCustomError(
            "voxnode",
            "'{value}' is not a valid interface name (1-15 characters: letters, digits, "
            "'_', '.', '-')",
            {"value": text},
        )
    return text


Cidr = Annotated[IPInterface, PlainValidator(_parse_cidr), PlainSerializer(str)]
IP = Annotated[IPAddress, PlainValidator(_parse_ip), PlainSerializer(str)]
PublicIP = Annotated[IPAddress, PlainValidator(_parse_public_ip), PlainSerializer(str)]
Hostname = Annotated[str, PlainValidator(_parse_hostname)]
DomainName = Annotated[str, PlainValidator(_parse_domain)]
HostOrIP = Annotated[str, PlainValidator(_parse_host_or_ip)]
IfName = Annotated[str, PlainValidator(_parse_ifname)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InterfaceConfig(Strict):
    """One physical interface. Static addresses are applied at runtime and persisted."""

    addresses: list[Cidr] = Field(default_factory=list)
    dhcp: StrictBool = False
    mtu: Annotated[int, Field(strict=True, ge=576, le=9216)] | None = None


class NetworkConfig(Strict):
    hostname: Hostname
    domain: DomainName | None = None
    public_ip: PublicIP | None = None
    interfaces: dict[IfName, InterfaceConfig] = Field(min_length=1)
    gateway: IP | None = None
    dns: list[IP] = Field(default_factory=list, max_length=3)
    search: list[DomainName] = Field(default_factory=list, max_length=6)
    ntp: list[HostOrIP] = Field(default_factory=list)


class WorkingMode(StrEnum):
    STANDARD = "standard"
    PURE_CLOUD = "pure-cloud"


class SharedIP(Strict):
    """A node IP: held by the master on ``interface`` (labelled ``<if>:vip``)."""

    interface: IfName
    address: Cidr
    primary: StrictBool = False


class HAProfile(StrEnum):
    """Failure-detection timing: ``standard`` (~1 s takeover), ``fast`` (~0.3 s)."""

    STANDARD = "standard"
    FAST = "fast"


class HAArbiter(Strict):
    """A third machine running ``voxnode-arbiter``: grants one node at a time the lease that
    a takeover without the peer needs (arbitrates a cut between just the two nodes)."""

    address: IP
    port: Annotated[int, Field(strict=True, ge=1, le=65535)] = 7412


def _parse_abs_path(value: Any) -> str:
    text = _need_str(value, "an absolute path like /etc/voxnode/vendor.pub")
    if not text.startswith("/") or "/../" in f"{text}/" or "\0" in text:
        raise PydanticCustomError(
            "voxnode",
            "'{value}' is not an absolute path (e.g. /etc/voxnode/vendor.pub)",
            {"value": text},
        )
    return text


def _parse_dir_path(value: Any) -> str:
    """An absolute directory path in its plain form: no ``..``, ``.``, doubled or trailing
    slashes (``/var/spool/asterisk/monitor``)."""
    text = _need_str(value, "an absolute directory path like /var/spool/asterisk/monitor")
    parts = text.split("/")
    plain = (text.startswith("/") and len(text) > 1 and not text.endswith("/")
             and all(p not in ("", ".", "..") for p in parts[1:]))
    if not plain or len(text) > 1024 or any(c in text for c in "\0\n\r\t"):
        raise PydanticCustomError(
            "voxnode",
            "'{value}' is not an absolute directory path in plain form (e.g. "
            "/var/spool/asterisk/monitor: no .., no doubled or trailing /)",
            {"value": text[:200]},
        )
    return text


DirPath = Annotated[str, PlainValidator(_parse_dir_path)]
DEFAULT_DB_SOCKET = "/run/mysqld/mysqld.sock"


class DatabaseEngine(StrEnum):
    MARIADB = "mariadb"
    NONE = "none"


class ReplicationDatabase(Strict):
    """The PBX's database server, replicated master → slave (``engine: none``: not)."""

    engine: DatabaseEngine = DatabaseEngine.MARIADB
    # where the agent reaches the local server (unix socket, as root)
    socket: Annotated[str, PlainValidator(_parse_abs_path)] = DEFAULT_DB_SOCKET
    # where the peer's replica connects (the management address)
    port: Annotated[int, Field(strict=True, ge=1, le=65535)] = 3306


class ReplicationConfig(Strict):
    """What the slave keeps of the master (requirements §5): the database and file paths,
    the bandwidth the file sync and full sync may use, the lag that puts failover at risk."""

    bandwidth_kb: Annotated[int, Field(strict=True, ge=1, le=10_000_000)] = 2048
    database: ReplicationDatabase = Field(default_factory=ReplicationDatabase)
    paths: list[DirPath] = Field(default_factory=list, max_length=32)
    max_lag_s: Annotated[float, Field(strict=True, ge=0.1, le=3600)] = 5.0


class HAConfig(Strict):
    """Fault tolerance: the active/standby pair (requirements §5)."""

    enabled: StrictBool = False
    peer: IP | None = None
    management_ip: IP | None = None
    replication: ReplicationConfig = Field(default_factory=ReplicationConfig)
    shared_ips: list[SharedIP] = Field(default_factory=list)
    witnesses: list[IP] = Field(default_factory=list)
    cloud: StrictBool = False
    profile: HAProfile = HAProfile.STANDARD
    # a privileged port by default (694, Linux-HA's "ha-cluster"): no local unprivileged
    # process can bind it first and keep the pair from starting
    heartbeat_port: Annotated[int, Field(strict=True, ge=1, le=65535)] = 694
    arbiter: HAArbiter | None = None


DEFAULT_LICENCE_SERVER_URL = "https://license.voxnode.example"
DEFAULT_VENDOR_PUBLIC_KEY = "/etc/voxnode/vendor.pub"


def _parse_server_url(value: Any) -> str:
    text = _need_str(value, "a URL like https://license.example.com")
    scheme, sep, rest = text.partition("://")
    host = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if not sep or scheme.lower() not in ("http", "https") or not host or any(
        c.isspace() for c in text
    ):
        raise PydanticCustomError(
            "voxnode",
            "'{value}' is not an http:// or https:// URL (e.g. https://license.example.com)",
            {"value": text},
        )
    return text.rstrip("/")


class LicenceConfig(Strict):
    """Where the Security Update client finds the vendor (requirements §2).

    ``server_url``: the vendor's licence server (HTTPS; plain HTTP only behind a proxy or
    in a lab). ``public_key_file``: the vendor's Ed25519 public key (PEM) that licences are
    verified with, on the node's file system.
    """

    server_url: Annotated[str, PlainValidator(_parse_server_url)] = DEFAULT_LICENCE_SERVER_URL
    public_key_file: Annotated[str, PlainValidator(_parse_abs_path)] = DEFAULT_VENDOR_PUBLIC_KEY


class DesiredState(Strict):
    """The whole desired state of a node."""

    schema_version: Literal[2]
    network: NetworkConfig
    mode: WorkingMode = WorkingMode.STANDARD
    ha: HAConfig = Field(default_factory=HAConfig)
    # the document key, and so this field, keeps the spelling `license` (code reads
    # licence_settings); None: the appliance defaults (LicenceConfig())
    license: LicenceConfig | None = None

    @property
    def licence_settings(self) -> LicenceConfig:
        return self.license if self.license is not None else LicenceConfig()

    def to_document(self) -> dict[str, Any]:
        """The JSON-able form, as written to disk and sent on the wire."""
        return self.model_dump(mode="json", exclude_none=True)
