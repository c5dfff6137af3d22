"""What the licence allows, as seen by other subsystems (working mode, services).

Licensing itself (activation, checks, the Security Update client) is its own subsystem;
until a licence is active, the port reports no modules and says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

PURE_CLOUD = "PURE_CLOUD"


@dataclass(frozen=True)
class LicenceView:
    active: bool
    modules: frozenset[str]
    reason: str  # operator sentence: why modules are what they are

    def has(self, module: str) -> bool:
        return self.active and module in self.modules


class LicencePort(Protocol):
    async def current(self) -> LicenceView:
        """What the licence allows now, from what the node holds: never the network (the
        agent's ``LicenceManager`` reads two small local files, in a worker thread, so a
        slow disk delays the answer and callers bound their wait)."""
        ...


class NoLicence:
    """The node has no licensing client yet: no modules, and the reason says so."""

    async def current(self) -> LicenceView:
        return LicenceView(
            active=False,
            modules=frozenset(),
            reason="no licence is active on this node (licensing is not set up yet)",
        )


class StaticLicence:
    """A licence view with fixed modules: for tests and for the lab's development mode."""

    def __init__(self, modules: frozenset[str]) -> None:
        self._view = LicenceView(True, modules, "test licence")

    async def current(self) -> LicenceView:
        return self._view
