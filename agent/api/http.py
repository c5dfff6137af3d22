"""What every area of the API shares: the app context, the error middleware, reading a
request body (with the options of a change in it) and JSON responses.

Errors are JSON objects ``{"error": {...}}`` with a stable ``code``, a ``message``, the
list of ``problems`` and a ``remedy``; see agent.errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agent.change_options import ChangeOptions
from agent.engine import Engine
from agent.errors import InvalidInput, NotFound, Problem, UnsupportedBody, VoxnodeError
from agent.events import EventLog
from agent.network.subsystem import NetworkSubsystem
from agent.ports.licence import LicencePort
from agent.state.model import DesiredState

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

    def current_state(self) -> DesiredState:
        """The committed document, or InvalidInput on a node that has none yet."""
        current = self.engine.store.current()
        if current is None:
            raise InvalidInput(
                "this node has no configuration yet",
                problems=[Problem("", "apply a full document first: voxnode config apply FILE")],
            )
        return current.state


CTX: web.AppKey[AgentContext] = web.AppKey("ctx", AgentContext)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, indent=2))


def path_number(raw: str, max_digits: int = 18) -> int | None:
    """A number in a URL path (a revision, a job id): ASCII digits only (``str.isdigit``
    also takes '²' and other scripts' digits), few enough to be one; None otherwise."""
    if raw.isascii() and raw.isdigit() and len(raw) <= max_digits:
        return int(raw)
    return None


# Methods that act: their body must say it is JSON. A browser sends a cross-site form
# (urlencoded, multipart, text/plain) without asking first; JSON it cannot send that way.
ACTING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def check_body_type(request: web.Request) -> None:
    if (request.method in ACTING_METHODS and request.match_info.http_exception is None
            and request.content_type != "application/json"):
        given = request.headers.get("Content-Type")
        raise UnsupportedBody(
            f"{request.method} {request.path} takes a JSON body",
            problems=[Problem("Content-Type", f"'{given[:80]}' is not application/json"
                              if given else "missing; expected application/json")])


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        check_body_type(request)
        return await handler(request)
    except VoxnodeError as exc:
        return json_response({"error": exc.to_dict()}, status=exc.http_status)
    except web.HTTPException as exc:
        err: VoxnodeError
        if exc.status == 404:
            err = NotFound(f"no such API endpoint: {request.method} {request.path}")
            return json_response({"error": err.to_dict()}, status=404)
        if exc.status == 405:
            err = NotFound(f"{request.method} is not allowed on {request.path}")
            return json_response({"error": err.to_dict()}, status=405)
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        err = VoxnodeError(
            "the agent hit an internal error; details are in its log",
            remedy="See `journalctl -u voxnode-agent`.",
        )
        return json_response({"error": err.to_dict()}, status=500)


async def read_body(request: web.Request, allowed: Iterable[str]) -> dict[str, Any]:
    """The JSON object of the request (``{}`` without a body); a field not in ``allowed``
    is refused with the list of those that are."""
    allowed = set(allowed)
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except (ValueError, RecursionError):  # a body nested deeper than the decoder goes
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


async def read_change(
    request: web.Request, fields: Iterable[str], options: type[ChangeOptions] = ChangeOptions
) -> tuple[dict[str, Any], ChangeOptions]:
    """The body of a request that changes the desired state: the endpoint's own
    ``fields``, and the change options parsed into ``options`` (``ChangeOptions``)."""
    names = set(options.model_fields)
    data = await read_body(request, {*fields, *names})
    return data, options.parse({k: v for k, v in data.items() if k in names})
