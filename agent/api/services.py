"""The API of the services subsystem: ``/v1/services``.

``GET /v1/services`` lists each unit of the catalogue, wanted or not and why, and its state;
``POST /v1/services/reconcile`` converges the units now; ``POST /v1/services/restart-all``
("notify processes and restart") streams its progress as newline-delimited JSON: one
``{"step": …}`` line as each step starts and ends, then ``{"done": …}`` or ``{"error": …}``.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web

from agent.api.http import CTX, json_response
from agent.errors import Conflict, VoxnodeError
from agent.services.subsystem import ServicesSubsystem, Step

SERVICES: web.AppKey[ServicesSubsystem] = web.AppKey("services", ServicesSubsystem)
NDJSON = "application/x-ndjson"


def _services(request: web.Request) -> ServicesSubsystem:
    return request.app[SERVICES]


def _configured(services: ServicesSubsystem) -> None:
    if services.last is None:
        raise Conflict(
            "this node has no configuration yet: the services are not managed",
            remedy="Apply a document first: voxnode config apply FILE",
        )


async def services_list(request: web.Request) -> web.Response:
    current = request.app[CTX].engine.store.current()
    return json_response(await _services(request).list_units(current.state if current else None))


async def services_reconcile(request: web.Request) -> web.Response:
    services = _services(request)
    _configured(services)
    changes, failures = await services.reconcile()
    return json_response({
        "changes": [c.to_dict() for c in changes],
        "failures": [{"unit": f.details.get("unit", ""), "message": f.message, "remedy": f.remedy}
                     for f in failures],
    })


async def services_restart_all(request: web.Request) -> web.StreamResponse:
    services = _services(request)
    _configured(services)  # refused before the stream starts: a plain JSON error
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)

    async def line(data: dict[str, Any]) -> None:
        # a client that went away must not stop the restart half-way
        with contextlib.suppress(ConnectionError):
            await response.write(json.dumps(data).encode() + b"\n")

    async def progress(step: Step) -> None:
        await line({"step": step.to_dict()})

    try:
        steps = await services.restart_all(progress)
    except VoxnodeError as exc:
        await line({"error": exc.to_dict()})
    else:
        failed = [s for s in steps if s.status == "failed"]
        await line({"done": {"steps": [s.to_dict() for s in steps], "failed": len(failed)}})
    with contextlib.suppress(ConnectionError):
        await response.write_eof()
    return response


def add_routes(app: web.Application, services: ServicesSubsystem) -> None:
    app[SERVICES] = services
    app.router.add_get("/v1/services", services_list)
    app.router.add_post("/v1/services/reconcile", services_reconcile)
    app.router.add_post("/v1/services/restart-all", services_restart_all)
