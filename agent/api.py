"""The agent's HTTP/JSON API (version 1), served on a unix socket.

One API for the `voxnode` CLI and the web console. Errors are JSON objects with a stable
``code``, a ``message``, the list of ``problems`` and a ``remedy``; see agent.errors.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent import __version__
from agent.engine import Engine
from agent.errors import InvalidInput, NotFound, Problem, VoxnodeError
from agent.events import EventLog
from agent.modes import describe
from agent.ports.licence import LicencePort, LicenceView
from agent.state.document import load_document, validate_document
from agent.state.edit import edit_mode, edit_network
from agent.state.model import DesiredState, WorkingMode
from agent.subsystems.network import NetworkSubsystem

log = logging.getLogger("voxnode.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class AgentContext:
    engine: Engine
    events: EventLog
    network: NetworkSubsystem
    licence: LicencePort
    started: float
    state_dir: str
    root: str


CTX: web.AppKey[AgentContext] = web.AppKey("ctx", AgentContext)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=2))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except VoxnodeError as exc:
        return _json({"error": exc.to_dict()}, status=exc.http_status)
    except web.HTTPException as exc:
        err: VoxnodeError
        if exc.status == 404:
            err = NotFound(f"no such API endpoint: {request.method} {request.path}")
            return _json({"error": err.to_dict()}, status=404)
        if exc.status == 405:
            err = NotFound(f"{request.method} is not allowed on {request.path}")
            return _json({"error": err.to_dict()}, status=405)
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        err = VoxnodeError(
            "the agent hit an internal error; details are in its log",
            remedy="See `journalctl -u voxnode-agent`.",
        )
        return _json({"error": err.to_dict()}, status=500)


async def _body(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise InvalidInput(
            "the request body is not JSON", problems=[Problem("body", "expected a JSON object")]
        ) from None
    if not isinstance(data, dict):
        raise InvalidInput(
            "the request body is not a JSON object", problems=[Problem("body", "expected {...}")]
        )
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidInput(
            "the request has unknown fields",
            problems=[
                Problem(k, f"unknown field (allowed: {', '.join(sorted(allowed))})")
                for k in unknown
            ],
        )
    return data


def _options(data: dict[str, Any]) -> dict[str, Any]:
    """The apply options common to every changing endpoint, type-checked."""
    problems = []
    for flag in ("dry_run", "yes"):
        if flag in data and not isinstance(data[flag], bool):
            problems.append(Problem(flag, "must be true or false"))
    window = data.get("confirm_within")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int | float)):
        problems.append(Problem("confirm_within", "must be a number of seconds"))
    comment = data.get("comment", "")
    if not isinstance(comment, str):
        problems.append(Problem("comment", "must be a string"))
    if problems:
        raise InvalidInput("the request options are not valid", problems=problems)
    return {
        "dry_run": bool(data.get("dry_run", False)),
        "yes": bool(data.get("yes", False)),
        "confirm_within": float(window) if window is not None else None,
        "comment": comment,
    }


APPLY_OPTIONS = {"dry_run", "yes", "confirm_within", "comment"}


def _current(ctx: AgentContext) -> DesiredState:
    current = ctx.engine.store.current()
    if current is None:
        raise InvalidInput(
            "this node has no configuration yet",
            problems=[Problem("", "apply a full document first: voxnode config apply FILE")],
        )
    return current.state


# --- handlers --------------------------------------------------------------------------------


def _licence_summary(ctx: AgentContext, view: LicenceView) -> dict[str, Any]:
    """``licence`` of ``/v1/status``: ``active`` and ``reason`` (what the other subsystems
    see), and with the Security Update client its state, serial, expiry, checks, alarm."""
    summary = getattr(ctx.licence, "summary", None)
    if callable(summary):
        data: dict[str, Any] = summary()
        return {**data, "active": view.active, "reason": view.reason}
    return {"state": "ACTIVE" if view.active else "OFF", "active": view.active,
            "reason": view.reason, "serial": None, "valid_until": None, "grace_until": None,
            "last_check": None, "last_successful_check": None, "alarm": None,
            "clock_warning": None}


async def status(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    store = ctx.engine.store
    current = store.current()
    pending = store.pending()
    licence = await ctx.licence.current()
    return _json(
        {
            "version": __version__,
            "pid": os.getpid(),
            "uptime_s": round(time.time() - ctx.started, 1),
            "state_dir": ctx.state_dir,
            "root": ctx.root,
            "revision": current.meta.to_dict() if current else None,
            "hostname": current.state.network.hostname if current else None,
            "mode": current.state.mode.value if current else None,
            "pending_confirmation": (
                {
                    "revision": pending.revision,
                    "rolls_back_to": pending.previous,
                    "seconds_left": max(0.0, round(pending.deadline - time.time(), 1)),
                }
                if pending and current and pending.revision == current.meta.revision
                else None
            ),
            "converge": ctx.engine.last_converge,
            "licence": _licence_summary(ctx, licence),
            "subsystems": [s.name for s in ctx.engine.subsystems],
            "events": [e.to_dict() for e in ctx.events.recent(10)],
        }
    )


async def config_show(request: web.Request) -> web.Response:
    store = request.app[CTX].engine.store
    raw = request.match_info.get("revision")
    if raw is None:
        current = store.current()
        if current is None:
            return _json({"revision": None, "document": None})
        revision = current
    else:
        if not raw.isdigit():
            raise InvalidInput(
                "bad revision", problems=[Problem("revision", f"'{raw}' is not a number")]
            )
        revision = store.load(int(raw))
    return _json({"revision": revision.meta.to_dict(), "document": revision.state.to_document()})


async def config_apply(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    data = await _body(request, {"document", "yaml", "source", *APPLY_OPTIONS})
    opts = _options(data)
    if ("document" in data) == ("yaml" in data):
        raise InvalidInput(
            "give the document once",
            problems=[Problem("body", "exactly one of 'document' (JSON) or 'yaml' (text)")],
        )
    if "yaml" in data:
        if not isinstance(data["yaml"], str):
            raise InvalidInput("bad request", problems=[Problem("yaml", "must be a string")])
        state = load_document(data["yaml"], str(data.get("source") or "<input>"))
    else:
        state = validate_document(data["document"])
    outcome = await ctx.engine.apply(state, source="apply", **opts)
    return _json(outcome.to_dict())


async def config_confirm(request: web.Request) -> web.Response:
    meta = await request.app[CTX].engine.confirm()
    return _json({"confirmed": meta.to_dict()})


async def config_history(request: web.Request) -> web.Response:
    store = request.app[CTX].engine.store
    return _json({"revisions": [m.to_dict() for m in store.history()]})


async def config_rollback(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    data = await _body(request, {"revision", *APPLY_OPTIONS})
    opts = _options(data)
    number = data.get("revision")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise InvalidInput(
            "bad revision", problems=[Problem("revision", "must be a revision number (>= 1)")]
        )
    target = ctx.engine.store.load(number)
    opts["comment"] = opts["comment"] or f"back to the configuration of revision {number}"
    outcome = await ctx.engine.apply(target.state, source="rollback", **opts)
    return _json(outcome.to_dict())


async def network_show(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    state = _current(ctx)
    observed = await ctx.network.observe(state)
    return _json({"desired": state.to_document()["network"], "observed": observed})


async def network_set(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    data = await _body(request, {"set", "unset", *APPLY_OPTIONS})
    opts = _options(data)
    set_values = data.get("set", {})
    unset = data.get("unset", [])
    if not isinstance(set_values, dict) or not isinstance(unset, list):
        raise InvalidInput(
            "bad request", problems=[Problem("set", "an object; 'unset' a list of names")]
        )
    document = edit_network(_current(ctx).to_document(), set_values, [str(u) for u in unset])
    outcome = await ctx.engine.apply(validate_document(document), source="network set", **opts)
    return _json(outcome.to_dict())


async def mode_show(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    state = _current(ctx)
    licence = await ctx.licence.current()
    problems = []
    for mode in WorkingMode:
        candidate = edit_mode(state.to_document(), mode.value)
        try:
            await ctx.engine.plan(validate_document(candidate))
        except InvalidInput as exc:
            problems.append({"mode": mode.value, "problems": [p.to_dict() for p in exc.problems]})
    return _json(
        {
            "mode": state.mode.value,
            "settings": [{"setting": k, "value": v} for k, v in describe(state.mode)],
            "licence": {"active": licence.active, "modules": sorted(licence.modules)},
            "unavailable": problems,
        }
    )


async def mode_set(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    data = await _body(request, {"mode", *APPLY_OPTIONS})
    opts = _options(data)
    mode = data.get("mode")
    allowed = [m.value for m in WorkingMode]
    if mode not in allowed:
        raise InvalidInput(
            "unknown working mode",
            problems=[Problem("mode", f"'{mode}' is not a working mode (allowed: "
                              f"{', '.join(allowed)})")],
        )
    document = edit_mode(_current(ctx).to_document(), str(mode))
    outcome = await ctx.engine.apply(validate_document(document), source="mode set", **opts)
    return _json(outcome.to_dict())


async def events(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return _json({"events": [e.to_dict() for e in ctx.events.recent(200)]})


def make_app(ctx: AgentContext) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=4 * 1024 * 1024)
    app[CTX] = ctx
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/config", config_show)
    app.router.add_get("/v1/config/revisions/{revision}", config_show)
    app.router.add_post("/v1/config/apply", config_apply)
    app.router.add_post("/v1/config/confirm", config_confirm)
    app.router.add_get("/v1/config/history", config_history)
    app.router.add_post("/v1/config/rollback", config_rollback)
    app.router.add_get("/v1/network", network_show)
    app.router.add_post("/v1/network", network_set)
    app.router.add_get("/v1/mode", mode_show)
    app.router.add_post("/v1/mode", mode_set)
    app.router.add_get("/v1/events", events)
    return app
