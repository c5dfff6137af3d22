"""The image build's one kit, shared by its steps (``image.rpm``, ``image.kickstart``,
``image.iso``, ``image.packer``, ``image.ami``): the error type and its exit codes, timed
progress steps, running host tools with one-line failures, paths given on a command line,
the project version, ``SOURCE_DATE_EPOCH`` and sha256. What a step hands to the next is
``image.artifacts``.

Every ``main()`` of the build reports a ``BuildError`` as one line on stderr and exits with
its code, never with a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("VOXNODE_OUT", REPO / "out"))

EXIT_OK = 0
EXIT_FAILED = 1  # a build step failed (the tool's own message follows)
EXIT_USAGE = 2
EXIT_MISSING_INPUT = 3  # BASE_ISO (or another input) not given / not found
EXIT_WRONG_INPUT = 4  # the input is not what it must be (not an AlmaLinux 8 x86_64 ISO…)
EXIT_MISSING_TOOL = 5  # a host tool is missing (`make image-apt` installs them)
EXIT_CHECK = 6  # a build-time check failed (e.g. the binary needs a newer glibc)


class BuildError(Exception):
    """One line for the operator and the exit code that goes with it."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def say(message: str) -> None:
    print(message, flush=True)


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """``==> name`` … ``    done in 1.2 s`` around a piece of work."""
    say(f"==> {name}")
    started = time.monotonic()
    yield
    say(f"    done in {time.monotonic() - started:.1f} s")


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BuildError(f"missing host tools: {', '.join(missing)} (run `make image-apt`)",
                         EXIT_MISSING_TOOL)


def run(argv: Sequence[str | Path], *, cwd: Path | None = None,
        env: dict[str, str] | None = None, input_text: str | None = None) -> str:
    """Run a host command; its stdout, or a BuildError with the tail of its output."""
    cmd = [str(a) for a in argv]
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              input=input_text, check=False)
    except FileNotFoundError as exc:
        raise BuildError(f"missing host tool {cmd[0]} (run `make image-apt`)",
                         EXIT_MISSING_TOOL) from exc
    if proc.returncode != 0:
        detail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-12:]
        raise BuildError(f"{' '.join(cmd[:3])}… failed ({proc.returncode}): "
                         + " | ".join(detail))
    return proc.stdout


def absolute(path: Path) -> Path:
    """``path`` made absolute against the current directory, once, where a command line
    hands it over: host tools (rpmbuild, Packer) run in directories of their own, where a
    relative path such as make's default ``IMAGE_OUT=out`` names something else."""
    return Path(os.path.abspath(path.expanduser()))


def output_dir(path: Path, option: str, *, create: bool = True) -> Path:
    """The output directory given as ``option`` (``--out``), absolute; created unless
    ``create`` is false. A path that cannot be one is a one-line error."""
    out = absolute(path)
    if out.exists() and not out.is_dir():
        raise BuildError(f"{option} {path}: exists and is not a directory (give a directory "
                         "for the build's outputs)", EXIT_USAGE)
    if create:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BuildError(f"{option} {path}: cannot create the directory "
                             f"({exc.strerror})", EXIT_USAGE) from exc
    return out


def version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])


def source_date_epoch() -> int:
    """``SOURCE_DATE_EPOCH`` if set (reproducible builds), else now."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return int(time.time())
    if not value.isdigit():
        raise BuildError(f"SOURCE_DATE_EPOCH must be a number of seconds, not {value!r}",
                         EXIT_USAGE)
    return int(value)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_digest(paths: Sequence[Path]) -> str:
    """A hash over the names and contents of every file under ``paths``."""
    digest = hashlib.sha256()
    for base in paths:
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()
                                                    and "__pycache__" not in p.parts)
        for f in files:
            digest.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def guarded(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Wrap a ``main`` so a BuildError becomes one line and its exit code."""

    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except BuildError as exc:
            print(f"error: {exc.message}", file=sys.stderr, flush=True)
            return exc.code
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return EXIT_FAILED

    return wrapper
