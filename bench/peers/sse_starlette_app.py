"""Peer for the SSE fan-out: sse-starlette with an in-process broadcast (no Redis).

The usual shape of an sse-starlette server: each subscriber gets a bounded asyncio.Queue
and the generator that EventSourceResponse drives in its own task; a publish puts the text
into every queue of the channel (dropping for a full one). Run with the peers' venv:
`uvicorn sse_starlette_app:app --app-dir bench/peers`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

QUEUE_SIZE = 1000


async def events(request: Request) -> EventSourceResponse:
    channels: dict[str, set[asyncio.Queue[str]]] = request.app.state.channels
    subs = channels.setdefault(request.path_params["channel"], set())
    queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
    subs.add(queue)

    async def stream() -> AsyncIterator[dict[str, str]]:
        try:
            while True:
                yield {"data": await queue.get()}
        finally:
            subs.discard(queue)

    return EventSourceResponse(stream())


async def publish(request: Request) -> JSONResponse:
    channels: dict[str, set[asyncio.Queue[str]]] = request.app.state.channels
    text = (await request.body()).decode()
    delivered = 0
    for queue in channels.get(request.path_params["channel"], ()):
        if not queue.full():
            queue.put_nowait(text)
            delivered += 1
    return JSONResponse({"delivered": delivered}, status_code=201)


app = Starlette(
    routes=[
        Route("/events/{channel}", events),
        Route("/publish/{channel}", publish, methods=["POST"]),
    ]
)
app.state.channels = {}
