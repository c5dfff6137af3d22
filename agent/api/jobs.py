"""The API of the job runner: ``/v1/jobs``.

``GET /v1/jobs`` lists the jobs kept (newest first); ``GET /v1/jobs/{id}`` shows one with
its steps; ``POST /v1/jobs`` ``{"name": KIND, "at": ISO 8601 with a time zone, "params":
{...}}`` schedules a job (``at`` absent or null: now; ``params`` as the kind takes them);
``POST /v1/jobs/{id}/cancel`` cancels a scheduled job, or a running one of a kind that
allows it (the answer comes when it has ended); ``GET /v1/jobs/kinds`` lists the job kinds
this node knows, with their steps.
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from agent.api.http import json_response, path_number, read_body
from agent.errors import InvalidInput, NotFound, Problem
from agent.jobs.runner import JobRunner

JOBS: web.AppKey[JobRunner] = web.AppKey("jobs", JobRunner)
AT_EXAMPLE = "2026-11-23T02:00:00+01:00"


def _job_id(request: web.Request) -> int:
    raw = request.match_info["id"]
    number = path_number(raw)
    if number is None:
        raise NotFound(f"no job {raw[:40]}: job ids are numbers",
                       remedy="See the jobs kept with `voxnode jobs list`.")
    return number


def parse_at(value: object) -> float | None:
    """The ``at`` field: absent/null, or an ISO 8601 time with a time zone → unix time."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput("bad job time", problems=[
            Problem("at", f"must be an ISO 8601 time with a time zone, like {AT_EXAMPLE}")])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput("bad job time", problems=[
            Problem("at", f"'{value}' is not an ISO 8601 time (like {AT_EXAMPLE})")]) from None
    if when.tzinfo is None:
        raise InvalidInput("bad job time", problems=[
            Problem("at", f"'{value}' has no time zone (like {AT_EXAMPLE})")])
    return when.timestamp()


async def jobs_list(request: web.Request) -> web.Response:
    return json_response({"jobs": [j.to_dict() for j in request.app[JOBS].jobs()]})


async def jobs_show(request: web.Request) -> web.Response:
    return json_response(request.app[JOBS].get(_job_id(request)).to_dict())


async def jobs_schedule(request: web.Request) -> web.Response:
    data = await read_body(request, {"name", "at", "params"})
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("bad job request", problems=[
            Problem("name", "required: the job kind (see GET /v1/jobs/kinds)")])
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise InvalidInput("bad job request", problems=[
            Problem("params", "must be a mapping of the job's parameters")])
    job = await request.app[JOBS].schedule(name, parse_at(data.get("at")), params)
    return json_response(job.to_dict(), status=201)


async def jobs_cancel(request: web.Request) -> web.Response:
    runner = request.app[JOBS]
    job = runner.cancel(_job_id(request))
    if job.active:  # a running job's step was cancelled: answered once it has ended
        job = await runner.cancelled(job.id)
    return json_response(job.to_dict())


async def jobs_kinds(request: web.Request) -> web.Response:
    return json_response({"kinds": [k.to_dict() for k in request.app[JOBS].kinds()]})


def add_routes(app: web.Application, runner: JobRunner) -> None:
    app[JOBS] = runner
    app.router.add_get("/v1/jobs", jobs_list)
    app.router.add_post("/v1/jobs", jobs_schedule)
    app.router.add_get("/v1/jobs/kinds", jobs_kinds)  # before {id}: routes match in order
    app.router.add_get("/v1/jobs/{id}", jobs_show)
    app.router.add_post("/v1/jobs/{id}/cancel", jobs_cancel)
