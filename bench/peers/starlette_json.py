"""Peer for the durable-publish measurement: a bare Starlette route that parses a JSON body.

Run with the peers' venv: `uvicorn starlette_json:app --app-dir bench/peers` (uvloop, httptools).
Nothing is stored: this is the cost of an HTTP request plus JSON parsing, the floor a
durable publish is compared with.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def publish(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse(
        {"channel": request.path_params["channel"], "bytes": len(str(body["data"]))},
        status_code=201,
    )


app = Starlette(routes=[Route("/publish/{channel}", publish, methods=["POST"])])
