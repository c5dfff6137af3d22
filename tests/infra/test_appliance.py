"""An installed node, checked from the outside with testinfra: the agent is active and
enabled, its commands run, its state, socket and rendered files carry the right owners and
modes, and the units its service catalogue wants are running.

The same checks hold on a lab node (Debian 12, systemd-nspawn) and on an installed
appliance (AlmaLinux 8); they branch on ``host.system_info`` only where the two differ
(the service catalogue: Kamailio in the lab, Asterisk on the appliance).

Targets::

    # a lab node (needs root and a running lab, `make lab`); custom backend, see labbackend.py
    .venv/bin/python -m pytest tests/infra --hosts=lab://node1,lab://node2
    # an installed appliance or VM over SSH (testinfra's ssh backend; key-based login)
    .venv/bin/python -m pytest tests/infra --hosts=ssh://root@10.0.0.21
    .venv/bin/python -m pytest tests/infra --hosts='ssh://admin@10.0.0.21?sudo=true'

Without ``--hosts`` the suite is skipped (it would otherwise check the development
machine). ``make test`` runs these checks against both lab nodes through
``tests/node/test_infra_lab.py``.

Every check takes only ``host``, so other suites can call them with any testinfra host.
"""

from __future__ import annotations

import json
import re
from typing import Any

AGENT_UNIT = "voxnode-agent.service"
COMMANDS = ("/usr/bin/voxnode", "/usr/bin/voxnode-agent")
STATE_DIR = "/var/lib/voxnode"
RUN_DIR = "/run/voxnode"
SOCKET = "/run/voxnode/agent.sock"
CONFIG_DIR = "/etc/voxnode"
NM_KEYFILE_DIR = "/etc/NetworkManager/system-connections"
TURN_SECRET = "/etc/voxnode/secrets/turn.secret"
COTURN_CONF = "/etc/coturn/turnserver.conf"
WORKING_MODE_JSON = "/etc/voxnode/working-mode.json"


def _json(host: Any, *argv: str) -> Any:
    out = host.check_output(" ".join(["%s"] * len(argv)), *argv)
    return json.loads(out)


def is_lab(host: Any) -> bool:
    """Lab nodes are Debian; the appliance is AlmaLinux (or another RHEL 8 rebuild)."""
    return bool(host.system_info.distribution == "debian")


def expected_catalogue(host: Any) -> tuple[str, str]:
    """(catalogue name, PBX engine unit) the agent must use on this kind of node."""
    return ("lab", "kamailio.service") if is_lab(host) else ("appliance", "asterisk.service")


def test_agent_service_is_running_and_enabled(host: Any) -> None:
    agent = host.service(AGENT_UNIT)
    assert agent.is_running
    assert agent.is_enabled
    props = agent.systemd_properties
    assert props["ActiveState"] == "active"
    assert props["SubState"] == "running"
    assert props["LoadState"] == "loaded"


def test_agent_unit_is_notify_with_a_watchdog(host: Any) -> None:
    props = host.service(AGENT_UNIT).systemd_properties
    assert props["Type"] == "notify"
    assert props["WatchdogUSec"] not in ("0", "infinity", "")
    unit_file = host.file(props["FragmentPath"])
    assert unit_file.is_file
    assert unit_file.user == "root"
    assert not unit_file.mode & 0o022, f"{unit_file.path} is writable by others: {unit_file.mode:o}"
    text = unit_file.content_string
    assert re.search(r"^Type=notify$", text, re.M)
    assert re.search(r"^WatchdogSec=\S+", text, re.M)
    assert re.search(r"^WantedBy=multi-user\.target$", text, re.M)


def test_commands_are_installed_and_run(host: Any) -> None:
    versions = []
    for path in COMMANDS:
        binary = host.file(path)
        assert binary.exists, f"{path} is missing"
        assert host.run_test("test -x %s", path).rc == 0, f"{path} is not executable"
        out = host.check_output("%s --version", path)
        name = path.rsplit("/", 1)[1]
        match = re.fullmatch(rf"{re.escape(name)} (\d+\.\d+\.\d+\S*)", out.strip())
        assert match, f"{path} --version said {out!r}"
        versions.append(match.group(1))
    assert len(set(versions)) == 1, f"CLI and agent versions differ: {versions}"


def test_state_and_runtime_directories_are_private(host: Any) -> None:
    for path in (STATE_DIR, RUN_DIR):
        d = host.file(path)
        assert d.is_directory, f"{path} is missing"
        assert (d.user, d.group, d.mode) == ("root", "root", 0o750), (
            f"{path}: {d.user}:{d.group} {d.mode:o}")


def test_api_socket_is_a_socket_for_root_and_its_group_only(host: Any) -> None:
    sock = host.file(SOCKET)
    assert sock.is_socket
    assert sock.user == "root"
    assert sock.mode == 0o660, f"{SOCKET} mode {sock.mode:o}"


def test_status_answers_with_a_committed_revision_and_converge_ok(host: Any) -> None:
    status = _json(host, "voxnode", "--json", "status")
    assert status["revision"] is not None, "no committed revision"
    assert isinstance(status["revision"]["revision"], int)
    assert status["revision"]["revision"] >= 1
    assert status["converge"]["ok"] is True, status["converge"]
    assert status["state_dir"] == STATE_DIR
    assert status["root"] == "/"
    version = host.check_output("voxnode --version").split()[-1]
    assert status["version"] == version
    assert status["mode"] in ("standard", "pure-cloud")


def test_nothing_under_etc_voxnode_is_world_writable_or_foreign(host: Any) -> None:
    assert host.file(CONFIG_DIR).is_directory
    writable = host.check_output("find %s -perm -0002 ! -type l", CONFIG_DIR)
    assert writable == "", f"world-writable: {writable}"
    foreign = host.check_output("find %s ! -user root", CONFIG_DIR)
    assert foreign == "", f"not owned by root: {foreign}"


def test_network_keyfiles_exist_per_interface_and_are_private(host: Any) -> None:
    """One NetworkManager keyfile per configured interface, 0600 root (they may hold
    secrets, and NetworkManager ignores keyfiles others can read)."""
    document = _json(host, "voxnode", "--json", "config", "show")["document"]
    interfaces = sorted(document["network"]["interfaces"])
    assert interfaces, "the committed document configures no interface"
    keydir = host.file(NM_KEYFILE_DIR)
    assert keydir.is_directory
    assert keydir.user == "root"
    assert not keydir.mode & 0o002
    rendered = host.check_output(
        "find %s -maxdepth 1 -name 'voxnode-*.nmconnection'", NM_KEYFILE_DIR).split()
    assert sorted(rendered) == [f"{NM_KEYFILE_DIR}/voxnode-{i}.nmconnection"
                                for i in interfaces]
    for path in rendered:
        f = host.file(path)
        assert f.is_file
        assert (f.user, f.group, f.mode) == ("root", "root", 0o600), (
            f"{path}: {f.user}:{f.group} {f.mode:o}")


def test_turn_secret_and_coturn_config_follow_the_mode(host: Any) -> None:
    mode = json.loads(host.file(WORKING_MODE_JSON).content_string)
    assert mode["mode"] == _json(host, "voxnode", "--json", "status")["mode"]
    secret = host.file(TURN_SECRET)
    coturn = host.file(COTURN_CONF)
    if mode["mode"] == "pure-cloud":
        assert secret.is_file, "pure-cloud needs the TURN shared secret"
        assert coturn.is_file, "pure-cloud runs the co-resident TURN server"
    else:
        assert not coturn.exists, f"{COTURN_CONF} is rendered only in pure-cloud"
    if secret.exists:  # kept after a switch back to standard
        assert (secret.user, secret.mode) == ("root", 0o600), f"{TURN_SECRET}: {secret.mode:o}"
    if coturn.exists:
        assert coturn.user == "root"
        assert coturn.mode == 0o640, f"{COTURN_CONF}: {coturn.mode:o}"


def test_wanted_units_run_and_the_others_do_not(host: Any) -> None:
    services = _json(host, "voxnode", "services", "list", "--json")
    catalogue, engine_unit = expected_catalogue(host)
    assert services["catalogue"] == catalogue
    units = {u["name"]: u for u in services["units"]}
    engine = units["pbx-engine"]
    assert engine["unit"] == engine_unit
    for unit in units.values():
        # systemd itself, not the agent's report, is the judge
        running = host.service(unit["unit"]).is_running
        if unit["wanted"]:
            assert running, f"{unit['unit']} is wanted ({unit['reason']}) but not active"
            assert unit["drift"] is None, unit["drift"]
        else:
            assert not running, f"{unit['unit']} runs but is not wanted ({unit['reason']})"
