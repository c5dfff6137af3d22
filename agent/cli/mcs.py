"""`voxnode mcs …`: the MCS client (OpenVPN tunnel to the MCS for smart working).

``upload FILE`` sends the bundle downloaded from MCS (a ``.ovpn``, or the zip/tar holding
it and its certificates; a ``.ovpn`` that names separate files sends those from its
directory too), ``status``, ``start``/``stop`` (the operator's switch) and ``remove --yes``.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cli import output
from agent.cli.client import Client
from agent.errors import InvalidInput, Problem
from agent.mcs.ovpn import MATERIAL, decode_text, read_directives

Handler = Callable[[Client, argparse.Namespace], int]
AddCommand = Callable[[Any, str, Handler, str], argparse.ArgumentParser]


def _read(name: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read {name}",
                           problems=[Problem(name, exc.strerror or str(exc))]) from None


def referenced_files(name: str, data: bytes) -> dict[str, str]:
    """The files a plain ``.ovpn`` names (ca, cert, key, tls-auth, tls-crypt) that exist
    next to it, base64-encoded by the name the configuration uses."""
    text = decode_text(data)
    if name == "-" or text is None:
        return {}
    directives, _ = read_directives(text, name)
    found: dict[str, str] = {}
    for d in directives:
        if d.name in MATERIAL and d.inline is None and d.args:
            candidate = Path(name).parent / d.args[0]
            if candidate.is_file():
                found[d.args[0]] = base64.b64encode(candidate.read_bytes()).decode()
    return found


def _summary_rows(s: dict[str, Any]) -> list[tuple[str, Any]]:
    return [("remote", s.get("remote")), ("certificate", s.get("subject_cn")),
            ("issued by", s.get("issuer_cn")),
            ("expires", f"{s.get('not_after')} ({s.get('days_left')} days left)"
             if s.get("not_after") else None)]


def cmd_upload(client: Client, args: argparse.Namespace) -> int:
    data = _read(args.file)
    body = {"name": "<stdin>" if args.file == "-" else Path(args.file).name,
            "data": base64.b64encode(data).decode(), "files": referenced_files(args.file, data),
            "dry_run": args.dry_run}
    return output.show(args, client.post("/v1/mcs/bundle", body), _uploaded)


def _uploaded(answer: dict[str, Any]) -> None:
    output.kv_table(_summary_rows(answer["summary"]), title="MCS bundle")
    for item in answer.get("ignored", []):
        output.out.print(f"  [yellow]ignored[/]: {item} (set by voxnode, or Windows only)")
    if answer["dry_run"]:
        output.out.print("[bold]Dry run:[/] valid; would write " +
                         ", ".join(answer["would_write"]) + ". Nothing was changed.")
        return
    written = answer["written"]
    output.out.print(f"[bold green]Installed[/] ({len(written)} files changed)."
                     if written else "Already installed: the files are unchanged.")
    unit = answer["unit"]
    if unit["running"]:
        output.out.print(f"The MCS client runs: {unit['why']}.")
    else:
        output.out.print(f"[yellow]The MCS client does not run:[/] {unit['why']}.")


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    return output.show(args, client.get("/v1/mcs"), _show_status)


def _show_status(d: dict[str, Any]) -> None:
    t, unit, bundle = d["tunnel"], d["unit"], d["bundle"] or {}
    since = output.when(t["since"]) if t["since"] else None
    rows: list[tuple[str, Any]] = [
        ("status", d["status"]),
        ("operator", "STOPPED (voxnode mcs start)" if d["operator_stopped"] else "started"),
        *(_summary_rows(bundle) if d["configured"] else [("bundle", "none uploaded")]),
        ("unit", f"{unit['name']}: {unit['state']}, {unit['enabled']}" if unit else None),
        ("catalogue", d["reason"]),
        ("tunnel", f"{t['interface']} {', '.join(t['addresses']) or 'down'}"),
        ("openvpn", f"{t['state']} since {since} with {t['remote']}" if t["state"]
         else t["management"]),
        ("traffic", f"{t['bytes_in']} bytes in, {t['bytes_out']} bytes out"
         if t["bytes_in"] is not None else None),
    ]
    output.kv_table(rows)


def cmd_start(client: Client, args: argparse.Namespace) -> int:
    answer = client.post("/v1/mcs/start", {})
    return output.show(
        args, answer, lambda a: output.out.print(f"MCS client started: {a['unit']['why']}."))


def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    answer = client.post("/v1/mcs/stop", {})
    return output.show(args, answer, lambda _: output.out.print(
        "MCS client stopped; it stays stopped until `voxnode mcs start`."))


def cmd_remove(client: Client, args: argparse.Namespace) -> int:
    answer = client.request("DELETE", "/v1/mcs/bundle", {"yes": args.yes})
    return output.show(args, answer, _removed)


def _removed(answer: dict[str, Any]) -> None:
    if answer["removed"]:
        output.out.print(f"Removed {', '.join(answer['removed'])}.")
    else:
        output.out.print("Nothing to remove: the MCS client is not configured.")


def register(subparsers: Any, add: AddCommand) -> None:
    """Add ``mcs upload|status|start|stop|remove`` to the top-level subparsers."""
    mcs = subparsers.add_parser(
        "mcs", help="the MCS client: OpenVPN tunnel to the MCS for smart working")
    actions = mcs.add_subparsers(dest="action", metavar="ACTION", required=True,
                                 parser_class=type(mcs))
    p = add(actions, "upload", cmd_upload,
            "validate and install the VPN bundle downloaded from MCS (.ovpn, zip or tar), "
            "then start the client")
    p.add_argument("file", metavar="FILE", help="the bundle, or - for standard input")
    p.add_argument("--dry-run", action="store_true", help="validate only; change nothing")
    add(actions, "status", cmd_status,
        "configured or not, the operator's STOP, the unit, the tunnel and its traffic")
    add(actions, "start", cmd_start,
        "START: start the client (if the licence, role and mode allow it) and keep it running")
    add(actions, "stop", cmd_stop, "STOP: stop the client and keep it stopped until start")
    p = add(actions, "remove", cmd_remove, "delete the MCS client configuration")
    p.add_argument("--yes", action="store_true",
                   help="confirm: the certificate and configuration are deleted")
