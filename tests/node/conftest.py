"""Node tests: the two-node lab (lab/) started once for the node tier and removed
after its last test.

Needs root and the host tools `make lab` installs (mmdebstrap, systemd-nspawn); skipped
cleanly otherwise (a failure under CI=true, tests/preconditions.py). The first run builds
the cached rootfs (about a minute).

Removing the lab is checked as it happens: `lab down` twice, then no lab namespace,
systemd-nspawn or node mount may be left and `lab status` must say it is down. If not, the
teardown of the tier's last test errors with what was left, which fails the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.util import EXIT_UNREACHABLE

REPO = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 600  # a cold rootfs build included
DOWN_TIMEOUT_S = 90  # lab down's own bounded waits (20 s + 10 s + 10 s) and the clean-up


def lab(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `python -m lab ARGS…` and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "lab", *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def lab_exec(node: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return lab("exec", node, "--", *cmd)


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def node_write(node: str, path: str, data: str) -> None:
    """Write ``data`` to ``path`` inside a lab node (parent directories created)."""
    proc = subprocess.run(
        [sys.executable, "-m", "lab", "exec", node, "--", "sh", "-c",
         f"mkdir -p $(dirname {path}) && cat > {path}"],
        input=data, cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr


LAB_BRIDGE_NS = "vxlab-br"


def attach_host(netns: str, port: str, address: str) -> None:
    """A host of its own on the lab LAN: namespace ``netns`` whose eth0 (``address``/24) is
    plugged into the lab bridge through ``port``. ``detach_host`` removes it."""
    sh("ip", "netns", "add", netns)
    sh("ip", "-n", netns, "link", "set", "lo", "up")
    sh("ip", "link", "add", port, "netns", LAB_BRIDGE_NS, "type", "veth", "peer", "name",
       "eth0", "netns", netns)
    sh("ip", "-n", LAB_BRIDGE_NS, "link", "set", port, "master", "br0", "up")
    sh("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
    sh("ip", "-n", netns, "link", "set", "eth0", "up")


def detach_host(netns: str, port: str) -> None:
    sh("ip", "-n", LAB_BRIDGE_NS, "link", "del", port, check=False)
    sh("ip", "netns", "del", netns, check=False)


def live_nspawns() -> list[int]:
    """PIDs of running systemd-nspawn processes joined to a lab namespace."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and argv[0].endswith(b"systemd-nspawn") and any(
            a.startswith(b"--network-namespace-path=/run/netns/vxlab-") for a in argv
        ):
            found.append(int(entry))
    return found


def teardown_problems() -> list[str]:
    """`lab down` twice (the second finds nothing to do), then what must be gone."""
    problems = []
    for attempt in ("first", "second"):
        try:
            proc = lab("down", timeout=DOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            problems.append(f"the {attempt} `lab down` did not end within {DOWN_TIMEOUT_S} s")
            continue
        if proc.returncode != 0:
            problems.append(f"the {attempt} `lab down` exited {proc.returncode}: "
                            f"{(proc.stdout + proc.stderr).strip()}")
    return problems + leftovers()


def leftovers() -> list[str]:
    """What of the lab is still there: namespaces, nspawn processes, node roots, status."""
    problems = []
    netns = Path("/run/netns")
    left = sorted(n for n in os.listdir(netns) if n.startswith("vxlab-")) if netns.exists() else []
    if left:
        problems.append(f"network namespaces left: {', '.join(left)}")
    if nspawns := live_nspawns():
        problems.append(f"systemd-nspawn still running: pids {nspawns}")
    mounts = [ln.split()[4] for ln in Path("/proc/self/mountinfo").read_text().splitlines()
              if "voxnode-lab/nodes" in ln]
    if mounts:
        problems.append(f"node roots still mounted: {', '.join(mounts)}")
    status = lab("status", "--json")
    try:
        up = json.loads(status.stdout)["up"]
    except (ValueError, KeyError, TypeError):
        up = f"unreadable ({status.stdout.strip() or status.stderr.strip()})"
    if status.returncode != EXIT_UNREACHABLE or up is not False:
        problems.append(f"`lab status` after down: exit {status.returncode}, up {up}")
    return problems


@pytest.fixture(scope="package")
def lab_up() -> Iterator[None]:
    """The lab, for every node test: started by the first, removed after the last (package
    scope: the node tier), and that removal checked."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    missing = [t for t in ("mmdebstrap", "systemd-nspawn", "nsenter", "ping")
               if shutil.which(t) is None]
    if missing:
        pytest.skip(f"host tools missing: {', '.join(missing)} (run `make lab-apt`)")
    proc = lab("up", "--standalone", timeout=UP_TIMEOUT_S)
    if proc.returncode != 0:
        lab("down")
        pytest.fail(f"lab up failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    _LAB_USED.append(True)
    yield
    problems = teardown_problems()
    if problems:
        pytest.fail("the lab was not torn down properly: " + "; ".join(problems),
                    pytrace=False)


_LAB_USED: list[bool] = []  # the node tier brought the lab up in this session


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The session's last word on the lab: once the node tier has used it, nothing of it
    may be left when the run ends, whichever test or fixture brought it up last (the
    fixture's own check covers its teardown; this one every module's)."""
    if not _LAB_USED:
        return
    problems = leftovers()
    if problems:
        session.config.get_terminal_writer().line(
            "the lab was left behind at the end of the run: " + "; ".join(problems), red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
