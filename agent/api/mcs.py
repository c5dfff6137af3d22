"""The API of the MCS client: ``/v1/mcs``.

``GET /v1/mcs`` is the status (configured, operator STOP, unit, tunnel); ``POST
/v1/mcs/bundle`` uploads a bundle as JSON ``{"name", "data" (base64), "files" ({name:
base64}, optional), "dry_run"}``; ``POST /v1/mcs/start`` and ``/v1/mcs/stop`` are the
operator's START/STOP; ``DELETE /v1/mcs/bundle`` with ``{"yes": true}`` removes it all.
"""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from agent.api.http import json_response, read_body
from agent.errors import InvalidInput, Problem
from agent.mcs.client import McsClient

MCS: web.AppKey[McsClient] = web.AppKey("mcs", McsClient)


def _b64(value: object, path: str, problems: list[Problem]) -> bytes:
    if not isinstance(value, str):
        problems.append(Problem(path, "must be a base64 string"))
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        problems.append(Problem(path, "is not valid base64"))
        return b""


async def mcs_status(request: web.Request) -> web.Response:
    return json_response(await request.app[MCS].status())


async def mcs_upload(request: web.Request) -> web.Response:
    data = await read_body(request, {"name", "data", "files", "dry_run"})
    problems: list[Problem] = []
    name = data.get("name", "bundle")
    if not isinstance(name, str) or not name:
        problems.append(Problem("name", "must be the uploaded file's name"))
    if "data" not in data:
        problems.append(Problem("data", "missing: the bundle, base64-encoded"))
    content = _b64(data.get("data", ""), "data", problems)
    files = data.get("files", {})
    extra: dict[str, bytes] = {}
    if not isinstance(files, dict):
        problems.append(Problem("files", "must be an object {name: base64}"))
    else:
        extra = {str(k): _b64(v, f"files.{k}", problems) for k, v in files.items()}
    dry_run = data.get("dry_run", False)
    if not isinstance(dry_run, bool):
        problems.append(Problem("dry_run", "must be true or false"))
    if problems:
        raise InvalidInput("the upload request is not valid", problems=problems)
    return json_response(await request.app[MCS].upload(str(name), content, extra, dry_run=dry_run))


async def mcs_start(request: web.Request) -> web.Response:
    await read_body(request, set())
    return json_response(await request.app[MCS].start())


async def mcs_stop(request: web.Request) -> web.Response:
    await read_body(request, set())
    return json_response(await request.app[MCS].stop())


async def mcs_remove(request: web.Request) -> web.Response:
    data = await read_body(request, {"yes"})
    yes = data.get("yes", False)
    if not isinstance(yes, bool):
        raise InvalidInput("bad request", problems=[Problem("yes", "must be true or false")])
    return json_response(await request.app[MCS].remove(yes))


def add_routes(app: web.Application, mcs: McsClient) -> None:
    app[MCS] = mcs
    app.router.add_get("/v1/mcs", mcs_status)
    app.router.add_post("/v1/mcs/bundle", mcs_upload)
    app.router.add_delete("/v1/mcs/bundle", mcs_remove)
    app.router.add_post("/v1/mcs/start", mcs_start)
    app.router.add_post("/v1/mcs/stop", mcs_stop)
