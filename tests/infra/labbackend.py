"""A testinfra backend for the development lab: ``--hosts=lab://node1``.

A lab node is a systemd-nspawn container booting its own systemd (``lab/lifecycle.py``;
found with ``lab.nodes``). A ``chroot://`` target would see its files but not its
systemd (``systemctl`` needs the node's mount, PID and IPC namespaces), so this backend
runs every command the way ``voxnode-lab exec`` does: ``nsenter`` into all the
namespaces of the node's PID 1, with the node's own PATH and a clean environment, then
``/bin/sh -c COMMAND``. The node's PID 1 is looked up for every command (cheap: a scan of
/proc), so a lab restarted between two commands is still found. Needs root, like the lab itself.

Registered under the name ``lab`` by :func:`register` (``tests/infra/conftest.py`` calls
it), after which ``testinfra.get_host("lab://node1")`` and ``--hosts=lab://node1`` work.
"""

from __future__ import annotations

import subprocess
from typing import Any

import testinfra.backend
from testinfra.backend import base

from lab import nodes

COMMAND_TIMEOUT_S = 60.0


class LabBackend(base.BaseBackend):  # type: ignore[misc]
    """Commands run inside a lab node (nsenter into its systemd's namespaces)."""

    NAME = "lab"

    def __init__(self, name: str, *args: Any, **kwargs: Any) -> None:
        nodes.member(name)  # an unknown node fails here, with the nodes the lab has
        self.name = name
        super().__init__(name, *args, **kwargs)

    def leader(self) -> int:
        """The host PID of the node's PID 1 (its systemd)."""
        nspawn = nodes.nspawn_pid(nodes.member(self.name))
        leader = nodes.container_pid(nspawn) if nspawn else None
        if leader is None:
            raise RuntimeError(f"lab node {self.name} is not running (start it: make lab)")
        return leader

    def run(self, command: str, *args: str, **kwargs: Any) -> base.CommandResult:
        cmd = self.get_command(command, *args)
        argv = nodes.node_command(self.leader(), ["/bin/sh", "-c", cmd])
        try:
            proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL,
                                  timeout=COMMAND_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"`{cmd}` did not finish within {COMMAND_TIMEOUT_S:.0f} s on {self.name}"
            ) from exc
        return self.result(proc.returncode, self.encode(cmd), proc.stdout, proc.stderr)


def register() -> None:
    """Make ``lab://NODE`` a testinfra host specification."""
    testinfra.backend.BACKENDS.setdefault("lab", f"{__name__}.LabBackend")
