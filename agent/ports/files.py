"""Durable writes: the one atomic-write implementation of the agent, and the rendered files
under the node's root directory (written atomically and only if changed).

Every store of the agent (revisions, the pair's state and key, licence and job records,
rendered configuration files, the MCS bundle) writes through ``atomic_write``: temp file,
fsync, rename, fsync of the directory. An fsync can take seconds on a busy or failing disk,
so none of this may run on the event loop the failover heartbeats share: async code calls
``await durable(fn, ...)`` (a worker thread). ``atomic_write`` checks where it runs: on the
loop it logs a warning once per call site, and with ``VOXNODE_STRICT_LOOP=1`` (the test
tiers set it) it raises ``BlockingOnLoop``, so a blocking write cannot creep back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import ParamSpec, TypeVar

from agent.errors import SubsystemError

log = logging.getLogger("voxnode.files")
STRICT_ENV = "VOXNODE_STRICT_LOOP"
_warned: set[str] = set()
P = ParamSpec("P")
T = TypeVar("T")


class BlockingOnLoop(RuntimeError):
    """A durable write was called on the event loop (strict mode only)."""


def off_loop(what: str) -> None:
    """Complain if called on a running event loop: ``what`` blocks (fsync)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return  # a worker thread, or synchronous code (the CLI, first boot)
    if os.environ.get(STRICT_ENV) == "1":
        raise BlockingOnLoop(f"{what} on the event loop: run it with `await durable(...)`")
    caller = "".join(traceback.format_stack(limit=4)[:1]).strip()
    if caller not in _warned:
        _warned.add(caller)
        log.warning("%s on the event loop (a slow disk would stall the heartbeats): %s",
                    what, caller)


async def durable(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run ``fn`` (a durable write, or anything else that blocks) in a worker thread."""
    return await asyncio.to_thread(fn, *args, **kwargs)


class FileWriteError(SubsystemError):
    """A rendered file could not be written or removed on the node."""

    default_remedy = "Check the file system (permissions, free space) and apply again."


@contextlib.contextmanager
def _as_subsystem_error(node_path: str, verb: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise FileWriteError(f"cannot {verb} {node_path}: {exc.strerror or exc}") from exc


def fsync_dir(path: Path) -> None:
    off_loop(f"fsync of {path}")
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, gid: int = -1) -> None:
    """Write temp file in the same directory, fsync, rename over ``path``, fsync the directory.

    A crash at any point leaves either the old or the new content, never a mix.
    """
    off_loop(f"atomic write of {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if gid >= 0:
                os.fchown(fh.fileno(), -1, gid)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def create_new(path: Path, mode: int = 0o600) -> int:
    """A new file (its directory made if need be) open for writing: its descriptor. Refuses
    to open one that exists (``FileExistsError``): what is in it is never overwritten."""
    off_loop(f"creation of {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)


def fsync_file(path: Path) -> None:
    """What was written to ``path`` (by another process, say) is on disk."""
    off_loop(f"fsync of {path}")
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class FileTree:
    """The node's file system seen from ``root`` (``/`` on a node, a temp dir in tests).

    Paths given to it are absolute node paths (``/etc/hostname``); they are resolved under
    ``root`` and may not escape it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, node_path: str) -> Path:
        pure = PurePosixPath(node_path)
        if not pure.is_absolute() or ".." in pure.parts:
            raise ValueError(f"not an absolute node path: {node_path}")
        return self.root.joinpath(*pure.parts[1:])

    def read(self, node_path: str) -> bytes | None:
        try:
            return self.path(node_path).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, node_path: str) -> bool:
        return self.path(node_path).exists()

    def group_id(self, name: str) -> int | None:
        """The gid of group ``name`` in the node's own /etc/group (not the host's)."""
        table = self.read("/etc/group") or b""
        for line in table.decode(errors="replace").splitlines():
            fields = line.split(":")
            if len(fields) >= 3 and fields[0] == name and fields[2].isdigit():
                return int(fields[2])
        return None

    def write_if_changed(
        self, node_path: str, content: str | bytes, mode: int = 0o644, group: str | None = None
    ) -> bool:
        """Write ``content`` atomically unless the file already holds it with that mode/group.

        ``group``: the file's group, looked up on the node; when the node has no such group
        (the service that reads the file is not installed) the file keeps group root.
        """
        with _as_subsystem_error(node_path, "write"):
            return self._write_if_changed(node_path, content, mode, group)

    def _write_if_changed(
        self, node_path: str, content: str | bytes, mode: int, group: str | None
    ) -> bool:
        data = content.encode() if isinstance(content, str) else content
        target = self.path(node_path)
        gid = (self.group_id(group) if group else None)
        want_gid = 0 if gid is None else gid
        try:
            st = target.stat()
            if (
                (st.st_mode & 0o7777) == mode
                and (group is None or st.st_gid == want_gid)
                and target.read_bytes() == data
            ):
                return False
        except FileNotFoundError:
            pass
        atomic_write(target, data, mode, want_gid if group else -1)
        return True

    def remove(self, node_path: str) -> bool:
        """Delete a file or a whole directory; True if something was there."""
        off_loop(f"removal of {node_path}")
        with _as_subsystem_error(node_path, "remove"):
            return self._remove(self.path(node_path))

    @staticmethod
    def _remove(target: Path) -> bool:
        if target.is_dir() and not target.is_symlink():
            for child in sorted(target.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if child.is_dir() and not child.is_symlink():
                    child.rmdir()
                else:
                    child.unlink()
            target.rmdir()
            return True
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        return True
