"""`voxnode services …`: which PBX processes run and why, reconcile, restart them all.

``restart-all`` reads the agent's newline-delimited JSON progress as it arrives and shows
it with a progress bar (``--json``: one summary object at the end).
"""

from __future__ import annotations

import argparse
import http.client
import json
from collections.abc import Callable, Iterator
from typing import Any

from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from agent.cli import output
from agent.cli.client import Client, _UnixConnection
from agent.errors import (
    EXIT_APPLY_FAILED,
    EXIT_OK,
    AgentUnreachable,
    VoxnodeError,
    error_from_dict,
)

Handler = Callable[[Client, argparse.Namespace], int]
AddCommand = Callable[[Any, str, Handler, str], argparse.ArgumentParser]


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    return output.show(args, client.get("/v1/services"), _show_units)


def _show_units(data: dict[str, Any]) -> None:
    lic = data["licence"]
    licence = f"active ({', '.join(lic['modules']) or 'no modules'})" if lic["active"] else (
        f"OFF: {lic['reason']}")
    output.kv_table([("catalogue", data["catalogue"]), ("role", data["role"]),
                     ("working mode", data["mode"]), ("licence", licence)])
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for header in ("service", "unit", "wanted", "state", "enabled"):
        table.add_column(header, no_wrap=True, min_width=len(header))
    for u in data["units"]:
        state = f"[yellow]{u['state']}[/]" if u["drift"] else u["state"]
        table.add_row(u["name"], u["unit"], "yes" if u["wanted"] else "no", state, u["enabled"])
    output.out.print(table)
    for u in data["units"]:
        output.out.print(f"[bold]{u['name']}[/]: {u['reason']}")
    for u in data["units"]:
        if u["drift"]:
            output.out.print(f"[yellow]{u['name']}[/] ({u['unit']}): {u['drift']}")


def cmd_reconcile(client: Client, args: argparse.Namespace) -> int:
    data = client.post("/v1/services/reconcile", {})
    output.show(args, data, _reconciled)
    return EXIT_APPLY_FAILED if data["failures"] else EXIT_OK


def _reconciled(data: dict[str, Any]) -> None:
    for c in data["changes"]:
        detail = f" ({c['detail']})" if c["detail"] else ""
        output.out.print(f"  [green]done[/] {c['action']} {c['target']}{detail}")
    for f in data["failures"]:
        output.err.print(f"[bold red]failed:[/] {f['message']}", markup=True)
    if not data["changes"] and not data["failures"]:
        output.out.print("Nothing to do: every unit is as the catalogue says.")


def _stream(client: Client, path: str) -> Iterator[dict[str, Any]]:
    """POST ``path`` and yield each JSON line of the answer as it arrives."""
    conn = _UnixConnection(client.socket_path, client.timeout)
    try:
        try:
            conn.request("POST", path, body=b"{}", headers={"Content-Type": "application/json"})
            response = conn.getresponse()
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as exc:
            raise AgentUnreachable(
                f"cannot reach the agent at {client.socket_path}: {exc.strerror}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise AgentUnreachable(f"lost the agent at {client.socket_path}: {exc}") from None
        if response.status >= 400:
            try:
                error = json.loads(response.read()).get("error")
            except (ValueError, AttributeError):
                error = None
            if isinstance(error, dict):
                raise error_from_dict(error)
            raise VoxnodeError(f"the agent answered HTTP {response.status} without details")
        while True:
            try:
                raw = response.readline()
            except (OSError, http.client.HTTPException) as exc:
                raise AgentUnreachable(
                    f"lost the agent at {client.socket_path} during the restart: {exc}"
                ) from None
            if not raw:
                return
            if raw.strip():
                yield json.loads(raw)
    finally:
        conn.close()


def cmd_restart_all(client: Client, args: argparse.Namespace) -> int:
    done: dict[str, Any] | None = None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        console=output.out, transient=True, disable=args.json)
    with progress:
        task = progress.add_task("restarting services", total=None)
        for line in _stream(client, "/v1/services/restart-all"):
            if "error" in line:
                raise error_from_dict(line["error"])
            if "done" in line:
                done = line["done"]
                continue
            step = line["step"]
            what = f"{step['action']} {step['name']} ({step['unit']})"
            progress.update(task, total=step["total"], description=what)
            if step["status"] in ("done", "failed"):
                progress.advance(task)
                if args.json:
                    continue
                if step["status"] == "done":
                    progress.console.print(f"  [green]done[/] {what}")
                else:
                    progress.console.print(f"  [bold red]failed[/] {what}: {step['message']}")
    if done is None:
        raise AgentUnreachable("the agent ended the restart without a summary; see its log")
    output.show(args, done, _restarted)
    return EXIT_APPLY_FAILED if done["failed"] else EXIT_OK


def _restarted(done: dict[str, Any]) -> None:
    if done["failed"]:
        output.err.print(f"[bold red]{done['failed']} of {len(done['steps'])} steps failed.[/]")
    else:
        output.out.print(f"[bold green]All {len(done['steps'])} steps done.[/]")


def register(subparsers: Any, add: AddCommand) -> None:
    """Add ``services list|reconcile|restart-all`` to the top-level subparsers."""
    services = subparsers.add_parser(
        "services", help="the PBX processes: which units run, why, and their state")
    actions = services.add_subparsers(dest="action", metavar="ACTION", required=True,
                                      parser_class=type(services))
    add(actions, "list", cmd_list,
        "each unit of the catalogue: wanted or not and why, and its systemd state")
    add(actions, "reconcile", cmd_reconcile,
        "converge the units now: start the wanted ones, stop the others")
    add(actions, "restart-all", cmd_restart_all,
        "notify processes and restart: stop the services in reverse order, then start "
        "those the licence, role and mode want, in order, showing progress (with --json: "
        "one JSON summary at the end)")
