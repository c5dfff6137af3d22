"""The working mode: ``/v1/mode``.

``GET /v1/mode`` is the mode, the settings it implies, the licence and the modes this node
cannot take now (with why); ``POST /v1/mode`` ``{"mode": ...}`` switches it with the change
options (``agent.change_options``).
"""

from __future__ import annotations

from aiohttp import web

from agent.api.http import CTX, json_response, read_change
from agent.errors import InvalidInput, Problem
from agent.mode.table import describe
from agent.state.document import validate_document
from agent.state.edit import edit_mode
from agent.state.model import WorkingMode


async def mode_show(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    state = ctx.current_state()
    licence = await ctx.licence.current()
    problems = []
    for mode in WorkingMode:
        candidate = edit_mode(state.to_document(), mode.value)
        try:
            await ctx.engine.plan(validate_document(candidate))
        except InvalidInput as exc:
            problems.append({"mode": mode.value, "problems": [p.to_dict() for p in exc.problems]})
    return json_response(
        {
            "mode": state.mode.value,
            "settings": [{"setting": k, "value": v} for k, v in describe(state.mode)],
            "licence": {"active": licence.active, "modules": sorted(licence.modules)},
            "unavailable": problems,
        }
    )


async def mode_set(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    data, options = await read_change(request, {"mode"})
    mode = data.get("mode")
    allowed = [m.value for m in WorkingMode]
    if mode not in allowed:
        raise InvalidInput(
            "unknown working mode",
            problems=[Problem("mode", f"'{mode}' is not a working mode (allowed: "
                              f"{', '.join(allowed)})")],
        )
    document = edit_mode(ctx.current_state().to_document(), str(mode))
    outcome = await ctx.engine.apply(validate_document(document), source="mode set",
                                     options=options)
    return json_response(outcome.to_dict())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/mode", mode_show)
    app.router.add_post("/v1/mode", mode_set)
