"""Small pieces shared by the lab modules: the error type and its exit codes, running host
commands with readable failures, timed progress steps, the lab's file locations, and
stopping processes with a bounded wait until they are gone.

Nothing here knows about nodes or rootfs layers; ``lab.rootfs``, ``lab.net`` and
``lab.lifecycle`` build on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import errors

# Exit statuses of `voxnode-lab`: the CLI's table (agent.errors, the README) as the lab reads
# it. 4 ("the previous revision was re-applied") has no meaning here: the lab has no
# revisions. `exec` and `shell` return the command's own status instead.
EXIT_OK = errors.EXIT_OK
EXIT_FAILED = errors.EXIT_INTERNAL
EXIT_USAGE = errors.EXIT_USAGE
EXIT_INVALID = errors.EXIT_INVALID
EXIT_UNREACHABLE = errors.EXIT_UNREACHABLE
EXIT_REFUSED = errors.EXIT_REFUSED

EXIT_STATUSES = {
    EXIT_OK: "ok (`exec`, `shell`: the command's own exit status instead)",
    EXIT_FAILED: "a step failed: a host command, the rootfs build (the build log's tail "
    "follows), a step of the appliance (the licence server or the arbiter did not start, a "
    "`voxnode` command inside a node failed: its output follows; the lab is left running), "
    "or `down` could not remove everything (it names what is left; run it again)",
    EXIT_USAGE: "usage: unknown command or option, `exec` without `--`, a --timeout out of "
    "1-3600 s",
    EXIT_INVALID: "invalid input: an unknown node; nothing changed",
    EXIT_UNREACHABLE: "unreachable: a node is not running or its agent does not answer "
    "(`status` of a lab that is not fully up: down or degraded; `exec`, `shell` or `crash` "
    "of a stopped node; `up` or `start` whose agent did not answer in time, `up` whose pair "
    "did not settle within 30 s; the lab is left running for a look)",
    EXIT_REFUSED: "refused, nothing changed: not root, a host tool or kernel feature "
    "missing (`make lab-apt`, the tun or overlay module), `start` of a node that runs or "
    "of a lab that is not up",
}

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Paths:
    """Where the lab keeps things.

    Small files (state, logs, lock) live in the repository's ``out/lab``. The big trees
    (cached rootfs layers, the per-node overlay roots) live outside the repository, under
    ``/var/cache/voxnode-lab``: setuptools' package finder and editors walk the whole
    repository, and a mounted node root there would make them crawl a full Debian system.
    """

    out: Path
    cache: Path

    @classmethod
    def default(cls) -> Paths:
        out = Path(os.environ.get("VOXNODE_LAB_OUT", REPO / "out" / "lab"))
        cache = Path(os.environ.get("VOXNODE_LAB_CACHE", "/var/cache/voxnode-lab"))
        return cls(out=out, cache=cache)

    @property
    def layers(self) -> Path:
        return self.cache / "layers"

    @property
    def nodes(self) -> Path:
        return self.cache / "nodes"

    @property
    def state_file(self) -> Path:
        return self.out / "state.json"

    @property
    def build_log(self) -> Path:
        return self.out / "build.log"

    def node_log(self, node: str) -> Path:
        return self.out / f"{node}.log"


class LabError(Exception):
    """A failure to report as one line (plus optional detail), with its exit status
    (``EXIT_STATUSES``)."""

    def __init__(self, message: str, code: int = EXIT_FAILED, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.detail = detail


def run(
    cmd: Sequence[str | Path],
    *,
    check: bool = True,
    capture: bool = True,
    log: Path | None = None,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a host command. With ``log`` its output is appended there (and shown on failure)."""
    argv = [str(c) for c in cmd]
    try:
        if log is not None:
            with log.open("a") as fh:
                fh.write(f"\n$ {' '.join(argv)}\n")
                fh.flush()
                proc = subprocess.run(
                    argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    text=True, timeout=timeout, env=env, check=False,
                )
        else:
            proc = subprocess.run(
                argv, capture_output=capture, stdin=subprocess.DEVNULL, text=True,
                timeout=timeout, env=env, check=False,
            )
    except FileNotFoundError:
        raise LabError(f"{argv[0]} is not installed", EXIT_REFUSED) from None
    except subprocess.TimeoutExpired:
        raise LabError(f"`{' '.join(argv)}` did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        if log is not None:
            detail = tail(log, 25)
        else:
            detail = ((proc.stderr or "") + (proc.stdout or "")).strip()
        raise LabError(
            f"`{' '.join(argv)}` failed with exit code {proc.returncode}", detail=detail
        )
    return proc


def tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def say(message: str) -> None:
    print(message, flush=True)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    """Print a progress line, then how long the step took (or that it failed)."""
    start = time.monotonic()
    print(f"==> {title} …", flush=True)
    try:
        yield
    except BaseException:
        print(f"    failed after {time.monotonic() - start:.1f} s", flush=True)
        raise
    print(f"    done in {time.monotonic() - start:.1f} s", flush=True)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (waits for another `lab` command to finish)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another lab command (lock {path}) …", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def is_mounted(path: Path) -> bool:
    target = str(path.resolve()) if path.exists() else str(path)
    try:
        with open("/proc/self/mountinfo") as fh:
            return any(line.split()[4] == target for line in fh)
    except OSError:
        return False


def umount(path: Path) -> None:
    """Unmount ``path`` if mounted; fall back to a lazy unmount when it is busy."""
    if not is_mounted(path):
        return
    if run(["umount", path], check=False).returncode != 0:
        run(["umount", "-l", path])


# --- processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabProcess:
    """A running process the lab owns. Its start time tells it apart from a later process
    that reuses the PID, so a wait never mistakes a newcomer for a straggler."""

    pid: int
    started: int  # clock ticks after boot (/proc/PID/stat, field 22)
    name: str  # the kernel's command name (/proc/PID/comm, at most 15 characters)
    owner: str  # what it belongs to: "node1", "vxlab-client", …

    def describe(self) -> str:
        return f"{self.name} (pid {self.pid}, {self.owner})"


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(command name, state letter, start time) of ``pid``; None if there is no such PID."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    head, _, rest = text.rpartition(")")
    fields = rest.split()
    try:
        return head.split("(", 1)[1], fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def lab_process(pid: int, owner: str) -> LabProcess | None:
    """``pid`` as a ``LabProcess`` if it runs now (a zombie has exited: it does not)."""
    stat = _stat(pid)
    if stat is None or stat[1] in ("Z", "X"):
        return None
    return LabProcess(pid, stat[2], stat[0], owner)


def started_at(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot): with the pid, names one process."""
    stat = _stat(pid)
    return None if stat is None else stat[2]


def is_running(process: LabProcess) -> bool:
    """Still running: the same process (same start time), and not exited (a zombie)."""
    stat = _stat(process.pid)
    return stat is not None and stat[2] == process.started and stat[1] not in ("Z", "X")


def stop_processes(processes: Iterable[LabProcess], sig: int, timeout: float, *,
                   scan: Callable[[], Iterable[LabProcess]] = tuple,
                   poll: float = 0.05) -> list[LabProcess]:
    """Send ``sig`` to every process that still runs, wait until all are gone, and return
    those still running after ``timeout`` seconds (none on success).

    ``scan`` finds processes that appeared meanwhile (a child forked on the way out, a
    command started in a lab namespace); they get ``sig`` too and are waited for as well.
    """
    # a pid with its start time: a new process that reuses the pid of one that exited is
    # another process, tracked (signalled, waited for) on its own
    tracked = {(p.pid, p.started): p for p in processes}
    signalled: set[LabProcess] = set()
    deadline = time.monotonic() + timeout
    while True:
        for found in scan():
            tracked.setdefault((found.pid, found.started), found)
        left = [p for p in tracked.values() if is_running(p)]
        for process in left:
            if process not in signalled:
                signalled.add(process)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)
        if not left or time.monotonic() >= deadline:
            return sorted(left, key=lambda p: p.pid)
        time.sleep(poll)


def still_running_error(left: Sequence[LabProcess], waited: float) -> LabError:
    """The error when processes outlive SIGKILL (stuck in the kernel, e.g. on a mount)."""
    names = ", ".join(p.describe() for p in left)
    return LabError(
        f"lab down: still running {waited:.0f} s after SIGKILL: {names}; nothing was removed, "
        "so `make lab-down` can be run again once they are gone",
        detail="what they wait for: cat /proc/PID/stack, or ps -o pid,stat,wchan:32,cmd -p PID")
