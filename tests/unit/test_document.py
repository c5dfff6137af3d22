"""Validation of the desired-state document: good documents, and every bad input's text."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import InvalidInput
from agent.state.document import gateway_interface, load_document, validate_document
from agent.state.model import WorkingMode

FULL = (Path(__file__).parent / "data" / "full.yaml").read_text()


def base(**network: object) -> dict[str, object]:
    net: dict[str, object] = {
        "hostname": "pbx1",
        "interfaces": {"eth0": {"addresses": ["10.0.0.11/24"]}},
        "gateway": "10.0.0.1",
    }
    net.update(network)
    return {"schema_version": 1, "network": net}


def problems_of(doc: object) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        validate_document(doc)
    return [str(p) for p in info.value.problems]


def test_the_documented_example_is_valid() -> None:
    state = load_document(FULL, "full.yaml")
    assert state.network.hostname == "pbx1"
    assert state.mode is WorkingMode.STANDARD
    assert str(state.network.interfaces["eth0"].addresses[0]) == "10.0.0.11/24"
    assert gateway_interface(state) == "eth0"


def test_round_trip_through_the_wire_form_is_lossless() -> None:
    state = load_document(FULL)
    assert validate_document(state.to_document()) == state


def test_defaults_and_normalisation() -> None:
    state = validate_document(base(hostname="PBX1", search=["Example.COM."]))
    assert state.network.hostname == "pbx1"
    assert state.network.search == ["example.com"]
    assert state.mode is WorkingMode.STANDARD
    assert state.network.interfaces["eth0"].dhcp is False


def test_pure_cloud_with_domain_and_public_ip_is_valid() -> None:
    doc = base(domain="pbx.example.com", public_ip="203.0.113.10")
    doc["mode"] = "pure-cloud"
    assert validate_document(doc).mode is WorkingMode.PURE_CLOUD


def test_dhcp_only_interface_without_gateway_is_valid() -> None:
    doc = {"schema_version": 1,
           "network": {"hostname": "pbx1", "interfaces": {"eth0": {"dhcp": True}}}}
    assert validate_document(doc).network.interfaces["eth0"].dhcp is True


BAD_TEXT = [
    ("malformed YAML", "network: [1, 2\n",
     ["bad.yaml:2:1: while parsing a flow sequence, expected ',' or ']', but got "
      "'<stream end>'"]),
    ("tab indentation", "network:\n\thostname: x\n",
     ["bad.yaml:2:1: while scanning for the next token, found character '\\t' that cannot "
      "start any token"]),
    ("duplicate key", "schema_version: 1\nschema_version: 1\n",
     ["bad.yaml:2:1: duplicate key 'schema_version'"]),
    ("empty document", "", [": the document is empty; expected a mapping of sections"]),
    ("a list, not a mapping", "- a\n",
     [": the document is a list; expected a mapping of sections"]),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD_TEXT, ids=[c[0] for c in BAD_TEXT])
def test_bad_text(case: str, text: str, expected: list[str]) -> None:
    with pytest.raises(InvalidInput) as info:
        load_document(text, "bad.yaml")
    got = [str(p) if p.path else f": {p.message}" for p in info.value.problems]
    assert got == expected


BAD_DOCS = [
    ("unknown top-level key", {**base(), "netwrk": {}},
     ["netwrk: unknown key (allowed: schema_version, network, mode, ha, license)"]),
    ("unknown network key", base(hostnme="x"),
     ["network.hostnme: unknown key (allowed: hostname, domain, public_ip, interfaces, "
      "gateway, dns, search, ntp)"]),
    ("unknown interface key", base(interfaces={"eth0": {"address": ["10.0.0.11/24"]}}),
     ["network.interfaces.eth0.address: unknown key (allowed: addresses, dhcp, mtu)"]),
    ("missing hostname", {"schema_version": 1,
                          "network": {"interfaces": {"eth0": {"dhcp": True}}}},
     ["network.hostname: required"]),
    ("missing schema version", {"network": {}},
     ["schema_version: required (this agent writes 2)"]),
    ("newer schema", {"schema_version": 3, "network": {}},
     ["schema_version: 3 is newer than this agent understands (2); update voxnode first"]),
    ("schema version as text", {"schema_version": "1", "network": {}},
     ["schema_version: must be a whole number like 2"]),
    ("bad CIDR", base(interfaces={"eth0": {"addresses": ["10.0.0.300/24"]}}),
     ["network.interfaces.eth0.addresses[0]: '10.0.0.300/24' is not a valid address "
      "(expected CIDR like 10.0.0.11/24)"]),
    ("address without prefix", base(interfaces={"eth0": {"addresses": ["10.0.0.11"]}}),
     ["network.interfaces.eth0.addresses[0]: '10.0.0.11' has no prefix length (expected "
      "CIDR like 10.0.0.11/24)"]),
    ("network address", base(interfaces={"eth0": {"addresses": ["10.0.0.0/24"]}}),
     ["network.interfaces.eth0.addresses[0]: '10.0.0.0/24' is the network address of its "
      "subnet, not a host address"]),
    ("broadcast address", base(interfaces={"eth0": {"addresses": ["10.0.0.255/24"]}}),
     ["network.interfaces.eth0.addresses[0]: '10.0.0.255/24' is the broadcast address of "
      "its subnet, not a host address"]),
    ("loopback address", base(interfaces={"eth0": {"addresses": ["127.0.0.2/8"]}}),
     ["network.interfaces.eth0.addresses[0]: '127.0.0.2/8' is a loopback address; give a "
      "unicast host address"]),
    ("duplicate address on one interface",
     base(interfaces={"eth0": {"addresses": ["10.0.0.11/24", "10.0.0.11/24"]}}),
     ["network.interfaces.eth0.addresses[1]: 10.0.0.11 is already used by "
      "network.interfaces.eth0.addresses[0]"]),
    ("duplicate address across interfaces",
     base(interfaces={"eth0": {"addresses": ["10.0.0.11/24"]},
                      "eth1": {"addresses": ["10.0.0.11/16"]}}),
     ["network.interfaces.eth1.addresses[0]: 10.0.0.11 is already used by "
      "network.interfaces.eth0.addresses[0]"]),
    ("same subnet on two interfaces",
     base(interfaces={"eth0": {"addresses": ["10.0.0.11/24"]},
                      "eth1": {"addresses": ["10.0.0.12/24"]}}),
     ["network.interfaces.eth1.addresses[0]: subnet 10.0.0.0/24 is also on interface eth0; "
      "a subnet may be on one interface only"]),
    ("gateway outside every subnet", base(gateway="10.9.0.1"),
     ["network.gateway: 10.9.0.1 is outside every interface subnet (10.0.0.0/24 on eth0)"]),
    ("gateway is our own address", base(gateway="10.0.0.11"),
     ["network.gateway: 10.0.0.11 is this node's own address "
      "(network.interfaces.eth0.addresses[0])"]),
    ("gateway with DHCP only", base(interfaces={"eth0": {"dhcp": True}}),
     ["network.gateway: set, but no interface has a static address; with DHCP the gateway "
      "comes from the DHCP server (remove it)"]),
    ("bad gateway", base(gateway="10.0.0"),
     ["network.gateway: '10.0.0' is not a valid IP address (expected e.g. 10.0.0.1 or "
      "2001:db8::1)"]),
    ("pure-cloud without domain and public ip", {**base(), "mode": "pure-cloud"},
     ["network.domain: required in pure-cloud mode (the public DNS name that resolves to "
      "network.public_ip)",
      "network.public_ip: required in pure-cloud mode (the static public address, NAT 1:1)"]),
    ("private public_ip", base(public_ip="192.168.1.10"),
     ["network.public_ip: '192.168.1.10' is a private address; public_ip is the address the "
      "internet reaches the node at (NAT 1:1)"]),
    ("bad hostname", base(hostname="pbx1.example.com"),
     ["network.hostname: 'pbx1.example.com' is not a valid host name (letters, digits and "
      "'-', 1-63 characters, no dots; put the domain in network.domain)"]),
    ("hostname not a string", base(hostname=42),
     ["network.hostname: must be a string (a host name like pbx1)"]),
    ("bad domain", base(domain="-bad-.com"),
     ["network.domain: '-bad-.com' is not a valid DNS name (expected e.g. pbx.example.com)"]),
    ("unknown mode", {**base(), "mode": "cloud"},
     ["mode: 'cloud' is not a working mode (allowed: standard, pure-cloud)"]),
    ("YAML boolean as mode", {**base(), "mode": False},
     ["mode: false is not a working mode (allowed: standard, pure-cloud; YAML reads unquoted "
      "on/off/yes/no as true/false)"]),
    ("dhcp not a boolean", base(interfaces={"eth0": {"dhcp": "maybe"}}),
     ["network.interfaces.eth0.dhcp: must be true or false"]),
    ("mtu out of range", base(interfaces={"eth0": {"addresses": ["10.0.0.11/24"], "mtu": 20}}),
     ["network.interfaces.eth0.mtu: 20 is out of range (576-9216)"]),
    ("bad interface name", base(interfaces={"bad/if": {"dhcp": True}}),
     ["network.interfaces.bad/if: bad key: 'bad/if' is not a valid interface name (1-15 "
      "characters: letters, digits, '_', '.', '-')"]),
    ("no interfaces", base(interfaces={}), ["network.interfaces: at least one interface is "
                                           "required"]),
    ("too many DNS servers", base(dns=["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]),
     ["network.dns: at most 3 entries"]),
    ("bad NTP server", base(ntp=["not a host"]),
     ["network.ntp[0]: 'not a host' is neither an IP address nor a DNS name"]),
]


@pytest.mark.parametrize(("case", "doc", "expected"), BAD_DOCS, ids=[c[0] for c in BAD_DOCS])
def test_bad_documents_report_every_problem(case: str, doc: object, expected: list[str]) -> None:
    assert problems_of(doc) == sorted(expected)


def test_several_problems_are_reported_at_once() -> None:
    doc = base(hostnme="x", gateway="10.0.0", interfaces={"eth0": {"addresses": ["x/24"]}})
    found = problems_of(doc)
    assert [p.split(":")[0] for p in found] == [
        "network.gateway", "network.hostnme", "network.interfaces.eth0.addresses[0]"
    ]


def test_rules_across_fields_run_once_fields_are_valid() -> None:
    with pytest.raises(InvalidInput) as info:
        validate_document(base(hostnme="x", gateway="10.9.0.1"))
    assert "rules that relate several fields" in info.value.remedy
    assert [p.path for p in info.value.problems] == ["network.hostnme"]


def ha_doc(**ha: object) -> dict[str, object]:
    doc = base()
    doc["ha"] = {"enabled": True, "peer": "10.0.0.12",
                 "shared_ips": [{"interface": "eth0", "address": "10.0.0.10/24",
                                 "primary": True}], **ha}
    return doc


def test_ha_pair_is_valid_and_defaults_follow_the_network() -> None:
    from ha.config import ha_management_ip, ha_witnesses

    state = validate_document(ha_doc())
    assert str(ha_management_ip(state)) == "10.0.0.11"
    assert [str(w) for w in ha_witnesses(state)] == ["10.0.0.1"]
    assert state.ha.profile.value == "standard" and state.ha.heartbeat_port == 694


def test_disabled_ha_is_not_checked() -> None:
    doc = base()
    doc["ha"] = {"enabled": False, "peer": "10.9.9.9"}
    assert validate_document(doc).ha.enabled is False


BAD_HA = [
    ("no peer", {"peer": None},
     ["ha.peer: required when ha.enabled (the other node's address)"]),
    ("peer is us", {"peer": "10.0.0.11"}, ["ha.peer: 10.0.0.11 is this node's own address"]),
    ("peer off-link", {"peer": "10.5.0.12"},
     ["ha.peer: 10.5.0.12 is outside every interface subnet; the two nodes must share a LAN"]),
    ("node IP equals a node address",
     {"shared_ips": [{"interface": "eth0", "address": "10.0.0.11/24"}]},
     ["ha.shared_ips[0].address: 10.0.0.11 is this node's own address; the node IP must be a "
      "third address"]),
    ("node IP equals the peer", {"shared_ips": [{"interface": "eth0", "address": "10.0.0.12/24"}]},
     ["ha.shared_ips[0].address: 10.0.0.12 is the peer's address"]),
    ("node IP outside the subnet",
     {"shared_ips": [{"interface": "eth0", "address": "10.0.1.10/24"}]},
     ["ha.shared_ips[0].address: 10.0.1.10/24 is outside the subnets of eth0 (10.0.0.0/24)"]),
    ("node IP on an unknown interface",
     {"shared_ips": [{"interface": "eth1", "address": "10.0.0.10/24"}]},
     ["ha.shared_ips[0].interface: eth1 is not in network.interfaces"]),
    ("cloud with shared IPs", {"cloud": True},
     ["ha.shared_ips: must be empty with ha.cloud: a Pure Cloud pair has no shared IP (the "
      "cloud provider owns the address; switch by hand)"]),
    ("no node IP", {"shared_ips": []},
     ["ha.shared_ips: at least one node IP is required (or set ha.cloud for a Pure Cloud "
      "pair)"]),
    ("two primaries", {"shared_ips": [
        {"interface": "eth0", "address": "10.0.0.10/24", "primary": True},
        {"interface": "eth0", "address": "10.0.0.9/24", "primary": True}]},
     ["ha.shared_ips: only one node IP may be primary"]),
    ("witness is the peer", {"witnesses": ["10.0.0.12"]},
     ["ha.witnesses[0]: 10.0.0.12 is one of the pair's own addresses; a witness is a third "
      "device (e.g. the gateway)"]),
    ("witness off-link", {"witnesses": ["10.7.0.1"]},
     ["ha.witnesses[0]: 10.7.0.1 is outside every interface subnet (witnesses are probed with "
      "ARP)"]),
    ("management ip not ours", {"management_ip": "10.0.0.99"},
     ["ha.management_ip: 10.0.0.99 is not one of this node's static addresses"]),
    ("bad profile", {"profile": "turbo"},
     ["ha.profile: 'turbo' is not a profile (allowed: standard, fast)"]),
    ("bandwidth zero", {"replication": {"bandwidth_kb": 0}},
     ["ha.replication.bandwidth_kb: 0 is out of range (1-10000000 KiB/s)"]),
    ("bandwidth huge", {"replication": {"bandwidth_kb": 10**12}},
     ["ha.replication.bandwidth_kb: 1000000000000 is out of range (1-10000000 KiB/s)"]),
    ("lag limit zero", {"replication": {"max_lag_s": 0}},
     ["ha.replication.max_lag_s: 0 is out of range (0.1-3600 seconds)"]),
    ("unknown engine", {"replication": {"database": {"engine": "mongodb"}}},
     ["ha.replication.database.engine: 'mongodb' is not allowed (allowed: mariadb, none)"]),
    ("relative path", {"replication": {"paths": ["var/spool/x"]}},
     ["ha.replication.paths[0]: 'var/spool/x' is not an absolute directory path in plain "
      "form (e.g. /var/spool/asterisk/monitor: no .., no doubled or trailing /)"]),
    ("dot-dot path", {"replication": {"paths": ["/var/spool/asterisk/../../../etc"]}},
     ["ha.replication.paths[0]: '/var/spool/asterisk/../../../etc' is not an absolute "
      "directory path in plain form (e.g. /var/spool/asterisk/monitor: no .., no doubled "
      "or trailing /)"]),
    ("trailing slash", {"replication": {"paths": ["/srv/rec/"]}},
     ["ha.replication.paths[0]: '/srv/rec/' is not an absolute directory path in plain "
      "form (e.g. /var/spool/asterisk/monitor: no .., no doubled or trailing /)"]),
    ("path not text", {"replication": {"paths": [7]}},
     ["ha.replication.paths[0]: must be a string (an absolute directory path like "
      "/var/spool/asterisk/monitor)"]),
    ("too many paths", {"replication": {"paths": [f"/srv/p{i}" for i in range(33)]}},
     ["ha.replication.paths: at most 32 entries"]),
]


@pytest.mark.parametrize(("case", "ha", "expected"), BAD_HA, ids=[c[0] for c in BAD_HA])
def test_bad_ha_settings(case: str, ha: dict[str, object], expected: list[str]) -> None:
    doc = ha_doc(**ha)
    if ha.get("peer", "x") is None:
        del doc["ha"]["peer"]  # type: ignore[attr-defined]
    assert problems_of(doc) == sorted(expected)


def test_ha_without_any_witness() -> None:
    doc = ha_doc()
    del doc["network"]["gateway"]  # type: ignore[attr-defined]
    assert problems_of(doc) == [
        "ha.witnesses: none: set ha.witnesses or network.gateway (a slave takes over only "
        "while it reaches a witness)"
    ]


def test_pure_cloud_pair_must_be_cloud() -> None:
    doc = ha_doc()
    network: dict[str, object] = doc["network"]  # type: ignore[assignment]
    network.update(domain="pbx.example.com", public_ip="203.0.113.10")
    doc["mode"] = "pure-cloud"
    assert problems_of(doc) == [
        "ha.cloud: must be true in pure-cloud mode (the public address moves at the cloud "
        "provider, by hand)"
    ]


# --- ha.replication: the schema 1 key, the path rules ----------------------------------------


def test_schema_1_bandwidth_is_read_into_ha_replication() -> None:
    doc = ha_doc(replication_bandwidth_kb=512)
    assert doc["schema_version"] == 1
    state = validate_document(doc)
    assert state.ha.replication.bandwidth_kb == 512
    written = state.to_document()
    assert written["schema_version"] == 2
    assert written["ha"]["replication"]["bandwidth_kb"] == 512
    assert "replication_bandwidth_kb" not in written["ha"]
    assert validate_document(written) == state  # what is written reads back the same


def test_schema_1_bandwidth_out_of_range_is_reported_at_its_new_place() -> None:
    assert problems_of(ha_doc(replication_bandwidth_kb=0)) == [
        "ha.replication.bandwidth_kb: 0 is out of range (1-10000000 KiB/s)"]


def test_the_schema_1_key_is_unknown_in_schema_2() -> None:
    doc = ha_doc(replication_bandwidth_kb=100)
    doc["schema_version"] = 2
    assert problems_of(doc) == [
        "ha.replication_bandwidth_kb: unknown key (allowed: enabled, peer, management_ip, "
        "replication, shared_ips, witnesses, cloud, profile, heartbeat_port, arbiter)"]


@pytest.mark.parametrize(("paths", "expected"), [
    (["/var/spool/asterisk/monitor", "/var/spool/asterisk/voicemail", "/etc/asterisk"], []),
    (["/srv/rec", "/srv/rec/2026"],
     ["ha.replication.paths[1]: /srv/rec/2026 is inside /srv/rec (paths[0] and paths[1] "
      "overlap): list only /srv/rec"]),
    (["/srv/rec/2026", "/srv/rec"],
     ["ha.replication.paths[1]: /srv/rec/2026 is inside /srv/rec (paths[0] and paths[1] "
      "overlap): list only /srv/rec"]),
    (["/srv/rec", "/srv/rec"], ["ha.replication.paths[1]: /srv/rec is listed twice (paths[0])"]),
    (["/srv/recordings", "/srv/rec"], []),  # a shared prefix is not nesting
    (["/var/lib/voxnode/ha"],
     ["ha.replication.paths[0]: /var/lib/voxnode/ha holds or is inside the agent's state "
      "directory /var/lib/voxnode (each node keeps its own)"]),
    (["/var/lib/voxnode"],
     ["ha.replication.paths[0]: /var/lib/voxnode holds or is inside the agent's state "
      "directory /var/lib/voxnode (each node keeps its own)"]),
    (["/etc"],
     ["ha.replication.paths[0]: /etc is a system directory: replicate the application's own "
      "directories (e.g. /var/spool/asterisk/monitor), not the system's"]),
    (["/var/lib/mysql/pbx"],
     ["ha.replication.paths[0]: /var/lib/mysql/pbx is inside /var/lib/mysql: the database's "
      "data directory (the database is replicated by the server)"]),
    (["/proc/1"], ["ha.replication.paths[0]: /proc/1 is inside /proc: not a place for kept "
                   "data"]),
    (["/etc/voxnode/tls"], ["ha.replication.paths[0]: /etc/voxnode/tls is inside /etc/voxnode, "
                            "each node's own configuration (its keys, certificates, identity): "
                            "not replicated"]),
    (["/etc/my.cnf.d"], ["ha.replication.paths[0]: /etc/my.cnf.d is inside /etc/my.cnf.d, "
                         "each node's own configuration (its keys, certificates, identity): "
                         "not replicated"]),
    # sshd hands a forced command naming the path to a shell
    (["/srv/rec $(reboot)"], ["ha.replication.paths[0]: '/srv/rec $(reboot)' has characters a "
                              "replicated path cannot have (letters, digits and . _ + @ , = : "
                              "- / only: the sync's transfers name it in a command)"]),
    (["/srv/a;b"], ["ha.replication.paths[0]: '/srv/a;b' has characters a replicated path "
                    "cannot have (letters, digits and . _ + @ , = : - / only: the sync's "
                    "transfers name it in a command)"]),
])
def test_replication_path_rules(paths: list[str], expected: list[str]) -> None:
    doc = ha_doc(replication={"paths": paths})
    if not expected:
        assert validate_document(doc).ha.replication.paths == paths
        return
    assert problems_of(doc) == sorted(expected)


def _problems(text: str) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        load_document(text)
    return [str(p) for p in info.value.problems]


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    # nine aliases per level, eight levels: 9**8 = 43 million nodes once expanded
    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 9)
    ) + "mode: *a8\n"
    assert _problems(bomb) == [
        "<input>:1:5: anchors and aliases (&name, *name) are not accepted in a voxnode "
        "document: write the value out"]


def test_an_alias_alone_is_refused_at_its_place() -> None:
    text = "schema_version: 1\nnetwork:\n  hostname: *h\n"
    assert _problems(text) == [
        "<input>:3:13: anchors and aliases (&name, *name) are not accepted in a voxnode "
        "document: write the value out"]


def test_deep_nesting_and_a_huge_document_are_refused() -> None:
    deep = "mode: " + "[" * 5000 + "]" * 5000 + "\n"
    assert _problems(deep) == ["<input>:1:38: nested more than 32 levels deep"]
    huge = "# " + "x" * (1 << 20) + "\n"
    assert _problems(huge) == [
        f"<input>: {len(huge)} characters; a document has at most 1048576 (1 MiB)"]


@pytest.mark.parametrize(("text", "problem"), [
    ("? [a, b]\n: 1\n", "<input>:1:3: a key is a list; keys are plain names"),
    ("network: {? {a: 1} : 2}\n", "<input>:1:13: a key is a mapping; keys are plain names"),
    ("network:\n  interfaces: {[1]: 2}\n", "<input>:2:16: a key is a list; keys are plain names"),
])
def test_a_key_that_is_not_a_plain_name_is_a_problem_not_a_crash(text: str, problem: str) -> None:
    assert _problems(text) == [problem]
