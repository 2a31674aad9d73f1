"""Peer for the bridge benchmark: what users write today to push RabbitMQ messages to
browsers — an aio-pika consumer inside an sse-starlette app.

The app's lifespan connects to RabbitMQ (BENCH_AMQP_URL), consumes the queue
BENCH_AMQP_QUEUE (it must exist) with a prefetch of 100, and hands each message's body
(UTF-8 text) to every connected subscriber's bounded asyncio.Queue (a full one drops it:
a stalled client must not hold the consumer up), then acknowledges it. GET /events is
the stream: EventSourceResponse drives each subscriber's generator in its own task.
Run with the peers' venv: `uvicorn amqp_sse_peer:app --app-dir bench/peers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

QUEUE_SIZE = 1000
PREFETCH = 100

subscribers: set[asyncio.Queue[str]] = set()


async def on_message(message: AbstractIncomingMessage) -> None:
    # process() acknowledges when the block ends (rejects if it raises).
    async with message.process():
        text = message.body.decode()
        for queue in subscribers:
            if not queue.full():
                queue.put_nowait(text)


async def events(request: Request) -> EventSourceResponse:
    queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_SIZE)
    subscribers.add(queue)

    async def stream() -> AsyncIterator[dict[str, str]]:
        try:
            while True:
                yield {"data": await queue.get()}
        finally:
            subscribers.discard(queue)

    return EventSourceResponse(stream())


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    connection = await aio_pika.connect_robust(os.environ["BENCH_AMQP_URL"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=PREFETCH)
    queue = await channel.declare_queue(os.environ["BENCH_AMQP_QUEUE"], passive=True)
    await queue.consume(on_message)
    try:
        yield
    finally:
        await connection.close()


app = Starlette(routes=[Route("/events", events)], lifespan=lifespan)
