"""The API of the Security Update client: ``/v1/licence``.

``GET /v1/licence`` the state, modules, limits, expiry, serial, company, email, checks;
``POST /v1/licence/activate`` {serial, email} (a code is emailed); ``POST
/v1/licence/verify`` {code}; ``POST /v1/licence/check``; ``POST /v1/licence/remove``;
``POST /v1/licence/update`` {apply, release} (without apply: the review only);
``GET|POST /v1/licence/assignments`` — the application layer records here who holds a
counted module ({module, assign: [...], unassign: [...]}).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from agent.api.http import json_response, read_body
from agent.errors import InvalidInput, Problem
from agent.licence.manager import LicenceManager
from agent.ports.files import durable

LICENCE: web.AppKey[LicenceManager] = web.AppKey("licence_manager", LicenceManager)


# the longest text each field may carry (an email address is at most 254 characters)
TEXT_LIMITS = {"serial": 64, "email": 254, "code": 32}


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise InvalidInput("bad request", problems=[Problem(name, "required, a string")])
    limit = TEXT_LIMITS.get(name)
    if limit is not None and len(value) > limit:
        raise InvalidInput("bad request", problems=[
            Problem(name, f"at most {limit} characters, got {len(value)}")])
    return value


def _strings(data: dict[str, Any], name: str) -> list[str]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput("bad request", problems=[Problem(name, "a list of strings")])
    return [str(v) for v in value]


async def show(request: web.Request) -> web.Response:
    # the licence files are read in a worker thread, off the heartbeats' loop
    return json_response(await durable(request.app[LICENCE].show))


async def activate(request: web.Request) -> web.Response:
    data = await read_body(request, {"serial", "email"})
    result = await request.app[LICENCE].activate(_str(data, "serial"), _str(data, "email"))
    return json_response(result)


async def verify(request: web.Request) -> web.Response:
    data = await read_body(request, {"code"})
    return json_response(await request.app[LICENCE].verify(_str(data, "code")))


async def check(request: web.Request) -> web.Response:
    await read_body(request, set())
    return json_response(await request.app[LICENCE].check())


async def remove(request: web.Request) -> web.Response:
    await read_body(request, set())
    return json_response(await request.app[LICENCE].remove())


async def update(request: web.Request) -> web.Response:
    data = await read_body(request, {"apply", "release"})
    apply = data.get("apply", False)
    if not isinstance(apply, bool):
        raise InvalidInput("bad request", problems=[Problem("apply", "must be true or false")])
    return json_response(await request.app[LICENCE].update(apply=apply,
                                                   release=_strings(data, "release")))


async def assignments(request: web.Request) -> web.Response:
    return json_response(request.app[LICENCE].assignments())


async def assign(request: web.Request) -> web.Response:
    data = await read_body(request, {"module", "assign", "unassign"})
    return json_response(await request.app[LICENCE].assign(
        _str(data, "module"), _strings(data, "assign"), _strings(data, "unassign")))


def add_routes(app: web.Application, licence_manager: LicenceManager) -> None:
    app[LICENCE] = licence_manager
    app.router.add_get("/v1/licence", show)
    app.router.add_post("/v1/licence/activate", activate)
    app.router.add_post("/v1/licence/verify", verify)
    app.router.add_post("/v1/licence/check", check)
    app.router.add_post("/v1/licence/remove", remove)
    app.router.add_post("/v1/licence/update", update)
    app.router.add_get("/v1/licence/assignments", assignments)
    app.router.add_post("/v1/licence/assignments", assign)
