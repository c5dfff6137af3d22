"""Unit tests: no root, no I/O outside tmp_path. Touching the real machine fails loudly."""

from __future__ import annotations

import gc
import inspect
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.ports.files import STRICT_ENV
from tests.loopguard import watch_loop

GOLDEN_DIR = Path(__file__).parent / "golden"


@pytest.fixture(autouse=True)
def _no_real_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse netlink and D-Bus sockets: unit tests must use the in-memory fakes."""
    real_socket = socket.socket

    class GuardedSocket(real_socket):  # type: ignore[misc,valid-type]
        def __init__(self, family: int = -1, *args: object, **kwargs: object) -> None:
            if family == socket.AF_NETLINK:
                raise RuntimeError("unit test opened a netlink socket; use the netlink fake")
            super().__init__(family, *args, **kwargs)  # type: ignore[arg-type]

        def connect(self, address: object) -> None:
            if isinstance(address, str) and "dbus" in address:
                raise RuntimeError("unit test connected to D-Bus; use the systemd fake")
            super().connect(address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "socket", GuardedSocket)
    yield


@pytest.fixture(autouse=True)
def _strict_durable_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A durable write on a running event loop raises (agent.ports.files.off_loop)."""
    monkeypatch.setenv(STRICT_ENV, "1")


@pytest.fixture
async def _loop_watch() -> AsyncIterator[None]:
    # what earlier tests left is moved out of the collector's reach: a full collection of
    # this long-lived test process takes ~90 ms, a pause of the test process, not of the
    # code under test (the agent freezes its start-up heap the same way)
    gc.freeze()
    async with watch_loop() as stalls:
        yield
    if stalls:
        pytest.fail("a callback held the event loop for more than 50 ms: "
                    + "; ".join(stalls[:3]))


@pytest.fixture(autouse=True)
def _no_loop_stalls(request: pytest.FixtureRequest) -> None:
    """Every async test runs its loop in debug mode and fails if a callback stalls it."""
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("_loop_watch")


class Golden:
    """Compare rendered text with tests/unit/golden/<name>; UPDATE_GOLDEN=1 rewrites them."""

    def check(self, name: str, text: str) -> None:
        path = GOLDEN_DIR / name
        if os.environ.get("UPDATE_GOLDEN") == "1":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        assert path.exists(), f"golden file {name} missing: run with UPDATE_GOLDEN=1 and review"
        assert text == path.read_text(), f"rendered text differs from golden file {name}"


@pytest.fixture
def golden() -> Golden:
    return Golden()
