"""`voxnode jobs …`: scheduled and immediate jobs, their steps, progress and history.

``schedule --wait`` follows the job by polling the agent and shows its progress with a
bar; it exits 0 when the job succeeds and 4 otherwise. ``--at`` takes HH:MM (today, or
tomorrow if that time has passed) or ISO 8601 (local time unless a zone is given).
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn

from agent.cli import output
from agent.cli.client import Client
from agent.errors import EXIT_APPLY_FAILED, EXIT_OK, InvalidInput, Problem

Handler = Callable[[Client, argparse.Namespace], int]
AddCommand = Callable[[Any, str, Handler, str], argparse.ArgumentParser]

POLL_S = 0.5
ACTIVE = ("scheduled", "running")
_HHMM = re.compile(r"^(\d{1,2}):(\d{2})$")
_AT_HELP = ("HH:MM (today, or tomorrow if that time has passed) or ISO 8601 like "
            "2026-11-23T02:00 (local time unless a zone is given)")
_STEP_STYLE = {"succeeded": "[green]done[/]", "skipped": "[yellow]skipped[/]",
               "failed": "[bold red]failed[/]", "interrupted": "[bold red]interrupted[/]",
               "cancelled": "[yellow]cancelled[/]"}


def eta(seconds: int | None) -> str:
    """Time left as an operator reads it: 45 s, 12 min, 2 h 05 min."""
    if seconds is None:
        return ""
    if seconds < 90:
        return f"{seconds} s left"
    if seconds < 5400:
        return f"{round(seconds / 60)} min left"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min left"


def parse_at(text: str, now: datetime | None = None) -> datetime:
    """``--at`` → an aware datetime in the future, or InvalidInput naming ``--at``."""
    now = now or datetime.now().astimezone()
    match = _HHMM.match(text)
    if match:
        hour, minute = int(match[1]), int(match[2])
        if hour > 23 or minute > 59:
            raise _bad_at(f"'{text}' is not a time of day: give {_AT_HELP}")
        naive = now.replace(tzinfo=None, hour=hour, minute=minute, second=0, microsecond=0)
        when = naive.astimezone()
        if when <= now:
            when = (naive + timedelta(days=1)).astimezone()
        return when
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _bad_at(f"'{text}' is not a time: give {_AT_HELP}") from None
    if len(text) <= 10:  # a date alone would silently mean midnight
        raise _bad_at(f"'{text}' gives no time of day: give {_AT_HELP}")
    when = parsed if parsed.tzinfo else parsed.astimezone()
    if when <= now:
        raise _bad_at(f"{when.isoformat(timespec='minutes')} is in the past")
    return when


def _bad_at(message: str) -> InvalidInput:
    return InvalidInput("bad --at time", problems=[Problem("--at", message)])


def _due(job: dict[str, Any]) -> str:
    return output.when(job["scheduled_at"]) if job["scheduled_at"] else "now"


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    def human(d: dict[str, Any]) -> None:
        if not d["jobs"]:
            output.out.print("No jobs yet: see `voxnode jobs kinds`, then "
                             "`voxnode jobs schedule`.")
            return
        output.table(
            ["id", "job", "state", "due", "started", "finished", "progress", "result"],
            [[j["id"], j["name"], j["state"], _due(j), output.when(j["started"]),
              output.when(j["finished"]), f"{j['progress']}%", j["error"] or j["result"]]
             for j in d["jobs"]],
        )

    return output.show(args, client.get("/v1/jobs"), human)


def _show_job(job: dict[str, Any]) -> None:
    output.kv_table([
        ("job", f"{job['id']} {job['name']} ({job['title']})"),
        ("state", job["state"]),
        ("progress", f"{job['progress']}%" + (f" ({eta(job.get('eta_s'))})"
                                              if job.get("eta_s") is not None else "")),
        *([("parameters", ", ".join(f"{k}={v}" for k, v in job["params"].items()))]
          if job.get("params") else []),
        ("due", _due(job)),
        ("started", output.when(job["started"])),
        ("finished", output.when(job["finished"])),
        ("result", job["result"] or "-"),
        *([("error", job["error"])] if job["error"] else []),
    ])
    output.table(["#", "step", "state", "progress", "message"],
                 [[i, s["title"], s["state"], f"{s['progress']}%", s["message"]]
                  for i, s in enumerate(job["steps"], start=1)])


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    return output.show(args, client.get(f"/v1/jobs/{args.id}"), _show_job)


def follow(client: Client, job: dict[str, Any], quiet: bool) -> dict[str, Any]:
    """Poll the job until it ends, with a progress bar and one line per finished step."""
    shown: set[str] = set()
    progress = Progress(TextColumn("{task.description}"), BarColumn(),
                        TextColumn("{task.percentage:>3.0f}%"), console=output.out,
                        transient=True, disable=quiet)
    with progress:
        task = progress.add_task(job["title"], total=100)
        while True:
            for index, step in enumerate(job["steps"], start=1):
                if step["state"] in _STEP_STYLE and step["name"] not in shown:
                    shown.add(step["name"])
                    if not quiet:
                        note = f": {step['message']}" if step["message"] else ""
                        progress.console.print(
                            f"  {_STEP_STYLE[step['state']]} {index}. {step['title']}{note}")
            if job["state"] not in ACTIVE:
                return job
            running = next((s for s in job["steps"] if s["state"] == "running"), None)
            if job["state"] == "scheduled":
                what = f"{job['title']}: waiting, due {_due(job)}"
            else:
                what = f"{job['title']}: {running['title'] if running else 'starting'}"
                if running and running.get("message"):
                    what += f" ({running['message'][:80]})"
                if job.get("eta_s") is not None:
                    what += f", {eta(job['eta_s'])}"
            progress.update(task, completed=job["progress"], description=what)
            time.sleep(POLL_S)
            job = client.get(f"/v1/jobs/{job['id']}")


def cmd_schedule(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"name": args.name}
    if args.at is not None:
        body["at"] = parse_at(args.at).isoformat()
    job = client.post("/v1/jobs", body)
    if not args.wait:
        return output.show(args, job, _scheduled)
    job = follow(client, job, args.json)
    output.show(args, job, ended)
    return EXIT_OK if job["state"] == "succeeded" else EXIT_APPLY_FAILED


def _scheduled(job: dict[str, Any]) -> None:
    when = f"for {_due(job)}" if job["scheduled_at"] else "to run now"
    output.out.print(f"Job {job['id']} ({job['title']}) scheduled {when}; follow it "
                     f"with `voxnode jobs show {job['id']}`.")


def ended(job: dict[str, Any]) -> None:
    if job["state"] == "succeeded":
        output.out.print(f"[bold green]Job {job['id']} succeeded:[/] {job['result']}.")
    else:
        output.err.print(f"[bold red]Job {job['id']} {job['state']}:[/] {job['error']}")


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.post(f"/v1/jobs/{args.id}/cancel", {})

    def human(j: dict[str, Any]) -> None:
        if j["state"] == "cancelled":
            output.out.print(f"Job {j['id']} ({j['title']}) cancelled: {j['error']}.")
        else:
            output.out.print(f"Job {j['id']} ({j['title']}) is {j['state']}: the cancel is "
                             f"under way; see `voxnode jobs show {j['id']}`.")

    return output.show(args, job, human)


def cmd_kinds(client: Client, args: argparse.Namespace) -> int:
    def human(d: dict[str, Any]) -> None:
        if not d["kinds"]:
            output.out.print("This node has no job kinds.")
        for kind in d["kinds"]:
            output.out.print(f"[bold]{kind['name']}[/] ({kind['title']}): {kind['description']}")
            for i, step in enumerate(kind["steps"], start=1):
                output.out.print(f"  {i}. {step['title']}", markup=False)

    return output.show(args, client.get("/v1/jobs/kinds"), human)


def register(subparsers: Any, add: AddCommand) -> None:
    """Add ``jobs list|show|schedule|cancel|kinds`` to the top-level subparsers."""
    jobs = subparsers.add_parser(
        "jobs", help="scheduled and immediate jobs (e.g. the MongoDB update): steps, progress")
    actions = jobs.add_subparsers(dest="action", metavar="ACTION", required=True,
                                  parser_class=type(jobs))
    add(actions, "list", cmd_list, "the jobs kept, newest first: state, due time, progress")
    p = add(actions, "show", cmd_show, "one job: its steps, their state, progress and messages")
    p.add_argument("id", type=int, metavar="ID")
    p = add(actions, "schedule", cmd_schedule,
            "schedule a job now or at a time (see `voxnode jobs kinds`); exit 4 if a "
            "followed job does not succeed")
    p.add_argument("name", metavar="NAME", help="the job kind, e.g. mongodb-update")
    p.add_argument("--at", metavar="TIME", help=f"when to run it: {_AT_HELP}; default now")
    p.add_argument("--wait", action="store_true",
                   help="follow the job's progress until it ends")
    p = add(actions, "cancel", cmd_cancel, "cancel a scheduled job, or a running one of a kind "
            "that allows it (a full sync): its step stops and cleans up")
    p.add_argument("id", type=int, metavar="ID")
    add(actions, "kinds", cmd_kinds, "the job kinds this node knows, with their steps")
