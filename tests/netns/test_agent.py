"""The real voxnode-agent in a network namespace, driven through the voxnode CLI.

Each test gets an agent started with ``ip netns exec`` in a fresh namespace that has a
veth pair eth0/peer0 (see the ``agent`` fixture). What the agent did to the machine is
read back with ``ip -j`` and from the files under its ``--root``, never through the
agent's own readers. Only 10.x addresses are put on links.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.cli.client import Client
from agent.errors import VoxnodeError
from agent.state.store import Store
from tests.netns.conftest import Agent, Netns

pytestmark = pytest.mark.root

KEYFILE = "etc/NetworkManager/system-connections/voxnode-eth0.nmconnection"


# --- documents -------------------------------------------------------------------------------


def document(
    *addresses: str, hostname: str = "pbx1", gateway: str | None = "10.0.0.1", **extra: Any
) -> dict[str, Any]:
    network: dict[str, Any] = {
        "hostname": hostname,
        "interfaces": {"eth0": {"addresses": list(addresses or ("10.0.0.11/24",))}},
        "dns": ["10.0.0.2"],
    }
    if gateway is not None:
        network["gateway"] = gateway
    mode = extra.pop("mode", "standard")
    network.update(extra)
    return {"schema_version": 1, "network": network, "mode": mode}


def write_doc(agent: Agent, name: str, doc: dict[str, Any]) -> Path:
    return agent.write(name, yaml.safe_dump(doc, sort_keys=False))


# --- what the kernel, the store and the root hold --------------------------------------------


def inet(ns: Netns, ifname: str = "eth0") -> set[str]:
    """Global IPv4 addresses of ``ifname`` as CIDRs, from ``ip -j addr``."""
    links = ns.ip_json("addr", "show", "dev", ifname)
    return {
        f"{a['local']}/{a['prefixlen']}"
        for a in links[0]["addr_info"]
        if a["family"] == "inet" and a.get("scope") == "global"
    }


def all_addresses(ns: Netns) -> list[tuple[str, str, str, int, str]]:
    """Every address of every link in the namespace, as ``ip -j addr`` lists them."""
    return [
        (link["ifname"], a["family"], a["local"], a["prefixlen"], a.get("label", ""))
        for link in ns.ip_json("addr")
        for a in link.get("addr_info", [])
    ]


def routes(ns: Netns) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = ns.ip_json("-4", "route")
    return found


def default_gateways(ns: Netns) -> list[tuple[str, str]]:
    return [(r.get("gateway", ""), r.get("dev", ""))
            for r in ns.ip_json("-4", "route", "show", "default")]


def history(agent: Agent) -> list[dict[str, Any]]:
    revisions: list[dict[str, Any]] = agent.cli_json("config", "history")["revisions"]
    return revisions


def rendered(agent: Agent) -> dict[str, bytes]:
    """Every file under the agent's --root, by relative path."""
    return {
        str(p.relative_to(agent.root)): p.read_bytes()
        for p in sorted(agent.root.rglob("*")) if p.is_file()
    }


def machine(agent: Agent) -> dict[str, Any]:
    """Kernel, store and rendered files: what a refused or failed change must not touch."""
    return {
        "addresses": all_addresses(agent.ns),
        "routes": routes(agent.ns),
        "history": history(agent),
        "files": rendered(agent),
    }


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> float:
    """Poll ``check`` until true; the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not seen within {timeout:g} s")
        time.sleep(0.05)
    return time.monotonic() - start


def converged_status(agent: Agent, timeout: float = 10) -> dict[str, Any]:
    """``status --json`` once the start-up convergence has a result (it runs while serving)."""
    found: dict[str, Any] = {}

    def done() -> bool:
        found.update(agent.cli_json("status"))
        return found["converge"]["ok"] is not None

    wait_for("the start-up convergence", done, timeout)
    return found


def error_lines(stderr: str) -> tuple[str, list[str]]:
    """The CLI's error output: the ``error:`` line and the problem lines (indented)."""
    lines = stderr.splitlines()
    head = next((line for line in lines if line.startswith("error: ")), "")
    return head, [line[2:] for line in lines if line.startswith("  ")]


def apply_ok(agent: Agent, path: Path, *options: str) -> dict[str, Any]:
    result: dict[str, Any] = agent.cli_json("config", "apply", str(path), *options)
    return result


# --- applying --------------------------------------------------------------------------------


def test_apply_configures_the_kernel_and_the_files(agent: Agent) -> None:
    path = write_doc(agent, "rev1.yaml", document("10.0.0.11/24"))
    done = agent.cli("config", "apply", str(path))
    assert done.returncode == 0, done.stderr
    assert "Revision 1 committed" in done.stdout

    assert inet(agent.ns) == {"10.0.0.11/24"}
    assert default_gateways(agent.ns) == [("10.0.0.1", "eth0")]
    link = agent.ns.ip_json("link", "show", "dev", "eth0")[0]
    assert "UP" in link["flags"]

    assert (agent.root / "etc/hostname").read_text() == "pbx1\n"
    keyfile = (agent.root / KEYFILE).read_text()
    assert "interface-name=eth0" in keyfile
    assert "address1=10.0.0.11/24" in keyfile
    assert "gateway=10.0.0.1" in keyfile
    assert "nameserver 10.0.0.2" in (agent.root / "etc/resolv.conf").read_text()

    revisions = history(agent)
    assert [(r["revision"], r["source"]) for r in revisions] == [(1, "apply")]
    assert (agent.state_dir / "revisions/00000001/state.yaml").is_file()

    # the same document again: converged, so no revision and no change
    files = rendered(agent)
    again = apply_ok(agent, path)
    assert again["revision"] is None
    assert again["changes"] == {}
    assert again["plan"]["fields"] == []
    assert history(agent) == revisions
    assert rendered(agent) == files
    assert inet(agent.ns) == {"10.0.0.11/24"}


def test_dry_run_changes_nothing(agent: Agent) -> None:
    apply_ok(agent, write_doc(agent, "rev1.yaml", document("10.0.0.11/24")))
    before = machine(agent)

    changed = write_doc(agent, "rev2.yaml", document("10.0.0.21/24", hostname="pbx2"))
    result = apply_ok(agent, changed, "--dry-run")
    assert result["dry_run"] is True
    assert result["revision"] is None
    assert result["changes"] == {}
    paths = {f["path"] for f in result["plan"]["fields"]}
    assert {"network.interfaces.eth0.addresses", "network.hostname"} <= paths

    assert machine(agent) == before
    assert inet(agent.ns) == {"10.0.0.11/24"}


def test_missing_interface_fails_with_4_and_changes_nothing(agent: Agent) -> None:
    apply_ok(agent, write_doc(agent, "rev1.yaml", document("10.0.0.11/24")))
    before = machine(agent)

    doc = document("10.0.0.21/24")
    doc["network"]["interfaces"]["eth9"] = {"addresses": ["10.1.0.5/24"]}
    done = agent.cli("config", "apply", str(write_doc(agent, "eth9.yaml", doc)))
    assert done.returncode == 4, done.stdout + done.stderr
    head, _ = error_lines(done.stderr)
    assert head == (
        "error: applying failed in network: interface eth9 does not exist on this node "
        "(present: eth0, lo, peer0); the previous revision was re-applied"
    )

    assert machine(agent) == before
    assert inet(agent.ns) == {"10.0.0.11/24"}


def test_failure_after_kernel_changes_restores_the_previous_addresses(agent: Agent) -> None:
    """The network subsystem fails after it changed addresses (a rendered file cannot be
    written): the previous revision is re-applied to the kernel."""
    agent.ns.ip("link", "add", "eth1", "type", "veth", "peer", "name", "peer1")
    agent.ns.ip("link", "set", "peer1", "up")
    apply_ok(agent, write_doc(agent, "rev1.yaml", document("10.0.0.11/24")))
    before = machine(agent)

    # a directory where the keyfile of eth1 goes: the write fails after the kernel changed
    (agent.root / KEYFILE.replace("eth0", "eth1")).mkdir()
    doc = document("10.0.0.21/24")
    doc["network"]["interfaces"]["eth1"] = {"addresses": ["10.1.0.5/24"]}
    done = agent.cli("config", "apply", str(write_doc(agent, "rev2.yaml", doc)))
    assert done.returncode == 4, done.stdout + done.stderr
    head, _ = error_lines(done.stderr)
    assert head.startswith("error: applying failed in network: ")
    assert head.endswith("; the previous revision was re-applied")

    assert inet(agent.ns, "eth0") == {"10.0.0.11/24"}
    assert inet(agent.ns, "eth1") == set()
    assert default_gateways(agent.ns) == [("10.0.0.1", "eth0")]
    after = machine(agent)
    assert after["history"] == before["history"]
    assert after["files"] == before["files"]


def test_rollback_restores_the_previous_addresses(agent: Agent) -> None:
    apply_ok(agent, write_doc(agent, "rev1.yaml", document("10.0.0.11/24")))
    apply_ok(agent, write_doc(agent, "rev2.yaml", document("10.0.0.21/24", hostname="pbx2")))
    assert inet(agent.ns) == {"10.0.0.21/24"}

    done = agent.cli("config", "rollback", "1")
    assert done.returncode == 0, done.stderr
    assert inet(agent.ns) == {"10.0.0.11/24"}
    assert default_gateways(agent.ns) == [("10.0.0.1", "eth0")]
    assert (agent.root / "etc/hostname").read_text() == "pbx1\n"
    assert "address1=10.0.0.11/24" in (agent.root / KEYFILE).read_text()
    revisions = history(agent)
    assert [(r["revision"], r["source"]) for r in revisions] == [
        (3, "rollback"), (2, "apply"), (1, "apply")
    ]
    shown = agent.cli_json("config", "show")
    assert shown["document"] == agent.cli_json("config", "show", "--revision", "1")["document"]


# --- crash safety ----------------------------------------------------------------------------


def _post_apply(agent: Agent, text: str, outcome: list[str]) -> None:
    """What `voxnode config apply FILE` sends, from a thread (the CLI's own client): a
    background CLI process would need ~0.3 s to start, longer than an apply takes."""
    try:
        Client(str(agent.socket), timeout=30).post(
            "/v1/config/apply",
            {"yaml": text, "source": "crash.yaml", "dry_run": False, "yes": False,
             "comment": ""},
        )
        outcome.append("answered")
    except VoxnodeError as exc:
        outcome.append(f"{exc.code}: {exc.message}")


def check_store(agent: Agent) -> Store:
    """Every revision directory is complete and valid; no commit leftovers."""
    store = Store(agent.state_dir)
    entries = sorted(p.name for p in store.revisions_dir.iterdir())
    assert entries, "no revision at all"
    assert all(name.isdigit() for name in entries), f"leftovers in the store: {entries}"
    for name in entries:
        revision = store.load(int(name))  # raises on a missing or invalid state.yaml
        meta = json.loads((store.revisions_dir / name / "meta.json").read_text())
        assert meta["source"] == revision.meta.source == "apply"
    return store


def test_sigkill_mid_apply_never_corrupts_the_store(agent: Agent) -> None:
    texts = [
        yaml.safe_dump(document("10.0.0.11/24", hostname="pbxa")),
        yaml.safe_dump(document("10.0.0.21/24", hostname="pbxb")),
    ]
    apply_ok(agent, agent.write("a.yaml", texts[0]))
    # how long an apply takes here, to kill within it (at most 60 ms after the request)
    spans = []
    for text in (texts[1], texts[0]):
        outcome: list[str] = []
        start = time.monotonic()
        _post_apply(agent, text, outcome)
        spans.append(time.monotonic() - start)
        assert outcome == ["answered"]
    window = min(0.060, *spans)
    rng = random.Random(20261122)
    interrupted = 0
    for i in range(15):
        outcome = []
        sender = threading.Thread(target=_post_apply, args=(agent, texts[(i + 1) % 2], outcome))
        sender.start()
        time.sleep(rng.uniform(0, window))
        agent.kill()
        sender.join(30)
        assert not sender.is_alive()
        interrupted += outcome != ["answered"]

        agent.start()
        store = check_store(agent)
        status = converged_status(agent)
        assert status["converge"]["ok"] is True, status["converge"]
        assert status["pending_confirmation"] is None
        head = store.current()
        assert head is not None
        assert status["revision"]["revision"] == head.meta.revision
        want = {str(a) for a in head.state.network.interfaces["eth0"].addresses}
        assert inet(agent.ns) == want, f"iteration {i}: kernel differs from the head revision"
        assert default_gateways(agent.ns) == [("10.0.0.1", "eth0")]
        assert (agent.root / "etc/hostname").read_text() == f"{head.state.network.hostname}\n"
    # the kills are meant to land inside the applies: many must not have been answered
    assert interrupted >= 5, f"only {interrupted} of 15 applies were interrupted ({spans=})"


# --- confirmed apply -------------------------------------------------------------------------


def _set_with_confirm(agent: Agent, window: str = "2") -> float:
    """rev1 .11, then `network set` .21 with a confirmation window; the deadline (monotonic)."""
    apply_ok(agent, write_doc(agent, "rev1.yaml", document("10.0.0.11/24")))
    done = agent.cli("network", "set", "interfaces.eth0.addresses=10.0.0.21/24",
                     "--confirm-within", window)
    deadline = time.monotonic() + float(window)
    assert done.returncode == 0, done.stderr
    assert "config confirm" in done.stdout
    assert inet(agent.ns) == {"10.0.0.21/24"}
    pending = agent.cli_json("status")["pending_confirmation"]
    assert pending is not None
    assert (pending["revision"], pending["rolls_back_to"]) == (2, 1)
    return deadline


def test_confirmed_apply_rolls_back_when_not_confirmed(agent: Agent) -> None:
    deadline = _set_with_confirm(agent)
    took = wait_for("10.0.0.11 back", lambda: inet(agent.ns) == {"10.0.0.11/24"}, 6)
    assert time.monotonic() > deadline - 0.5, f"rolled back after {took:.1f} s, before 2 s"
    wait_for("the auto-rollback revision", lambda: len(history(agent)) == 3, 3)
    head = history(agent)[0]
    assert (head["revision"], head["source"]) == (3, "auto-rollback")
    assert default_gateways(agent.ns) == [("10.0.0.1", "eth0")]
    assert "address1=10.0.0.11/24" in (agent.root / KEYFILE).read_text()
    assert agent.cli_json("status")["pending_confirmation"] is None


def test_confirmed_apply_stays_when_confirmed(agent: Agent) -> None:
    deadline = _set_with_confirm(agent)
    done = agent.cli("config", "confirm")
    assert done.returncode == 0, done.stderr
    assert "Revision 2 confirmed" in done.stdout
    time.sleep(max(0.0, deadline - time.monotonic()) + 1.0)
    assert inet(agent.ns) == {"10.0.0.21/24"}
    head = history(agent)[0]
    assert (head["revision"], head["source"]) == (2, "network set")
    again = agent.cli("config", "confirm")
    assert again.returncode == 6, again.stdout + again.stderr
    assert error_lines(again.stderr)[0] == "error: no change is waiting for confirmation"


def test_pending_confirmation_expired_across_a_restart_rolls_back(agent: Agent) -> None:
    deadline = _set_with_confirm(agent)
    assert agent.stop() == 0
    assert (agent.state_dir / "pending.json").is_file()
    time.sleep(max(0.0, deadline - time.monotonic()) + 0.3)
    assert inet(agent.ns) == {"10.0.0.21/24"}  # nobody touched it while stopped
    agent.start()
    wait_for("10.0.0.11 back after the restart",
             lambda: inet(agent.ns) == {"10.0.0.11/24"}, 5)
    wait_for("the auto-rollback revision", lambda: len(history(agent)) == 3, 3)
    assert history(agent)[0]["source"] == "auto-rollback"
    assert not (agent.state_dir / "pending.json").exists()


def test_pending_confirmation_survives_a_restart_before_its_deadline(agent: Agent) -> None:
    # a window the restart fits in with room to spare on a loaded machine (at 3 s it was
    # sometimes over by the time the restarted agent had re-converged)
    deadline = _set_with_confirm(agent, window="8")
    agent.restart()
    assert time.monotonic() < deadline - 2, "the restart took longer than the window"
    assert converged_status(agent)["pending_confirmation"]["revision"] == 2
    assert inet(agent.ns) == {"10.0.0.21/24"}
    wait_for("10.0.0.11 back", lambda: inet(agent.ns) == {"10.0.0.11/24"}, 11)
    assert time.monotonic() > deadline - 0.5, "rolled back before the deadline"
    wait_for("the auto-rollback revision", lambda: len(history(agent)) == 3, 3)
    assert history(agent)[0]["source"] == "auto-rollback"


# --- bad input, against one agent ------------------------------------------------------------

BASE = document("10.0.0.11/24", domain="pbx.example.com", public_ip="203.0.113.10")


def _with(**network: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    doc["network"].update(network)
    return doc


def _unknown_keys() -> dict[str, Any]:
    doc = _with(hostnme="x")
    doc["netwrk"] = {}
    return doc


# (case, file text or None, extra argv, error line, problem lines); {file} is the path given
BAD_INPUT: list[tuple[str, str | None, list[str], str, list[str]]] = [
    ("malformed YAML", "network: [1, 2\n", [],
     "error: {file} is not valid YAML",
     ["{file}:2:1: while parsing a flow sequence, expected ',' or ']', but got "
      "'<stream end>'"]),
    ("unknown keys", yaml.safe_dump(_unknown_keys()), [],
     "error: the document has 2 problems",
     ["network.hostnme: unknown key (allowed: hostname, domain, public_ip, interfaces, "
      "gateway, dns, search, ntp)",
      "netwrk: unknown key (allowed: schema_version, network, mode, ha, license)"]),
    ("bad CIDR", yaml.safe_dump(_with(interfaces={"eth0": {"addresses": ["10.0.0.300/24"]}})),
     [], "error: the document has 1 problem",
     ["network.interfaces.eth0.addresses[0]: '10.0.0.300/24' is not a valid address "
      "(expected CIDR like 10.0.0.11/24)"]),
    ("duplicate addresses",
     yaml.safe_dump(_with(interfaces={"eth0": {"addresses": ["10.0.0.11/24", "10.0.0.11/24"]}})),
     [], "error: the document has 1 problem",
     ["network.interfaces.eth0.addresses[1]: 10.0.0.11 is already used by "
      "network.interfaces.eth0.addresses[0]"]),
    ("gateway outside every subnet", yaml.safe_dump(_with(gateway="10.9.0.1")), [],
     "error: the document has 1 problem",
     ["network.gateway: 10.9.0.1 is outside every interface subnet (10.0.0.0/24 on eth0)"]),
    ("pure-cloud without domain and public_ip",
     yaml.safe_dump(document("10.0.0.11/24", mode="pure-cloud")), [],
     "error: the document has 2 problems",
     ["network.domain: required in pure-cloud mode (the public DNS name that resolves to "
      "network.public_ip)",
      "network.public_ip: required in pure-cloud mode (the static public address, NAT 1:1)"]),
    ("pure-cloud without licence", None, ["mode", "set", "pure-cloud"],
     "error: the change cannot be made on this node",
     ["mode: pure-cloud needs the PURE_CLOUD licence module; no licence is active on this "
      "node (state OFF: activate one with `voxnode license activate --serial S --email E`)"]),
    ("unknown network setting", None, ["network", "set", "hostnme=x"],
     "error: the settings are not valid",
     ["hostnme: unknown setting (allowed: hostname, domain, public_ip, gateway, dns, search, "
      "ntp, interfaces.IF.addresses, interfaces.IF.dhcp, interfaces.IF.mtu)"]),
    ("rollback to a missing revision", None, ["config", "rollback", "99"],
     "error: revision 99 does not exist (revisions kept: 1-1)", []),
]


@pytest.fixture(scope="module")
def configured(module_agent: Agent) -> tuple[Agent, dict[str, Any]]:
    """The shared agent with BASE applied as revision 1, and the machine as it is then."""
    apply_ok(module_agent, write_doc(module_agent, "base.yaml", BASE))
    return module_agent, machine(module_agent)


@pytest.mark.parametrize(
    ("case", "text", "argv", "message", "problems"), BAD_INPUT, ids=[c[0] for c in BAD_INPUT]
)
def test_bad_input_is_refused_with_its_problems(
    configured: tuple[Agent, dict[str, Any]],
    case: str, text: str | None, argv: list[str], message: str, problems: list[str],
) -> None:
    agent, before = configured
    file = ""
    if text is not None:
        file = str(agent.write("bad.yaml", text))
        argv = ["config", "apply", file]
    done = agent.cli(*argv)
    assert done.returncode == 3, done.stdout + done.stderr
    assert error_lines(done.stderr) == (
        message.format(file=file), [p.format(file=file) for p in problems]
    ), done.stderr
    assert machine(agent) == before


# --- the agent process -----------------------------------------------------------------------


def test_a_second_agent_on_the_same_state_dir_or_socket_refuses_to_start(agent: Agent) -> None:
    assert agent.proc is not None
    other_socket = agent.base / "second.sock"
    second = agent.ns.run(*agent.command(socket_path=other_socket), timeout=20)
    assert second.returncode == 1, second.stderr
    assert (f"another voxnode-agent (pid {agent.proc.pid}) is running on {agent.state_dir}"
            in second.stderr)
    assert not other_socket.exists()

    third = agent.ns.run(*agent.command(state_dir=agent.base / "state2"), timeout=20)
    assert third.returncode == 1, third.stderr
    assert f"socket {agent.socket} is in use by another process" in third.stderr

    assert agent.running
    assert agent.cli("status").returncode == 0


def test_sigterm_stops_cleanly_and_a_dead_agent_is_exit_5(agent: Agent) -> None:
    assert agent.stop() == 0
    assert not agent.socket.exists()
    assert "agent.stopped: clean stop" in agent.log()
    done = agent.cli("status")
    assert done.returncode == 5, done.stdout + done.stderr
    assert error_lines(done.stderr)[0] == (
        f"error: cannot reach the agent at {agent.socket}: No such file or directory"
    )

    # killed, the agent leaves its socket behind: still exit 5, and a new agent takes it over
    agent.start()
    agent.kill()
    assert agent.socket.exists()
    done = agent.cli("status")
    assert done.returncode == 5, done.stdout + done.stderr
    assert str(agent.socket) in error_lines(done.stderr)[0]
    agent.start()
    assert agent.cli("status").returncode == 0
