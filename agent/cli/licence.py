"""`voxnode license …`: the Security Update client from the command line.

``activate`` → a code is emailed → ``verify`` installs the licence and notifies processes
and restarts; ``show``, ``check``; ``update`` shows the review (changed modules, units that
restart) and asks before applying; ``remove`` asks too; ``assignments`` lists and changes
who holds counted modules.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from agent.cli import output
from agent.cli.client import Client
from agent.errors import EXIT_APPLY_FAILED, EXIT_OK, EXIT_REFUSED
from agent.licence import errors as _licence_errors  # noqa: F401  (exit statuses by code)

Handler = Callable[[Client, argparse.Namespace], int]
AddCommand = Callable[[Any, str, Handler, str], argparse.ArgumentParser]


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes:
        return True
    if not sys.stdin.isatty():
        output.err.print(f"{question} Not confirmed (no terminal): repeat with --yes.")
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _human_show(d: dict[str, Any]) -> None:
    colour = "green" if d["state"] == "ACTIVE" else (
        "yellow" if d["state"] in ("GRACE", "CODE_SENT") else "red")
    output.out.print(f"Licence state: [bold {colour}]{d['state']}[/] — {d['reason']}")
    output.kv_table([
        ("serial", d["serial"]), ("company", d["company"]), ("email", d["email"]),
        ("version", d["version"]),
        ("valid until", output.when(d["valid_until"]) if d["valid_until"] else (
            "perpetual" if d["serial"] and d["version"] else None)),
        ("grace until", output.when(d["grace_until"]) if d["grace_until"] else None),
        ("last check", output.when(d["last_check"])),
        ("last successful check", output.when(d["last_successful_check"])),
        ("server", d["server_url"]),
    ])
    if d["modules"]:
        output.table(["module", "enabled", "limit"],
                     [[m["name"], m["enabled"], m["limit"] if m["limit"] is not None else "-"]
                      for m in d["modules"]], title="Modules")
    for key in ("alarm", "clock_warning"):
        if d[key]:
            output.out.print(f"[bold red]{key.replace('_', ' ')}:[/] {d[key]}")
    if d["update_available"]:
        output.out.print(f"[yellow]update available:[/] version "
                         f"{d['update_available']['version']}: run `voxnode license update`")


def _human_effects(d: dict[str, Any]) -> None:
    for m in d.get("modules", []):
        output.out.print(f"  module {m['module']}: {m['before']} → {m['after']}")
    for u in d.get("units", []):
        output.out.print(f"  {u['action']} {u['name']} ({u['unit']})")
    restart = d.get("restart")
    if isinstance(restart, dict):
        output.out.print(f"Notify processes and restart: {len(restart['steps'])} steps, "
                         f"{restart['failed']} failed.")
    elif restart:
        output.out.print(f"Restart {restart}.")


def cmd_activate(client: Client, args: argparse.Namespace) -> int:
    d = client.post("/v1/licence/activate", {"serial": args.serial, "email": args.email})
    return output.show(args, d, lambda d: output.out.print(
        f"A verification code for {d['serial']} was emailed to "
        f"{d['sent_to'] or 'the order address'} (valid "
        f"{d['expires_in'] // 60} min): run `voxnode license verify --code C`."))


def cmd_verify(client: Client, args: argparse.Namespace) -> int:
    d = client.post("/v1/licence/verify", {"code": args.code})
    output.show(args, d, _human_installed)
    return _restart_status(d)


def _human_installed(d: dict[str, Any]) -> None:
    _human_show(d["licence"])
    _human_effects(d)


def _restart_status(d: dict[str, Any]) -> int:
    restart = d.get("restart")
    return EXIT_APPLY_FAILED if isinstance(restart, dict) and restart["failed"] else EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    return output.show(args, client.get("/v1/licence"), _human_show)


def cmd_check(client: Client, args: argparse.Namespace) -> int:
    return output.show(args, client.post("/v1/licence/check", {}), _human_check)


def _human_check(d: dict[str, Any]) -> None:
    if d.get("ended"):
        shown = d["licence"]
        output.out.print(f"The licence server ended this node's licence: {shown['state']} — "
                         f"{shown['reason']}")
    elif d["update_available"]:
        output.out.print(f"Licence version {d['server_version']} is available (installed "
                         f"{d['installed_version']}); changed modules:")
        _human_effects({"modules": d["modules"]})
        output.out.print("Apply it with `voxnode license update`.")
    else:
        output.out.print(f"The licence is up to date (version {d['installed_version']}).")


def cmd_update(client: Client, args: argparse.Namespace) -> int:
    release = [r for r in (args.release or "").split(",") if r]
    review = client.post("/v1/licence/update", {"apply": False, "release": release})
    if not args.json:
        _human_review(review)
    if not review["reductions"] and not _confirm(args, "Apply the licence update?"):
        # a person saw the review above; a script gets it with the answer
        output.show(args, {"applied": False, **review}, lambda _: None)
        return EXIT_REFUSED
    d = client.post("/v1/licence/update", {"apply": True, "release": release})
    output.show(args, d, _human_updated)
    return _restart_status(d)


def _human_review(review: dict[str, Any]) -> None:
    output.out.print(f"Licence update: version {review['version']['installed']} → "
                     f"{review['version']['new']}")
    _human_effects(review)
    output.out.print("Applying interrupts service: the units above restart." if
                     review["interruption"] else "No service interruption: no unit "
                     "starts or stops.")
    for r in review["reductions"]:
        output.out.print(f"[bold red]reduction:[/] {r['path']}: {r['message']}")


def _human_updated(d: dict[str, Any]) -> None:
    if d.get("restart") and not isinstance(d["restart"], dict):
        output.out.print(f"Restart {d['restart']}.")
    elif isinstance(d.get("restart"), dict):
        _human_effects({"restart": d["restart"]})
    output.out.print(f"[bold green]Licence version {d['version']['new']} applied.[/]")


def cmd_remove(client: Client, args: argparse.Namespace) -> int:
    if not _confirm(args, "Remove the licence? The node works unlicensed for 30 days."):
        return EXIT_REFUSED
    return output.show(args, client.post("/v1/licence/remove", {}), _human_removed)


def _human_removed(d: dict[str, Any]) -> None:
    _human_show(d["licence"])
    output.out.print(f"Removal notice emailed to {d['notice_sent_to'] or 'the order address'}.")


def cmd_assignments(client: Client, args: argparse.Namespace) -> int:
    if args.assign or args.unassign:
        if not args.module:
            output.err.print("give --module with --assign/--unassign")
            return 2
        d = client.post("/v1/licence/assignments", {
            "module": args.module, "assign": _split(args.assign),
            "unassign": _split(args.unassign)})
    else:
        d = client.get("/v1/licence/assignments")
    return output.show(args, d, lambda d: output.table(
        ["module", "limit", "assigned", "holders"],
        [[a["module"], "unlimited" if a["limit"] is None else a["limit"],
          len(a["holders"]), a["holders"]] for a in d["assignments"]]))


def _split(text: str | None) -> list[str]:
    return [u.strip() for u in (text or "").split(",") if u.strip()]


def register(subparsers: Any, add: AddCommand) -> None:
    """Add ``license activate|verify|show|check|update|remove|assignments``."""
    lic = subparsers.add_parser("license", help="the licence (Security Update): activate, "
                                "check, update, remove, assignments")
    actions = lic.add_subparsers(dest="action", metavar="ACTION", required=True,
                                 parser_class=type(lic))
    p = add(actions, "activate", cmd_activate,
            "ask the licence server to email a verification code to the order's address")
    p.add_argument("--serial", required=True, help="the serial number of the order")
    p.add_argument("--email", required=True, help="the email address given with the order")
    p = add(actions, "verify", cmd_verify, "send the emailed code: the licence is installed, "
            "then processes are notified and restarted")
    p.add_argument("--code", required=True, help="the verification code from the email")
    add(actions, "show", cmd_show, "state, modules, limits, expiry, serial, company, email "
        "and the last check")
    add(actions, "check", cmd_check, "ask the licence server for a newer licence now")
    p = add(actions, "update", cmd_update, "review and apply a licence update found by a "
            "check (lists changed modules and the units that restart; asks to confirm)")
    p.add_argument("--release", metavar="USER,…", help="holders that lose a counted module "
                   "when the update lowers its limit")
    p.add_argument("--yes", action="store_true", help="apply without asking")
    p = add(actions, "remove", cmd_remove, "release the licence (emailed notice); the node "
            "works unlicensed for 30 calendar days")
    p.add_argument("--yes", action="store_true", help="remove without asking")
    p = add(actions, "assignments", cmd_assignments, "who holds counted modules; with "
            "--module and --assign/--unassign, change it")
    p.add_argument("--module", help="a counted module, like WEB_CLIENT_SMART")
    p.add_argument("--assign", metavar="USER,…")
    p.add_argument("--unassign", metavar="USER,…")
