"""`voxnode-lab`'s exit statuses are the voxnode CLI's table (agent.errors, the README): the
codes themselves, the README's table for the lab and `--help` saying the same, and each
status the lab ends with, as far as it is reached without a lab: usage, an unknown node,
not root, a missing host tool, a failed host command (as separate processes, like an
operator runs it); a stopped node, a lab not up, a node that stops while booting (in
process, with the /proc lookups answered by stand-ins). The node tier checks the same
against a real lab (tests/node/test_lab.py and the lab fixture's teardown)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent import errors
from lab import cli, lifecycle, net
from lab.nodes import NodeProbe
from lab.util import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STATUSES,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    LabError,
    Paths,
    run,
)

REPO = Path(__file__).resolve().parents[2]
NOBODY = 65534


def voxnode_lab(*args: str, tmp_path: Path, path: str | None = None,
                as_nobody: bool = False) -> subprocess.CompletedProcess[str]:
    """``python -m lab ARGS`` (what ``voxnode-lab`` runs), its files kept under tmp_path."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "VOXNODE_LAB_OUT": str(tmp_path / "out"),
           "VOXNODE_LAB_CACHE": str(tmp_path / "cache")}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False,
                          user=NOBODY if as_nobody else None,
                          group=NOBODY if as_nobody else None,
                          extra_groups=[] if as_nobody else None)


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_the_codes_are_the_clis() -> None:
    assert (EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INVALID, EXIT_UNREACHABLE, EXIT_REFUSED) == (
        errors.EXIT_OK, errors.EXIT_INTERNAL, errors.EXIT_USAGE, errors.EXIT_INVALID,
        errors.EXIT_UNREACHABLE, errors.EXIT_REFUSED)
    assert errors.EXIT_APPLY_FAILED not in EXIT_STATUSES  # the lab re-applies no revision


def test_readme_and_help_give_the_table(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## The development lab (`voxnode-lab`)", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d) \| (.+) \|$", section, flags=re.M))
    assert sorted(int(code) for code in rows) == sorted(EXIT_STATUSES)
    proc = voxnode_lab("--help", tmp_path=tmp_path)
    assert proc.returncode == EXIT_OK
    epilog = proc.stdout.split("exit status", 1)[1]
    for code, meaning in EXIT_STATUSES.items():
        assert f"\n  {code}  {meaning.split()[0]}" in epilog, (code, epilog)


@pytest.mark.parametrize(("args", "code", "message"), [
    ((), EXIT_USAGE, "the following arguments are required: COMMAND"),
    (("frobnicate",), EXIT_USAGE, "invalid choice: 'frobnicate'"),
    (("status", "--yes"), EXIT_USAGE, "unrecognized arguments: --yes"),
    (("exec", "node1", "true"), EXIT_USAGE, "(the `--` is required)"),
    (("status", "--", "true"), EXIT_USAGE, "`--` is only valid with exec, not status"),
    (("exec", "node9", "--", "true"), EXIT_INVALID, "unknown node 'node9' (the lab has "
                                                    "node1, node2)"),
    (("shell", "node3"), EXIT_INVALID, "unknown node 'node3'"),
    (("crash", "client"), EXIT_INVALID, "unknown node 'client'"),
    (("start", "gateway"), EXIT_INVALID, "unknown node 'gateway'"),
    (("up", "--timeout", "-1"), EXIT_USAGE, "-1 is out of range (1-3600 seconds)"),
    (("up", "--timeout", "nan"), EXIT_USAGE, "nan is out of range (1-3600 seconds)"),
    (("start", "node1", "--timeout", "soon"), EXIT_USAGE, "'soon' is not a number of seconds"),
])
def test_usage_and_unknown_nodes(args: tuple[str, ...], code: int, message: str,
                                 tmp_path: Path) -> None:
    proc = voxnode_lab(*args, tmp_path=tmp_path)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [("up",), ("down",), ("status",), ("exec", "node1", "--", "id")])
def test_not_root_is_refused(args: tuple[str, ...], tmp_path: Path) -> None:
    proc = voxnode_lab(*args, tmp_path=tmp_path, as_nobody=os.geteuid() == 0)
    assert proc.returncode == EXIT_REFUSED, proc.stdout + proc.stderr
    assert one_line(proc) == ("voxnode-lab: error: the lab needs root (network namespaces, "
                              "mounts, nspawn): run it with sudo")
    assert not (tmp_path / "out").exists()


def test_missing_host_tools_are_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("as another user, the refusal is for not being root (test above)")
    proc = voxnode_lab("up", tmp_path=tmp_path, path=str(tmp_path / "empty"))
    assert proc.returncode == EXIT_REFUSED, proc.stdout + proc.stderr
    assert one_line(proc) == ("voxnode-lab: error: missing host tools: mmdebstrap, "
                              "systemd-nspawn, nsenter, ip, mount, systemctl (`make lab` "
                              "installs them)")
    assert not (tmp_path / "out").exists()


def test_a_failed_host_command_is_1_and_a_missing_one_refused() -> None:
    with pytest.raises(LabError) as failed:
        run([sys.executable, "-c", "import sys; sys.exit(9)"])
    assert failed.value.code == EXIT_FAILED and "failed with exit code 9" in failed.value.message
    with pytest.raises(LabError) as missing:
        run(["/nonexistent/mmdebstrap"])
    assert missing.value.code == EXIT_REFUSED
    assert missing.value.message == "/nonexistent/mmdebstrap is not installed"
    assert LabError("any step").code == EXIT_FAILED


# --- states of the lab, with /proc's answers given ------------------------------------------


def stopped(name: str) -> NodeProbe:
    return NodeProbe(name, running=False, nspawn_pid=None, leader_pid=None, addresses=[],
                     agent=False, revision=None, hostname=None, systemd="-")


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    return Paths(out=tmp_path / "out", cache=tmp_path / "cache")


def test_status_of_a_lab_that_is_down_is_unreachable(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str],
                                                     paths: Paths) -> None:
    monkeypatch.setattr(cli, "probe", lambda node: stopped(node.name))
    monkeypatch.setattr(net, "exists", lambda netns: False)
    monkeypatch.setattr(net, "addresses", lambda netns, ifname="eth0": [])
    assert cli.status(as_json=False, paths=paths) == EXIT_UNREACHABLE
    assert capsys.readouterr().out.splitlines()[-1] == "lab: down"


def test_a_stopped_node_is_unreachable(monkeypatch: pytest.MonkeyPatch, paths: Paths) -> None:
    monkeypatch.setattr(cli, "nspawn_pid", lambda node: None)
    monkeypatch.setattr(lifecycle, "nspawn_pid", lambda node: None)
    with pytest.raises(LabError) as entered:
        cli.enter("node1", ["true"], tty=False)
    assert entered.value.code == EXIT_UNREACHABLE
    assert entered.value.message.startswith("node1 is not running (")
    with pytest.raises(LabError) as crashed:
        lifecycle.crash("node2", paths)
    assert crashed.value.code == EXIT_UNREACHABLE
    assert crashed.value.message == "node2 is not running"


def test_start_that_does_not_fit_the_lab_is_refused(monkeypatch: pytest.MonkeyPatch,
                                                    paths: Paths) -> None:
    monkeypatch.setattr(lifecycle, "nspawn_pid", lambda node: 4242)
    with pytest.raises(LabError) as running:
        lifecycle.start("node1", paths)
    assert running.value.code == EXIT_REFUSED
    assert running.value.message == "node1 is already running"
    monkeypatch.setattr(lifecycle, "nspawn_pid", lambda node: None)
    monkeypatch.setattr(net, "exists", lambda netns: False)
    with pytest.raises(LabError) as not_up:
        lifecycle.start("node2", paths)
    assert not_up.value.code == EXIT_REFUSED
    assert "the lab is not up (`voxnode-lab up` starts it)" in not_up.value.message


def test_a_node_that_stops_while_booting_is_unreachable(monkeypatch: pytest.MonkeyPatch,
                                                        paths: Paths) -> None:
    paths.out.mkdir(parents=True)
    paths.node_log("node1").write_text("Failed to mount the node's root\n")
    monkeypatch.setattr(lifecycle, "probe", lambda node: stopped(node.name))
    with pytest.raises(LabError) as booting:
        lifecycle._wait_agents(paths, timeout=5.0)
    assert booting.value.code == EXIT_UNREACHABLE
    assert booting.value.message.startswith("node1 stopped while booting (log ")
    assert booting.value.detail == "Failed to mount the node's root"
