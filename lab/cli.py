"""The command line of the development lab: ``voxnode-lab`` (``python -m lab``).

``up``, ``down``, ``crash`` and ``start`` are ``lab.lifecycle``'s; ``status`` (a table or
JSON of what runs), ``shell`` and ``exec`` (into a node) are here. Errors are one line
(plus detail) and an exit status from ``lab.util``'s table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from typing import NoReturn

from lab import lifecycle, net
from lab.lifecycle import UP_TIMEOUT_S
from lab.nodes import (
    CLIENT,
    NODES,
    container_pid,
    load_state,
    member,
    node_command,
    nspawn_pid,
    probe,
)
from lab.util import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STATUSES,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    LabError,
    Paths,
    locked,
    say,
)

HOST_TOOLS = ("mmdebstrap", "systemd-nspawn", "nsenter", "ip", "mount", "systemctl")


# --- status, shell, exec --------------------------------------------------------------------


def status(as_json: bool, paths: Paths) -> int:
    probes = [probe(n) for n in NODES]
    client_addresses = net.addresses(CLIENT.netns)
    client_ns = net.exists(CLIENT.netns)
    client = {"netns": client_ns, "addresses": client_addresses}
    bridge = {"netns": net.exists(net.BRIDGE_NS),
              "addresses": net.addresses(net.BRIDGE_NS, net.BRIDGE)}
    running = all(p.running and p.agent for p in probes) and client_ns
    state = load_state(paths)
    mode = state.get("mode") if any(p.running for p in probes) else None
    appliance_status = None
    if mode == "appliance":
        # also while a node is down: who holds the node IP is what matters then
        from lab import appliance

        appliance_status = appliance.status(state)
    healthy = running and (appliance_status is None or appliance_status["healthy"])
    if as_json:
        print(json.dumps({"up": healthy, "mode": mode,
                          "nodes": {p.name: p.as_dict() for p in probes},
                          "client": client, "bridge": bridge,
                          "appliance": appliance_status}, indent=2))
    else:
        rows = [("node", "container", "pid", "address", "agent", "revision", "systemd")]
        for p in probes:
            rows.append((p.name, "running" if p.running else "stopped",
                         str(p.leader_pid or "-"), ",".join(p.addresses) or "-",
                         "answers" if p.agent else "no", str(p.revision or "-"), p.systemd))
        rows.append(("client", "netns" if client_ns else "absent", "-",
                     ",".join(client_addresses) or "-", "-", "-", "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
        if appliance_status is not None:
            from lab import appliance

            print(appliance.status_text(appliance_status))
        print("lab: " + ("up" if healthy else "down" if not any(p.running for p in probes)
                         else "degraded") + (f" ({mode})" if mode else ""))
    return EXIT_OK if healthy else EXIT_UNREACHABLE


def enter(name: str, command: list[str], tty: bool) -> int:
    node = member(name)
    pid = nspawn_pid(node)
    leader = container_pid(pid) if pid else None
    if leader is None:
        hint = (f"`voxnode-lab start {node.name}` boots it again" if net.exists(node.netns)
                else "start the lab with `make lab`")
        raise LabError(f"{node.name} is not running ({hint})", EXIT_UNREACHABLE)
    argv = node_command(leader, command, tty=tty)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the command gets ^C itself
    try:
        code = subprocess.call(argv)
    finally:
        signal.signal(signal.SIGINT, previous)
    return 128 - code if code < 0 else code


# --- command line ---------------------------------------------------------------------------


def _seconds(text: str) -> float:
    """``--timeout``: 1-3600 seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not 1 <= value <= 3600:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text} is out of range (1-3600 seconds)")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def epilog() -> str:
    """The exit statuses, as ``voxnode --help`` lists the CLI's (4 is not used here)."""
    lines = ["exit status (the voxnode CLI's codes where they mean the same; 1 is a failed "
             "step; 4, a re-applied revision, does not occur):"]
    for code, meaning in EXIT_STATUSES.items():
        lines += textwrap.wrap(meaning, width=88, initial_indent=f"  {code}  ",
                               subsequent_indent="     ")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="voxnode-lab",
        description="A two-node lab: node1 and node2 are systemd-nspawn containers booting the "
        "lab rootfs (Debian 12 + the agent), on the LAN 10.77.0.0/24 with a client namespace.",
        epilog=epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    up_p = sub.add_parser("up", help="build (cached) and start the lab as the appliance: a "
                          "licence server, both nodes licensed, the pair on 10.77.0.10")
    up_p.add_argument("--standalone", action="store_true",
                      help="two bare nodes instead: unlicensed, unpaired (revision 1)")
    up_p.add_argument("--timeout", type=_seconds, default=UP_TIMEOUT_S,
                      help=f"seconds to wait for the agents (default {UP_TIMEOUT_S:.0f})")
    sub.add_parser("down", help="stop and remove everything the lab made")
    st = sub.add_parser("status", help="containers, addresses, agents, systemd state")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    sh = sub.add_parser("shell", help="a login shell inside a node")
    sh.add_argument("node")
    cr = sub.add_parser("crash", help="freeze and kill every process of a node at once (a "
                        "machine dying); its network namespace and disk stay")
    cr.add_argument("node")
    sr = sub.add_parser("start", help="boot a crashed node again on its own disk; waits for "
                        "its agent")
    sr.add_argument("node")
    sr.add_argument("--timeout", type=_seconds, default=UP_TIMEOUT_S,
                    help=f"seconds to wait for the agent (default {UP_TIMEOUT_S:.0f})")
    ex = sub.add_parser("exec", help="run a command inside a node: exec NODE -- CMD...")
    ex.add_argument("node")
    ex.add_argument("cmd", nargs="*", metavar="-- CMD", help="the command and its arguments")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # `exec NODE -- CMD...`: everything after the first `--` is the command, untouched
    command: list[str] | None = None
    if "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    args = parser().parse_args(argv)
    paths = Paths.default()
    try:
        if args.command == "exec":
            if command is None or args.cmd or not command:
                raise LabError("usage: voxnode-lab exec NODE -- CMD [ARGS...] (the `--` is "
                               "required)", EXIT_USAGE)
            member(args.node)
        elif command is not None:
            raise LabError(f"`--` is only valid with exec, not {args.command}", EXIT_USAGE)
        if args.command in ("shell", "crash", "start"):
            member(args.node)
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, mounts, nspawn): "
                           "run it with sudo", EXIT_REFUSED)
        if args.command == "up":
            missing = [t for t in HOST_TOOLS if shutil.which(t) is None]
            if missing:
                raise LabError(f"missing host tools: {', '.join(missing)} (`make lab` installs "
                               "them)", EXIT_REFUSED)
            with locked(paths.out / "lock"):
                return lifecycle.up(paths, args.timeout, args.standalone)
        if args.command == "down":
            with locked(paths.out / "lock"):
                return lifecycle.down(paths)
        if args.command == "status":
            return status(args.json, paths)
        if args.command == "crash":
            lifecycle.crash(args.node, paths)
            say(f"{args.node} crashed (its network namespace and disk stay; "
                f"`voxnode-lab start {args.node}` boots it again)")
            return EXIT_OK
        if args.command == "start":
            p = lifecycle.start(args.node, paths, args.timeout)
            say(f"{p.name} is up again (revision {p.revision}, systemd {p.systemd})")
            return EXIT_OK
        if args.command == "shell":
            shell = ["/bin/bash", "-l"]
            if sys.stdin.isatty():  # a pty of the node's own devpts, so `tty`, sudo, less work
                shell = ["/usr/bin/script", "-qfec", "/bin/bash -l", "/dev/null"]
            return enter(args.node, shell, tty=True)
        assert command is not None
        return enter(args.node, command, tty=sys.stdin.isatty())
    except LabError as exc:
        print(f"voxnode-lab: error: {exc.message}", file=sys.stderr)
        if exc.detail:
            print(exc.detail, file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("voxnode-lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
