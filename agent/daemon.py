"""voxnode-agent: the long-running daemon that owns a node's configuration.

One instance per state directory (an flock on ``agent.lock``). At start it re-converges the
committed revision, serves the API on its unix socket, tells systemd it is ready
(Type=notify) and feeds the watchdog; SIGTERM stops it after any change in progress.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from aiohttp import web

from agent import __version__, loopwatch
from agent.api import AgentContext, make_app
from agent.api import ha as ha_api
from agent.api import jobs as jobs_api
from agent.api import licence as licence_api
from agent.api import mcs as mcs_api
from agent.api import services as services_api
from agent.change_options import ChangeOptions
from agent.engine import Engine
from agent.errors import StoreError, VoxnodeError
from agent.events import EventLog
from agent.ha.subsystem import HARoleSource, HASubsystem, service_role
from agent.jobs.mongodb_update import mongodb_update_job
from agent.jobs.runner import JobRunner
from agent.jobs.store import JobStore
from agent.licence.fingerprint import CachedFingerprint, node_fingerprint
from agent.licence.manager import LicenceManager
from agent.mcs.client import McsClient
from agent.mcs.tunnel import LocalTunnel
from agent.mode.subsystem import ModeSubsystem
from agent.network.subsystem import NetworkSubsystem
from agent.ports.files import FileTree, durable
from agent.ports.hostname import KernelHostname
from agent.ports.netlink import PyRoute2Netlink
from agent.ports.systemd import DbusSystemd
from agent.sdnotify import Notifier
from agent.services.catalogue import load_catalogue
from agent.services.subsystem import ServicesSubsystem
from agent.services.subsystem import watch as watch_services
from agent.state.document import load_document
from agent.state.store import Store
from ha.manager import HAManager
from ha.protocol import Role

log = logging.getLogger("voxnode.agent")

DEFAULT_STATE_DIR = "/var/lib/voxnode"
DEFAULT_SOCKET = "/run/voxnode/agent.sock"
DEFAULT_SEED = "/etc/voxnode/seed.yaml"
STOP_GRACE_S = 60.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="voxnode-agent",
        description="The voxnode system agent: keeps this node converged to its desired "
        "state and serves the API used by the voxnode CLI and the web console.",
        epilog="Runs under systemd as voxnode-agent.service (Type=notify, watchdog). "
        "Exit status: 0 stopped cleanly, 1 could not start (the reason is logged).",
    )
    parser.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, type=Path,
        help=f"where revisions of the desired state live (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--socket", default=DEFAULT_SOCKET, type=Path,
        help=f"unix socket of the API (default {DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--root", default="/", type=Path,
        help="root of the node's file system for rendered files (default /); with any "
        "other root the kernel hostname and the systemd units are left alone",
    )
    parser.add_argument(
        "--catalogue", default=os.environ.get("VOXNODE_CATALOGUE", "appliance"),
        metavar="appliance|lab|PATH",
        help="service catalogue: which units run by licence, role and working mode "
        "(default appliance; $VOXNODE_CATALOGUE; lab nodes use lab)",
    )
    parser.add_argument(
        "--seed", default=DEFAULT_SEED, type=Path,
        help="document applied as the first revision when the state directory is empty "
        f"(written by the installer or the lab; default {DEFAULT_SEED}, path under --root)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
    )
    parser.add_argument("--version", action="version", version=f"voxnode-agent {__version__}")
    return parser.parse_args(argv)


LOOP_STALL_ENV = "VOXNODE_LOOP_STALL_MS"


def watch_loop() -> None:
    """With VOXNODE_LOOP_STALL_MS=N (the namespace tests set it): a warning in the log for
    every callback that holds the loop longer than N ms (``agent.loopwatch``; cheap, unlike
    asyncio's debug mode, which the unit tier uses)."""
    value = os.environ.get(LOOP_STALL_ENV, "")
    if value.isdigit() and int(value) > 0:
        loopwatch.install(int(value) / 1000)


def setup_logging(level: str) -> None:
    # under journald the timestamp is added by the journal
    fmt = "%(levelname)s %(name)s: %(message)s"
    if "JOURNAL_STREAM" not in os.environ:
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


@contextlib.contextmanager
def instance_lock(state_dir: Path) -> Iterator[None]:
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd = os.open(state_dir / "agent.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as exc:
        raise StoreError(f"cannot use state directory {state_dir}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StoreError(
                f"another voxnode-agent (pid {holder}) is running on {state_dir}",
                remedy="Stop it first, or give this one another --state-dir.",
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _claim_socket(path: Path) -> None:
    """Remove a stale socket file; refuse if something still answers on it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if not path.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise StoreError(
        f"socket {path} is in use by another process",
        remedy="Stop the other agent or give this one another --socket.",
    )


async def _watchdog(notifier: Notifier, interval: float) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval)


async def _apply_seed(engine: Engine, files: FileTree, seed: str, events: EventLog) -> None:
    """First start: adopt the seed document, if the installer left one."""
    text = files.read(seed)
    if text is None:
        return
    try:
        await engine.apply(
            load_document(text.decode(errors="replace"), seed),
            source="seed",
            options=ChangeOptions(comment=f"first configuration from {seed}", yes=True),
        )
    except VoxnodeError as exc:
        problems = "; ".join(str(p) for p in exc.problems)
        events.emit(
            "config.seed-refused",
            f"{seed}: {exc.message}" + (f" ({problems})" if problems else ""),
            level=logging.ERROR,
        )


async def run(args: argparse.Namespace) -> int:
    root: Path = args.root.resolve()
    events = EventLog()
    store = Store(args.state_dir)
    await durable(store.open)
    files = FileTree(root)
    netlink = PyRoute2Netlink()
    network = NetworkSubsystem(
        netlink, files, KernelHostname() if root == Path("/") else None
    )
    catalogue = load_catalogue(args.catalogue)
    fingerprint = CachedFingerprint(lambda: node_fingerprint(root))
    await fingerprint.refresh()  # in a thread: IMDS on AWS is a network call
    licence = LicenceManager(
        args.state_dir, files, lambda: (c.state if (c := store.current()) else None),
        fingerprint=fingerprint, catalogue=catalogue, events=events)
    # units are driven only on a real node; an agent on another root (tests in network
    # namespaces of a development machine) must never touch the host's systemd
    systemd = DbusSystemd() if root == Path("/") else None
    ha = HAManager(args.state_dir, netlink, events, files=files, systemd=systemd)
    await ha.load()
    services = (
        ServicesSubsystem(systemd, catalogue, licence, HARoleSource(ha), files=files,
                          events=events)
        if systemd is not None
        else None
    )
    if services is not None:
        units = services

        async def converge_units(old: Role, new: Role) -> object:
            return await units.on_role_change(service_role(old), service_role(new))

        ha.hooks.append(converge_units)
    licence.services = services
    engine = Engine(
        store,
        [network, HASubsystem(ha, files), ModeSubsystem(files, licence),
         *([services] if services else [])],
        events,
    )
    licence.lock = engine.lock
    jobs = JobRunner(JobStore(args.state_dir), events)
    if services is not None:
        jobs.register(mongodb_update_job(services))
    jobs.register(ha.full_sync.kind())
    # a job found running was cut off by a stop: it becomes interrupted (records written)
    await durable(jobs.recover)
    ctx = AgentContext(
        engine=engine, events=events, network=network, licence=licence,
        started=time.time(), state_dir=str(args.state_dir), root=str(root),
    )
    notifier = Notifier()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    watch_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    app = make_app(ctx)
    if services is not None:
        services_api.add_routes(app, services)
    ha_api.add_routes(app, ha)
    jobs_api.add_routes(app, jobs)
    licence_api.add_routes(app, licence)
    mcs_api.add_routes(app, McsClient(
        files, services, lambda: (c.state if (c := store.current()) else None), LocalTunnel(),
        events=events, lock=engine.lock,
    ))
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    _claim_socket(args.socket)
    await web.UnixSite(runner, str(args.socket)).start()
    os.chmod(args.socket, 0o660)
    events.emit("agent.started", f"voxnode-agent {__version__} serving {args.socket}")

    async with asyncio.TaskGroup() as tg:
        if notifier.watchdog_interval:
            watchdog = tg.create_task(_watchdog(notifier, notifier.watchdog_interval))
        else:
            watchdog = None
        await engine.start()
        if store.head() == 0:
            await _apply_seed(engine, files, str(args.seed), events)
        watcher = tg.create_task(watch_services(services)) if services else None
        job_task = tg.create_task(jobs.run())
        licence_task = tg.create_task(licence.run())
        fingerprint_task = tg.create_task(fingerprint.keep_trying())
        # the heap built at start (modules, models, the first revision) is never garbage:
        # out of the collector's reach, a full collection stays short (it runs on the loop
        # the heartbeats share)
        gc.freeze()
        head = store.head()
        notifier.ready(f"serving; revision {head}" if head else "serving; not configured")
        await stop.wait()
        notifier.stopping()
        events.emit("agent.stopping", "signal received; finishing any change in progress")
        job_task.cancel()
        licence_task.cancel()
        fingerprint_task.cancel()
        await asyncio.gather(job_task, return_exceptions=True)  # a running job: interrupted
        await jobs.flushed()
        await engine.stop()
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                async with engine.lock:
                    pass
        except TimeoutError:
            log.warning("a change was still running after %.0f s; stopping anyway", STOP_GRACE_S)
        await ha.stop()
        await runner.cleanup()
        await netlink.close()
        with contextlib.suppress(FileNotFoundError):
            args.socket.unlink()
        if watchdog is not None:
            watchdog.cancel()
        if watcher is not None:
            watcher.cancel()
        if systemd is not None:
            await systemd.close()
    events.emit("agent.stopped", "clean stop")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        with instance_lock(args.state_dir):
            return asyncio.run(run(args))
    except VoxnodeError as exc:
        problems = "".join(f"\n  {p}" for p in exc.problems)
        log.error("%s%s%s", exc.message, f" — {exc.remedy}" if exc.remedy else "", problems)
        return 1
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":
    sys.exit(main())
