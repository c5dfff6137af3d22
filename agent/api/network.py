"""The network settings: ``/v1/network``.

``GET /v1/network`` is the desired network and what the kernel has (with drift); ``POST
/v1/network`` ``{"set": {KEY: VALUE}, "unset": [KEY]}`` edits the committed document and
applies it with the change options (``agent.change_options``).
"""

from __future__ import annotations

from aiohttp import web

from agent.api.http import CTX, json_response, read_change
from agent.errors import InvalidInput, Problem
from agent.state.document import validate_document
from agent.state.edit import edit_network


async def network_show(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    state = ctx.current_state()
    observed = await ctx.network.kernel_view(state)
    return json_response({"desired": state.to_document()["network"], "observed": observed})


async def network_set(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    data, options = await read_change(request, {"set", "unset"})
    set_values = data.get("set", {})
    unset = data.get("unset", [])
    if not isinstance(set_values, dict) or not isinstance(unset, list):
        raise InvalidInput(
            "bad request", problems=[Problem("set", "an object; 'unset' a list of names")]
        )
    document = edit_network(ctx.current_state().to_document(), set_values,
                            [str(u) for u in unset])
    outcome = await ctx.engine.apply(validate_document(document), source="network set",
                                     options=options)
    return json_response(outcome.to_dict())


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/network", network_show)
    app.router.add_post("/v1/network", network_set)
