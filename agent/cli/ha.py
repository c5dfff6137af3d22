"""`voxnode ha …`: the pair's status, events, STATE control, switchover and pair key."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from agent.cli import output
from agent.cli.client import Client
from agent.errors import EXIT_APPLY_FAILED, EXIT_OK, InvalidInput, Problem

Handler = Callable[[Client, argparse.Namespace], int]
AddCommand = Callable[[Any, str, Handler, str], argparse.ArgumentParser]


def show_status(d: dict[str, Any]) -> None:
    if not d["running"]:
        state = "enabled but not running" if d["enabled"] else "not enabled"
        output.out.print(f"Fault tolerance: {state}")
        for blocker in d.get("failover_blockers", []):
            output.out.print(f"[yellow]•[/] {blocker['text']}")
        return
    peer = d["peer"]
    last = d["last_transition"]
    busy = d.get("transition_in_progress")
    output.kv_table([
        ("role", f"{d['role']} (epoch {d['epoch']}, {d['profile']} profile"
         f"{', cloud pair' if d['cloud'] else ''})"),
        ("this node", d["node_id"]),
        ("peer", f"{peer['address']}: " + (
            f"{peer['role']} (epoch {peer['epoch']}), heard {peer['last_seen_ms']} ms ago"
            if peer["reachable"] else "UNREACHABLE")),
        ("heartbeat channels", "; ".join(
            f"{name} " + (f"heard {c['last_heard_ms']} ms ago" if c["last_heard_ms"] is not None
                          else "never heard")
            + (f", FAILING: {c['error']}" if c["error"] else "")
            for name, c in peer["channels"].items())),
        ("node IP", ", ".join(f"{n['address']} on {n['interface']}" for n in d["node_ip"])
         or "none (cloud pair)"),
        ("held by", d["node_ip_holder"]),
        ("witnesses", ", ".join(
            f"{w['address']} {'reachable' if w['reachable'] else 'UNREACHABLE'}"
            for w in d["witnesses"]) or "none"),
        ("arbiter", _arbiter(d["arbiter"])),
        ("decision", d["decision"]),
        *([("in progress", f"{busy['from']} → {busy['to']} since "
            f"{output.when(busy['time'])}: {busy['reason']}")] if busy else []),
        ("last transition", f"{last['from']} → {last['to']} at {output.when(last['time'])}: "
         f"{last['reason']}" if last else "none yet"),
        ("rejected messages", _rejected(peer["rejected_messages"])),
        *([("database", f"{d['database']['state']}: {d['database']['detail']}")]
          if d.get("database") else []),
    ])
    if d["failover_blockers"]:
        output.out.print("[bold yellow]Failover is impossible now:[/]")
        for blocker in d["failover_blockers"]:
            output.out.print(f"  • {blocker['text']}")
    if d["health"]:
        output.out.print("[bold yellow]Health:[/]")
        for reason in d["health"]:
            output.out.print(f"  • {reason['text']}")
    if d.get("next_step"):
        output.out.print(f"[bold]Next step:[/] {d['next_step']}")


def _arbiter(a: dict[str, Any] | None) -> str:
    if a is None:
        return "none"
    heard = (f"answered {a['last_answer_ms']} ms ago" if a["last_answer_ms"] is not None
             else "never answered")
    left = f", {a['lease_left_ms']} ms left" if a["lease_left_ms"] is not None else ""
    return f"{a['address']}: {heard}; lease held by {a['lease_holder']}{left}"


def _rejected(r: dict[str, Any]) -> str:
    if not r["count"]:
        return "none"
    last = r["sources"][0] if r["sources"] else None
    return f"{r['count']}" + (f" (last from {last['source']}: {last['last_reason']})"
                              if last else "")


def cmd_status(client: Client, args: argparse.Namespace) -> int:
    return output.show(args, client.get("/v1/ha"), show_status)


def cmd_events(client: Client, args: argparse.Namespace) -> int:
    def human(d: dict[str, Any]) -> None:
        output.table(
            ["time", "from", "to", "epoch", "reason", "steps"],
            [[output.when(e["time"]), e["from"], e["to"], e["epoch"], e["reason"],
              "; ".join(e["steps"])] for e in d["events"]],
        )
    return output.show(args, client.get("/v1/ha/events"), human)


def cmd_set_state(client: Client, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"state": args.state}
    if args.force:
        body["force"] = True
    data = client.post("/v1/ha/state", body)
    return output.show(args, data, show_status)


def cmd_switchover(client: Client, args: argparse.Namespace) -> int:
    data = client.post("/v1/ha/switchover", {})
    return output.show(args, data, show_status)


def cmd_full_sync(client: Client, args: argparse.Namespace) -> int:
    from agent.cli.jobs import ended, follow

    job = client.post("/v1/ha/full-sync", {"what": args.what})
    if not args.wait:
        return output.show(args, job, lambda j: output.out.print(
            f"Full sync started as job {j['id']} ({j['params'].get('what', 'all')}): follow "
            f"it with `voxnode jobs show {j['id']}`, stop it with `voxnode jobs cancel "
            f"{j['id']}` (the node stays marked as needing a full sync)."))
    job = follow(client, job, args.json)
    output.show(args, job, ended)
    return EXIT_OK if job["state"] == "succeeded" else EXIT_APPLY_FAILED


def cmd_key_generate(client: Client, args: argparse.Namespace) -> int:
    data = client.post("/v1/ha/pair-key", {"generate": True})

    def human(d: dict[str, Any]) -> None:
        output.write_raw(d["key"] + "\n")
        output.err.print("Installed. On the other node run: voxnode ha pair-key set - "
                         "(and paste the key), then keep it secret.")
    return output.show(args, data, human)


def cmd_key_set(client: Client, args: argparse.Namespace) -> int:
    key = sys.stdin.readline().strip() if args.key == "-" else args.key
    if not key:
        raise InvalidInput("no pair key given", problems=[Problem("KEY", "empty")])
    data = client.post("/v1/ha/pair-key", {"key": key})
    return output.show(args, data, lambda d: output.out.print("Pair key installed."))


def register(subparsers: Any, add: AddCommand) -> None:
    ha = subparsers.add_parser("ha", help="fault tolerance: the active/standby pair")
    actions = ha.add_subparsers(dest="action", metavar="ACTION", required=True,
                                parser_class=type(ha))
    add(actions, "status", cmd_status,
        "role, epoch, peer, who holds the node IP, witnesses, and why failover would be "
        "impossible now")
    add(actions, "events", cmd_events, "every role transition with its reason and steps")
    p = add(actions, "set-state", cmd_set_state,
            "the System Monitor STATE control: master, slave, or off (services off)")
    p.add_argument("state", choices=["master", "slave", "off"])
    p.add_argument("--force", action="store_true",
                   help="take the master role although the master's database replication "
                   "was asynchronous when it was last heard (acknowledged transactions may "
                   "be lost; `ha status` says which may be missing)")
    add(actions, "switchover", cmd_switchover,
        "graceful hand-over: this master stops its units, releases the node IP and tells "
        "the peer to take it at once")
    p = add(actions, "full-sync", cmd_full_sync,
            "on the slave: copy the master's database and files whole (the last step of "
            "pairing, and the way back for a slave that cannot replicate), as a job with "
            "progress and a final check (row counts, file counts and bytes); refused on the "
            "master; exit 4 if a followed copy does not succeed")
    p.add_argument("--what", choices=["all", "db", "files"], default="all",
                   help="what to copy: all (default: the database and every replicated "
                   "path), db, or files")
    p.add_argument("--wait", action="store_true",
                   help="follow the copy with a progress bar and time left until it ends "
                   "(Ctrl-C stops following, not the copy)")
    keys = actions.add_parser("pair-key", help="the key that authenticates heartbeats")
    key_actions = keys.add_subparsers(dest="key_action", metavar="ACTION", required=True,
                                      parser_class=type(keys))
    add(key_actions, "generate", cmd_key_generate,
        "create and install a new pair key and print it (once) for the other node")
    p = add(key_actions, "set", cmd_key_set,
            "install the pair key printed on the other node (KEY, or - to read it from "
            "standard input so it stays out of the process list)")
    p.add_argument("key", metavar="KEY")
    replication = subparsers.add_parser(
        "replication", help="what the slave keeps of the master: the database, the files")
    repl_actions = replication.add_subparsers(dest="action", metavar="ACTION", required=True,
                                              parser_class=type(replication))
    add(repl_actions, "status", cmd_replication_status,
        "each stream (the database, each file path): state, lag, last error, and whether a "
        "full sync is needed")


def _database_rows(db: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("database", f"{db['engine']}: {db['state']}"),
                                   ("", db.get("detail") or "")]
    if db.get("lag_s") is not None or db.get("lag_transactions") is not None:
        rows.append(("lag", f"{db.get('lag_s', '-')} s, {db.get('lag_transactions', '-')} "
                     "transactions behind the master's last heartbeat"))
    server = db.get("server") or {}
    if server:
        rows.append(("position", f"wrote {server['binlog_position'] or 'nothing'}; applied "
                     f"{server['slave_position'] or 'nothing'}"
                     + ("; read-only" if server["read_only"] else "; writable")))
    if db.get("error"):
        rows.append(("last error", db["error"]))
    if db.get("diverged"):
        rows.append(("diverged", f"{db['diverged']} only on this node"))
    last = db.get("last_promotion")
    if last:
        rows.append(("last promotion", f"writable at {last.get('position') or '-'} in "
                     f"{last.get('took_ms', '-')} ms" if last.get("ok")
                     else f"failed: {last.get('error')}"))
    return rows


def cmd_replication_status(client: Client, args: argparse.Namespace) -> int:
    def human(d: dict[str, Any]) -> None:
        rows = [("role", d["role"] or "not paired"), *_database_rows(d["database"])]
        for p in d["paths"]:
            facts = [p["state"]]
            if p.get("last_push"):
                facts.append(f"last push {output.when(p['last_push'])} "
                             f"({p.get('last_push_ms')} ms)")
            if p.get("error"):
                facts.append(f"error: {p['error']}")
            rows.append((p["path"], "; ".join(facts)))
        rows.append(("bandwidth", f"{d['bandwidth_kb']} KiB/s (file sync, full sync)"))
        full = d.get("full_sync") or {}
        if full.get("running_job") is not None:
            state = (f"running (job {full['running_job']}: `voxnode jobs show "
                     f"{full['running_job']}`)")
        elif d["needs_full_sync"]:
            why = (full.get("needed") or {}).get("reason") or d["database"].get("detail", "")
            state = f"NEEDED: {why} (`voxnode ha full-sync` on this node)"
        else:
            state = "not needed"
        rows.append(("full sync", state))
        output.kv_table(rows)

    return output.show(args, client.get("/v1/replication"), human)
