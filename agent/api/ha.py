"""API of the pair: status, events, the operator's STATE control, switchover, pair key."""

from __future__ import annotations

from aiohttp import web

from agent.api.http import json_response, read_body
from agent.api.jobs import JOBS
from agent.errors import InvalidInput, Problem
from ha.manager import HAManager
from ha.protocol import Role
from ha.replication.fullsync import FULL_SYNC

HA: web.AppKey[HAManager] = web.AppKey("ha", HAManager)


async def ha_status(request: web.Request) -> web.Response:
    return json_response(request.app[HA].status())


async def replication_status(request: web.Request) -> web.Response:
    return json_response(request.app[HA].replication_status())


async def ha_events(request: web.Request) -> web.Response:
    return json_response({"events": await request.app[HA].recent_events(200)})


async def ha_set_state(request: web.Request) -> web.Response:
    data = await read_body(request, {"state", "force"})
    allowed = [Role.MASTER.value, Role.SLAVE.value, Role.OFF.value]
    if data.get("state") not in allowed:
        raise InvalidInput("unknown state", problems=[
            Problem("state", f"'{str(data.get('state'))[:40]}' is not a state (allowed: "
                    f"{', '.join(allowed)})")])
    force = data.get("force", False)
    if not isinstance(force, bool):
        raise InvalidInput("force must be true or false",
                           problems=[Problem("force", "must be true or false")])
    manager = request.app[HA]
    await manager.set_state(Role(data["state"]), force=force)
    return json_response(manager.status())


async def ha_switchover(request: web.Request) -> web.Response:
    manager = request.app[HA]
    await manager.switchover()
    return json_response(manager.status())


async def ha_full_sync(request: web.Request) -> web.Response:
    """Start the full sync job on this node (``{"what": "all"|"db"|"files"}``); the job."""
    data = await read_body(request, {"what"})
    job = await request.app[JOBS].schedule(FULL_SYNC, None, {"what": data.get("what", "all")})
    return json_response(job.to_dict(), status=201)


async def ha_pair_key(request: web.Request) -> web.Response:
    data = await read_body(request, {"generate", "key"})
    manager = request.app[HA]
    if data.get("generate") is True and "key" not in data:
        return json_response(await manager.install_key(None))
    if isinstance(data.get("key"), str) and "generate" not in data:
        if len(data["key"]) > 200:
            raise InvalidInput("the pair key is not valid", problems=[
                Problem("key", "a pair key is 64 hexadecimal digits")])
        result = await manager.install_key(data["key"])
        return json_response({"installed": True, "runtime": result["runtime"]})
    raise InvalidInput("say what to do with the pair key", problems=[
        Problem("body", "either {\"generate\": true} or {\"key\": \"<64 hex digits>\"}")])


def add_routes(app: web.Application, manager: HAManager) -> None:
    app[HA] = manager
    app.router.add_get("/v1/ha", ha_status)
    app.router.add_get("/v1/ha/events", ha_events)
    app.router.add_post("/v1/ha/state", ha_set_state)
    app.router.add_post("/v1/ha/switchover", ha_switchover)
    app.router.add_post("/v1/ha/full-sync", ha_full_sync)
    app.router.add_post("/v1/ha/pair-key", ha_pair_key)
    app.router.add_get("/v1/replication", replication_status)
