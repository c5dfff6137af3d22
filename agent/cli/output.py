"""How the CLI shows things: to a person as tables and sentences, to a script as JSON
(``--json``); ``show`` picks one for every command."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from agent.errors import EXIT_OK, VoxnodeError

Data = TypeVar("Data")


class _Console(Console):
    """Text from the agent (a comment, a hostname, a server's error) may hold what reads as
    markup (``[/]``): printed literally rather than raising."""

    def print(self, *objects: Any, **kwargs: Any) -> None:
        try:
            super().print(*objects, **kwargs)
        except MarkupError:
            kwargs["markup"] = False
            super().print(*objects, **kwargs)


out = _Console(highlight=False, soft_wrap=True, emoji=False)
err = _Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def styled(markup: str) -> Text:
    """A table cell with deliberate markup (its data parts escaped by the caller); every
    other cell is shown literally."""
    return Text.from_markup(markup)


def _value(v: Any) -> Text:
    if isinstance(v, Text):
        return v
    if v is None:
        return Text("-")
    if isinstance(v, list):
        return Text(", ".join(str(x) for x in v) or "(none)")
    if isinstance(v, bool):
        return Text("yes" if v else "no")
    return Text(str(v))


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def kv_table(rows: list[tuple[str, Any]], title: str | None = None) -> None:
    table = Table(show_header=False, box=None, title=title, title_justify="left", pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, _value(value))
    out.print(table)


def table(headers: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    t = Table(title=title, title_justify="left")
    for h in headers:
        t.add_column(h)
    for row in rows:
        t.add_row(*(_value(c) for c in row))
    out.print(t)


def error(exc: VoxnodeError) -> None:
    err.print(f"[bold red]error:[/] {escape(exc.message)}")
    for problem in exc.problems:
        err.print(f"  {problem}", markup=False)
    if exc.remedy:
        err.print(f"[dim]{escape(exc.remedy)}[/]")


def outcome(data: dict[str, Any]) -> None:
    """Print the result of anything that went through the change pipeline."""
    plan = data["plan"]
    fields = plan["fields"]
    if fields:
        table(
            ["setting", "now", "new"],
            [[f["path"], f["old"], f["new"]] for f in fields],
            title=f"Changes against revision {plan['base_revision']}",
        )
    else:
        out.print(f"The document equals revision {plan['base_revision']}.")
    for sub in plan["subsystems"]:
        # each item is {code, params, text}: a person reads the text
        for step in sub["steps"]:
            out.print(f"  [cyan]{sub['subsystem']}[/]: {escape(step['text'])}")
        for warning in sub["warnings"]:
            out.print(f"  [yellow]warning[/] ({sub['subsystem']}): {escape(warning['text'])}")
        for ack in sub["acknowledge"]:
            out.print(f"  [bold red]will be lost[/] ({sub['subsystem']}): {escape(ack['text'])}")
    if data["dry_run"]:
        out.print("[bold]Dry run:[/] nothing was changed.")
        return
    changes = data["changes"]
    count = sum(len(v) for v in changes.values())
    for sub, items in changes.items():
        for change in items:
            detail = f" ({change['detail']})" if change["detail"] else ""
            out.print(f"  [green]done[/] {sub}: " + escape(
                f"{change['action']} {change['target']}{detail}"))
    revision = data["revision"]
    if revision:
        out.print(f"[bold green]Revision {revision['revision']} committed[/] ({count} changes).")
    else:
        out.print(f"No new revision: the machine was re-converged ({count} changes).")
    if data["confirm_deadline"]:
        left = max(0, int(data["confirm_deadline"] - dt.datetime.now().timestamp()))
        out.print(
            f"[bold yellow]Run `voxnode config confirm` within {left} s[/] or the node "
            "returns to the previous revision by itself."
        )


def show(args: argparse.Namespace, data: Data, human: Callable[[Data], object]) -> int:
    """With ``--json``, ``data`` as indented JSON on standard output; otherwise
    ``human(data)``. Returns EXIT_OK, so a command can end with ``return show(...)``."""
    if getattr(args, "json", False):
        write_raw(json.dumps(data, indent=2) + "\n")
    else:
        human(data)
    return EXIT_OK


def write_raw(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
