"""The RabbitMQ side of the `bridges` measurement of bench/run.py: queues and publishers.

Each round has a queue of its own (`declare_queue`, `delete_queue`), made before the
server under test starts consuming it and deleted after. Messages go through the default
exchange to that queue, with publisher confirms, as UTF-8 text `msg N ts=<microseconds
since the epoch>`: the time taken just before the publish, which bench/sseload.c reads
back on each subscriber to give the bus-to-subscriber latency.

Runs in the project's venv (aio-pika comes with `tidings[amqp]`).
"""

from __future__ import annotations

import asyncio
import time

import aio_pika

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
# Seconds a broker operation may take before the measurement is abandoned.
BROKER_TIMEOUT = 30.0


def _body(n: int) -> bytes:
    return f"msg {n} ts={time.time_ns() // 1000}".encode()


async def _declare(name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL, timeout=BROKER_TIMEOUT)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(name, durable=False, auto_delete=False)


async def _delete(name: str) -> None:
    connection = await aio_pika.connect(AMQP_URL, timeout=BROKER_TIMEOUT)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)


async def _consumers(name: str) -> int:
    connection = await aio_pika.connect(AMQP_URL, timeout=BROKER_TIMEOUT)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        return int(queue.declaration_result.consumer_count)


def declare_queue(name: str) -> None:
    """A fresh, non-durable queue `name` (the caller deletes it)."""
    asyncio.run(asyncio.wait_for(_declare(name), BROKER_TIMEOUT))


def delete_queue(name: str) -> None:
    asyncio.run(asyncio.wait_for(_delete(name), BROKER_TIMEOUT))


def wait_consumer(name: str, timeout: float = 30.0) -> None:
    """Return once queue `name` has a consumer (the server under test is attached)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if asyncio.run(asyncio.wait_for(_consumers(name), BROKER_TIMEOUT)) > 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"no consumer on queue {name!r} after {timeout:g} s")


async def _paced(queue: str, count: int, rate: float) -> float:
    connection = await aio_pika.connect(AMQP_URL, timeout=BROKER_TIMEOUT)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        began = time.time()
        start = time.monotonic()
        for n in range(count):
            # On schedule, not after the previous confirm: the rate stays `rate`.
            await asyncio.sleep(max(0.0, start + n / rate - time.monotonic()))
            await channel.default_exchange.publish(aio_pika.Message(_body(n)), routing_key=queue)
        return began


async def _burst(queue: str, count: int) -> tuple[float, float]:
    connection = await aio_pika.connect(AMQP_URL, timeout=BROKER_TIMEOUT)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = channel.default_exchange

        async def one(n: int) -> None:
            await exchange.publish(aio_pika.Message(_body(n)), routing_key=queue)

        began = time.time()
        # Every publish is sent before any confirm is awaited; all are confirmed at the end.
        await asyncio.gather(*(one(n) for n in range(count)))
        return began, time.time()


def publish_paced(queue: str, count: int, rate: float) -> float:
    """Publish `count` messages to `queue` at `rate` a second, each confirmed before the
    next; the wall-clock time of the first publish."""
    timeout = BROKER_TIMEOUT + count / rate
    return asyncio.run(asyncio.wait_for(_paced(queue, count, rate), timeout))


def publish_burst(queue: str, count: int) -> tuple[float, float]:
    """Publish `count` messages to `queue` as fast as the broker confirms them; the
    wall-clock times of the first publish and of the last confirm."""
    return asyncio.run(asyncio.wait_for(_burst(queue, count), BROKER_TIMEOUT))
