"""Administration endpoints (`/v1/admin/...`): what an operator asks the server itself.

`GET /v1/admin/network` is `tidings doctor` run by the server, for its own store's host:
the route the kernel takes to it, TCP connect times, and the default gateway's MAC.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings import doctor
from tidings.http.common import json_response, query_int, require_admin
from tidings.settings import Settings

__all__ = ["routes"]


async def network(request: Request) -> Response:
    """The doctor's report for the server's store host (`?tries=N`, default 5)."""
    require_admin(request)
    settings: Settings = request.app.state.settings
    tries = query_int(request, "tries", doctor.DEFAULT_TRIES, 1, 20)
    # Netlink reads and blocking connects: off the event loop.
    report = await asyncio.to_thread(doctor.store_report, settings.store, tries)
    return json_response(report)


routes = [Route("/v1/admin/network", network, methods=["GET"])]
