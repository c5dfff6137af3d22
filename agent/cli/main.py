"""`voxnode`: the administrator's command line (a client of voxnode-agent's API)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from rich.markup import escape

from agent import __version__
from agent.cli import ha as ha_cli
from agent.cli import jobs as jobs_cli
from agent.cli import licence as licence_cli
from agent.cli import mcs as mcs_cli
from agent.cli import output
from agent.cli import services as services_cli
from agent.cli.change_flags import add_change_flags, change_options
from agent.cli.client import Client
from agent.errors import (
    EXIT_OK,
    EXIT_USAGE,
    InvalidInput,
    Problem,
    VoxnodeError,
)
from agent.state.edit import SETTINGS_HELP
from agent.state.model import SCHEMA_VERSION

DEFAULT_SOCKET = "/run/voxnode/agent.sock"

EPILOG = f"""\
exit status:
  0  success
  2  usage error (unknown command or option)
  3  invalid input: the problems are listed as `path: what is wrong`; nothing changed
  4  applying failed on the machine and the previous revision was re-applied
  5  the agent is unreachable (the socket path tried is printed), or a server the
     agent needs is (the licence server did not answer usably; nothing changed)
  6  refused: the change needs --yes, or does not fit the agent's state
     (for example a change is waiting for `config confirm`)

environment:
  VOXNODE_SOCKET  the agent's API socket (default {DEFAULT_SOCKET})
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


Handler = Callable[[Client, argparse.Namespace], int]


def _changes(args: argparse.Namespace) -> dict[str, Any]:
    """The change options of the command line, as the request body carries them."""
    return change_options(args).to_wire()


# --- status ----------------------------------------------------------------------------------


LICENCE_COLOURS = {"ACTIVE": "green", "GRACE": "yellow", "CODE_SENT": "yellow"}


def _licence_line(lic: dict[str, Any]) -> str:
    """``OFF — why`` (red), ``ACTIVE VX-… until …, last check …`` (green), …"""
    state = str(lic.get("state") or ("ACTIVE" if lic["active"] else "OFF"))
    text = f"[bold {LICENCE_COLOURS.get(state, 'red')}]{state.replace('_', ' ')}[/]"
    facts = []
    if lic.get("serial"):
        facts.append(escape(str(lic["serial"])))
    if lic.get("grace_until"):
        facts.append(f"grace until {output.when(lic['grace_until'])}")
    elif lic.get("valid_until"):
        facts.append(f"valid until {output.when(lic['valid_until'])}")
    elif lic.get("serial") and state == "ACTIVE":
        facts.append("perpetual")
    if lic.get("last_check"):
        facts.append(f"last check {output.when(lic['last_check'])}")
    if facts:
        text += " " + ", ".join(facts)
    if state != "ACTIVE":
        text += f" — {escape(str(lic['reason']))}"
    return text


def _pair_line(pair: dict[str, Any] | None) -> str:
    """The ``pair`` row of ``voxnode status``: role, peer and its role, the node IP's
    holder, or why failover does not run."""
    if not pair or not pair.get("enabled"):
        return "not paired (ha.enabled is false)"
    if not pair.get("running"):
        return f"NOT RUNNING: {pair.get('problem') or 'failover is stopped'}"
    peer_role = pair.get("peer_role") or "not heard"
    return (f"{pair['role']}; peer {pair['peer']} {peer_role}; node IP held by "
            f"{pair['node_ip_holder']}")


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    def human(d: dict[str, Any]) -> None:
        rev = d["revision"]
        pending = d["pending_confirmation"]
        conv = d["converge"]
        output.kv_table(
            [
                ("agent", f"voxnode-agent {d['version']} (pid {d['pid']}, up {d['uptime_s']} s)"),
                ("hostname", d["hostname"]),
                ("working mode", d["mode"]),
                ("revision", f"{rev['revision']} ({rev['source']}, {rev['created']})"
                 if rev else "none (not configured)"),
                ("converged", f"{'yes' if conv['ok'] else 'NO'}: {conv['message']}"
                 if conv["ok"] is not None else conv["message"]),
                ("awaiting confirm", f"revision {pending['revision']}, rolls back to "
                 f"{pending['rolls_back_to']} in {pending['seconds_left']} s"
                 if pending else "no"),
                ("licence", output.styled(_licence_line(d["licence"]))),
                ("pair", _pair_line(d.get("pair"))),
                ("subsystems", d["subsystems"]),
            ]
        )
        for key in ("alarm", "clock_warning"):
            if d["licence"].get(key):
                output.out.print(f"[bold red]licence {key.replace('_', ' ')}:[/] "
                                 f"{escape(d['licence'][key])}")
        if d["events"]:
            output.table(
                ["time", "event", "message"],
                [[output.when(e["time"]), e["kind"], e["message"]] for e in d["events"]],
                title="Recent events",
            )

    return output.show(args, client.get("/v1/status"), human)


# --- config ----------------------------------------------------------------------------------


def _read_file(name: str) -> str:
    try:
        return sys.stdin.read() if name == "-" else Path(name).read_text()
    except OSError as exc:
        raise InvalidInput(
            f"cannot read {name}", problems=[Problem(name, exc.strerror or str(exc))]
        ) from None
    except UnicodeDecodeError:
        raise InvalidInput(
            f"cannot read {name}", problems=[Problem(name, "not UTF-8 text")]
        ) from None


def cmd_config_show(client: Client, args: argparse.Namespace) -> int:
    path = f"/v1/config/revisions/{args.revision}" if args.revision else "/v1/config"

    def human(d: dict[str, Any]) -> None:
        if d["document"] is None:
            output.err.print("No configuration yet: apply one with `voxnode config apply FILE`.")
            return
        rev = d["revision"]
        output.write_raw(f"# revision {rev['revision']} ({rev['source']}, {rev['created']})\n")
        import yaml  # only here: the other commands start faster without it

        output.write_raw(yaml.safe_dump(d["document"], sort_keys=False))

    return output.show(args, client.get(path), human)


def cmd_config_validate(client: Client, args: argparse.Namespace) -> int:
    from agent.state.document import load_document  # the schema: only this command needs it

    source = "<stdin>" if args.file == "-" else args.file
    state = load_document(_read_file(args.file), source)
    return output.show(
        args, {"valid": True, "document": state.to_document()},
        lambda d: output.out.print(f"{source}: valid (schema version {SCHEMA_VERSION})"),
    )


def cmd_config_apply(client: Client, args: argparse.Namespace) -> int:
    source = "<stdin>" if args.file == "-" else args.file
    body = {"yaml": _read_file(args.file), "source": source, **_changes(args)}
    return output.show(args, client.post("/v1/config/apply", body), output.outcome)


def cmd_config_confirm(client: Client, args: argparse.Namespace) -> int:
    data = client.post("/v1/config/confirm", {})
    return output.show(
        args, data,
        lambda d: output.out.print(f"Revision {d['confirmed']['revision']} confirmed; it stays."),
    )


def cmd_config_history(client: Client, args: argparse.Namespace) -> int:
    data = client.get("/v1/config/history")
    return output.show(
        args, data,
        lambda d: output.table(
            ["revision", "created", "source", "comment"],
            [[m["revision"], m["created"], m["source"], m["comment"]] for m in d["revisions"]],
        ),
    )


def cmd_config_rollback(client: Client, args: argparse.Namespace) -> int:
    body = {"revision": args.revision, **_changes(args)}
    return output.show(args, client.post("/v1/config/rollback", body), output.outcome)


# --- network ---------------------------------------------------------------------------------


def cmd_network_show(client: Client, args: argparse.Namespace) -> int:
    def human(d: dict[str, Any]) -> None:
        net = d["desired"]
        output.kv_table(
            [(k, net.get(k)) for k in
             ("hostname", "domain", "public_ip", "gateway", "dns", "search", "ntp")],
            title="Desired",
        )
        obs = d["observed"]
        rows = []
        for name, iface in net["interfaces"].items():
            seen = obs.get("interfaces", {}).get(name, {})
            rows.append([
                name, iface.get("addresses", []), iface.get("dhcp", False),
                seen.get("state", "missing"), seen.get("addresses", []),
            ])
        output.table(["interface", "addresses", "dhcp", "link", "in the kernel"], rows)
        for drift in obs.get("drift", []):
            output.out.print(f"[yellow]drift:[/] {drift}")

    return output.show(args, client.get("/v1/network"), human)


def _parse_assignments(pairs: list[str]) -> dict[str, str]:
    values: dict[str, str] = {}
    problems = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            problems.append(Problem(pair, "expected KEY=VALUE"))
        else:
            values[key.strip()] = value
    if problems:
        raise InvalidInput("bad settings", problems=problems)
    return values


def cmd_network_set(client: Client, args: argparse.Namespace) -> int:
    body = {"set": _parse_assignments(args.settings), "unset": args.unset, **_changes(args)}
    return output.show(args, client.post("/v1/network", body), output.outcome)


# --- mode ------------------------------------------------------------------------------------


def cmd_mode_show(client: Client, args: argparse.Namespace) -> int:
    def human(d: dict[str, Any]) -> None:
        output.out.print(f"Working mode: [bold]{d['mode']}[/]")
        output.table(["setting", "value"], [[s["setting"], s["value"]] for s in d["settings"]])
        for item in d["unavailable"]:
            for p in item["problems"]:
                output.out.print(f"[yellow]{item['mode']} unavailable:[/] {p['path']}: "
                                 f"{p['message']}")

    return output.show(args, client.get("/v1/mode"), human)


def cmd_mode_set(client: Client, args: argparse.Namespace) -> int:
    body = {"mode": args.mode, **_changes(args)}
    return output.show(args, client.post("/v1/mode", body), output.outcome)


# --- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="voxnode",
        description="Administer a voxnode PBX appliance node through its agent.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--socket", default=os.environ.get("VOXNODE_SOCKET", DEFAULT_SOCKET),
        help="the agent's API socket (default: $VOXNODE_SOCKET or %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--version", action="version", version=f"voxnode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)

    # --json is accepted after the command too (`voxnode status --json`)
    json_after = argparse.ArgumentParser(add_help=False)
    json_after.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                            help="machine-readable output")

    def add(group: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name, help=help_text, description=help_text, epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter, parents=[json_after],
        )
        p.set_defaults(handler=handler)
        return p

    add(sub, "status", cmd_status, "the node at a glance: revision, mode, convergence, events")

    config = sub.add_parser("config", help="the desired-state document and its revisions")
    cs = config.add_subparsers(dest="action", metavar="ACTION", required=True,
                               parser_class=_Parser)
    p = add(cs, "show", cmd_config_show, "print the committed document (YAML)")
    p.add_argument("--revision", type=int, help="an older revision instead")
    p = add(cs, "validate", cmd_config_validate,
            "check a document locally, without the agent (node checks are not run)")
    p.add_argument("file", metavar="FILE", help="YAML document, or - for standard input")
    p = add(cs, "apply", cmd_config_apply,
            "validate, plan, apply and commit a whole document")
    p.add_argument("file", metavar="FILE", help="YAML document, or - for standard input")
    add_change_flags(p)
    add(cs, "confirm", cmd_config_confirm, "keep a change applied with --confirm-within")
    add(cs, "history", cmd_config_history, "list the revisions kept")
    p = add(cs, "rollback", cmd_config_rollback,
            "apply the document of an older revision (as a new revision)")
    p.add_argument("revision", type=int, metavar="REV")
    add_change_flags(p)

    network = sub.add_parser("network", help="addresses, gateway, DNS, NTP, host name")
    ns = network.add_subparsers(dest="action", metavar="ACTION", required=True,
                                parser_class=_Parser)
    add(ns, "show", cmd_network_show, "desired network settings and what the kernel has")
    p = add(ns, "set", cmd_network_set, f"change network settings: KEY=VALUE ({SETTINGS_HELP}); "
            "lists are comma-separated")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--unset", action="append", default=[], metavar="KEY",
                   help="remove a setting (domain, public_ip, gateway, dns, search, ntp, "
                   "interfaces.IF, interfaces.IF.mtu); repeatable")
    add_change_flags(p)

    mode = sub.add_parser("mode", help="working mode: standard or pure-cloud (NAT 1:1)")
    ms = mode.add_subparsers(dest="action", metavar="ACTION", required=True,
                             parser_class=_Parser)
    add(ms, "show", cmd_mode_show, "the working mode and the settings it implies")
    p = add(ms, "set", cmd_mode_set, "switch the working mode")
    p.add_argument("mode", choices=["standard", "pure-cloud"])
    add_change_flags(p)
    services_cli.register(sub, add)
    ha_cli.register(sub, add)
    jobs_cli.register(sub, add)
    mcs_cli.register(sub, add)
    licence_cli.register(sub, add)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = Client(args.socket)
    try:
        code: int = args.handler(client, args)
        return code
    except VoxnodeError as exc:
        error = exc  # outlives the except clause, for the lambda
        output.show(args, {"error": error.to_dict()}, lambda _: output.error(error))
        return error.exit_code
    except KeyboardInterrupt:
        output.err.print("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
