"""The agent's HTTP/JSON API (version 1), served on a unix socket.

One API for the `voxnode` CLI and the web console. ``http`` holds what every area shares
(the app context, the error middleware, body reading, JSON responses); each other module
is one area and registers its routes with ``add_routes``. ``make_app`` builds the app with
the areas every agent has (status, config, network, mode); the daemon adds the others
(services, ha, jobs, licence, mcs), which need their own managers.
"""

from __future__ import annotations

from aiohttp import web

from agent.api import config, mode, network, status
from agent.api.http import CTX, AgentContext, error_middleware

__all__ = ["AgentContext", "make_app"]


def make_app(ctx: AgentContext) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=4 * 1024 * 1024)
    app[CTX] = ctx
    status.add_routes(app)
    config.add_routes(app)
    network.add_routes(app)
    mode.add_routes(app)
    return app
