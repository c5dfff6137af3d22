"""Entry point of the frozen multi-call binary (PyInstaller): one file, four commands.

The RPM installs the binary as ``/usr/libexec/voxnode/voxnode``; ``/usr/bin/voxnode``,
``/usr/bin/voxnode-agent``, ``/usr/bin/voxnode-firstboot`` and ``/usr/bin/voxnode-arbiter``
(the pair's arbiter, for a third machine) are two-line wrappers that run
``voxnode NAME ARGS…`` (staticx's loader does not keep argv[0], so symlinks cannot tell the
commands apart). Called by one of the names directly, the name picks the command.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

COMMANDS = {"voxnode": "agent.cli.main", "voxnode-agent": "agent.daemon",
            "voxnode-firstboot": "agent.firstboot", "voxnode-arbiter": "ha.arbiter"}


def _run(module_name: str) -> int:
    """Import only the command's own module (the CLI starts without the daemon's imports)."""
    module = importlib.import_module(module_name)
    main: Callable[[], int | None] = module.main
    return int(main() or 0)


def dispatch() -> int:
    commands = COMMANDS
    name = os.path.basename(sys.argv[0])
    if name not in commands and len(sys.argv) > 1 and sys.argv[1] in commands:
        name = sys.argv.pop(1)
        sys.argv[0] = name
    if name not in commands:
        print(f"voxnode-multicall: call me as one of {', '.join(sorted(commands))}",
              file=sys.stderr)
        return 2
    return _run(commands[name])


if __name__ == "__main__":
    sys.exit(dispatch())
