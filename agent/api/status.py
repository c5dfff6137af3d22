"""The node at a glance: ``GET /v1/status`` and the event log, ``GET /v1/events``."""

from __future__ import annotations

import os
import time
from typing import Any

from aiohttp import web

from agent import __version__
from agent.api.ha import HA
from agent.api.http import CTX, AgentContext, json_response
from agent.ports.licence import LicenceView


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
    return json_response(
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
            "pair": request.app[HA].summary() if HA in request.app else None,
            "subsystems": [s.name for s in ctx.engine.subsystems],
            "events": [e.to_dict() for e in ctx.events.recent(10)],
        }
    )


async def events(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    return json_response({"events": [e.to_dict() for e in ctx.events.recent(200)]})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/status", status)
    app.router.add_get("/v1/events", events)
