"""The desired-state document and its revisions: ``/v1/config``.

``GET /v1/config`` (and ``/v1/config/revisions/{n}``) shows a document; ``POST
/v1/config/apply`` ``{"document": {...}}`` or ``{"yaml": "...", "source"}`` validates,
plans, applies and commits one; ``POST /v1/config/confirm`` keeps a confirmed apply;
``GET /v1/config/history`` lists the revisions; ``POST /v1/config/rollback``
``{"revision": n}`` applies an older one as a new revision. Apply and rollback take the
change options (``agent.change_options``).
"""

from __future__ import annotations

from aiohttp import web

from agent.api.http import CTX, json_response, path_number, read_change
from agent.errors import InvalidInput, Problem
from agent.state.document import load_document, validate_document


async def config_show(request: web.Request) -> web.Response:
    store = request.app[CTX].engine.store
    raw = request.match_info.get("revision")
    if raw is None:
        current = store.current()
        if current is None:
            return json_response({"revision": None, "document": None})
        revision = current
    else:
        number = path_number(raw)
        if number is None:
            shown = raw if len(raw) <= 40 else raw[:40] + "…"
            raise InvalidInput(
                "bad revision", problems=[Problem("revision", f"'{shown}' is not a number")]
            )
        revision = store.load(number)
    return json_response(
        {"revision": revision.meta.to_dict(), "document": revision.state.to_document()})


async def config_apply(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    data, options = await read_change(request, {"document", "yaml", "source"})
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
    outcome = await ctx.engine.apply(state, source="apply", options=options)
    return json_response(outcome.to_dict())


async def config_confirm(request: web.Request) -> web.Response:
    meta = await request.app[CTX].engine.confirm()
    return json_response({"confirmed": meta.to_dict()})


async def config_history(request: web.Request) -> web.Response:
    store = request.app[CTX].engine.store
    return json_response({"revisions": [m.to_dict() for m in store.history()]})


async def config_rollback(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    data, options = await read_change(request, {"revision"})
    number = data.get("revision")
    if isinstance(number, bool) or not isinstance(number, int) or number < 1:
        raise InvalidInput(
            "bad revision", problems=[Problem("revision", "must be a revision number (>= 1)")]
        )
    target = ctx.engine.store.load(number)
    if not options.comment:
        options = options.model_copy(
            update={"comment": f"back to the configuration of revision {number}"})
    outcome = await ctx.engine.apply(target.state, source="rollback", options=options)
    return json_response(outcome.to_dict())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/config", config_show)
    app.router.add_get("/v1/config/revisions/{revision}", config_show)
    app.router.add_post("/v1/config/apply", config_apply)
    app.router.add_post("/v1/config/confirm", config_confirm)
    app.router.add_get("/v1/config/history", config_history)
    app.router.add_post("/v1/config/rollback", config_rollback)
