"""The RabbitMQ (AMQP 0-9-1) inbound bridge, on aio-pika (`tidings[amqp]`).

    amqp://guest:guest@127.0.0.1:5672/?queue=orders&channel=orders.{routing_key}&event=order

Consumes a queue that exists on the broker (`queue=`), or binds one to an exchange
(`exchange=` with `binding=` keys, comma-separated, default `#`): with `queue=` too, that
queue is bound (it must exist); without, a server-named queue that lives as long as the
connection is made and bound — messages sent while tidings is away are then not kept.

Each message is published to the channel its template names (`{routing_key}`,
`{exchange}`, `{queue}`, `{type}`: the message's type property), then acknowledged — only
after tidings committed it. Its `message_id` property is its idempotency key: a
redelivered message (the connection dropped before the ack reached the broker) is not
published twice. A message without one is published at least once.

At most `prefetch` messages (default 100) are on their way to tidings at once. A
malformed or oversized message is recorded on the errors channel (`bridge.errors`) and
acknowledged; with `dead_letter=reject` it is rejected without requeue instead, which the
broker routes to the queue's dead-letter exchange when it has one (and drops otherwise).
The lag shown is the queue's count of ready messages, read every few seconds.

With `job=TYPE` each message is submitted as a job instead (its `message_id` the job's
idempotency key: a redelivery makes no second job). A message without `reply_to` is
acknowledged once the job is committed. A message with `reply_to` (an RPC request) is
acknowledged only once its job has ended and the outcome was published, through the
default exchange, to its `reply_to` queue, with its `correlation_id` and the headers
`tidings-job-id` and `tidings-job-status` (the body: the result as JSON when the job
succeeded, else its error). A reply is thus sent at least once: when tidings stops
before, the broker delivers the request again, which finds the same job. RabbitMQ closes
a channel whose delivery stayed unacknowledged past its `consumer_timeout` (30 minutes by
default): jobs that run longer make the bridge reconnect, and wait again.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, ClassVar

from tidings.server.bridges.base import (
    COMMON_PARAMS,
    Awaiting,
    Bridge,
    BridgeConfigError,
    BridgeSpec,
    Outcome,
    common_spec,
    int_param,
    split_url,
)
from tidings.server.channels import ChannelService

if TYPE_CHECKING:
    import aio_pika
    from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue

    from tidings.protocol.jobs import Job
    from tidings.server.jobs import JobService

__all__ = ["BRIDGE", "AmqpBridge", "parse"]

FIELDS = frozenset({"routing_key", "exchange", "queue", "type"})
PARAMS = COMMON_PARAMS | {"queue", "exchange", "binding", "prefetch", "dead_letter"}
# Seconds between two reads of the queue's length (the lag).
LAG_INTERVAL = 5.0
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0


def parse(url: str, max_bytes: int, max_depth: int) -> BridgeSpec:
    """An `amqp://` or `amqps://` bridge URL, checked."""
    connect_url, params = split_url(url, PARAMS)
    queue, exchange = params.get("queue", ""), params.get("exchange", "")
    if not queue and not exchange:
        raise BridgeConfigError(
            "an amqp bridge needs queue=NAME (a queue on the broker) or exchange=NAME "
            "(with binding=KEY,...) to consume"
        )
    if "binding" in params and not exchange:
        raise BridgeConfigError("binding= binds to an exchange: give exchange= too")
    spec = common_spec(
        "amqp",
        url,
        connect_url,
        params,
        FIELDS,
        default_name=f"amqp.{queue or exchange}"[:64],
        default_channel=None,
        max_bytes=max_bytes,
        max_depth=max_depth,
    )
    spec.extra["prefetch"] = int_param(params, "prefetch", 100, 1, 10_000)
    dead = params.get("dead_letter") or "channel"
    if dead not in ("channel", "reject"):
        raise BridgeConfigError(
            f"dead_letter={dead!r}: use channel (record on the errors channel, then ack) or "
            "reject (reject without requeue: the queue's dead-letter exchange)"
        )
    spec.extra["dead_letter"] = dead
    bindings = [b for b in (params.get("binding") or "#").split(",") if b]
    spec.extra["bindings"] = bindings
    return spec


class AmqpBridge(Bridge):
    """Consumes one queue; each message published to its channel (or submitted as a
    job), then acknowledged."""

    kind: ClassVar[str] = "amqp"

    def __init__(
        self, spec: BridgeSpec, channels: ChannelService, jobs: JobService | None = None
    ) -> None:
        super().__init__(spec, channels, jobs)
        self.queue_name = spec.params.get("queue", "")
        self.exchange_name = spec.params.get("exchange", "")
        self.prefetch: int = spec.extra["prefetch"]
        self.reject_dead = spec.extra["dead_letter"] == "reject"
        self.bindings: list[str] = spec.extra["bindings"]

    async def session(self) -> None:
        import aio_pika

        connection = await aio_pika.connect(self.spec.connect_url, timeout=CONNECT_TIMEOUT)
        closed = asyncio.Event()
        connection.close_callbacks.add(lambda *_: closed.set())
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=self.prefetch)
            queue = await self._queue(channel)
            self.connected()
            awaiting = self.awaiting = Awaiting(
                1 if self.spec.job is None else self.spec.job.max_replies
            )
            consume: asyncio.Future[Any] = asyncio.ensure_future(
                self._consume(queue, channel.default_exchange)
            )
            lag: asyncio.Future[Any] = asyncio.ensure_future(
                self._watch_lag(connection, queue.name)
            )
            gone: asyncio.Future[Any] = asyncio.ensure_future(closed.wait())
            replies: asyncio.Future[Any] = asyncio.ensure_future(awaiting.failed())
            tasks = (consume, lag, gone, replies)
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await awaiting.close()
                self.awaiting = None
            # The consumer, the lag reader or a reply failed: that failure is the session's.
            for task in (consume, lag, replies):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            raise ConnectionError("the broker closed the connection")
        finally:
            # A broker that went away may never answer the close: not waited for long.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT)

    async def _queue(self, channel: aio_pika.abc.AbstractChannel) -> AbstractQueue:
        """The queue to consume: the named one (it must exist), bound to the exchange if
        one is named; or a server-named one bound to the exchange."""
        if self.queue_name:
            queue = await channel.declare_queue(self.queue_name, passive=True)
        else:
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        if self.exchange_name:
            exchange = await channel.get_exchange(self.exchange_name, ensure=True)
            for key in self.bindings:
                await queue.bind(exchange, routing_key=key)
        self.stats.lag = queue.declaration_result.message_count
        return queue

    async def _consume(self, queue: AbstractQueue, replies: AbstractExchange) -> None:
        """Messages in the order the broker hands them, one at a time: publish (or
        submit), then ack; a request's reply is awaited in a task of its own."""
        async with queue.iterator() as messages:
            async for message in messages:
                await self._handle(message, queue.name, replies)
                if self.stopping:
                    return

    async def _handle(
        self, message: AbstractIncomingMessage, queue: str, replies: AbstractExchange
    ) -> None:
        values = {
            "routing_key": message.routing_key or "",
            "exchange": message.exchange or "",
            "queue": queue,
            "type": message.type or "",
        }
        bus_id = message.message_id or None
        delivery = await self.deliver(values, message.body, bus_id)
        if delivery.outcome is Outcome.DEAD:
            if self.reject_dead:
                await message.reject(requeue=False)
                self.dead_lettered(delivery.reason)
                return
            await self.record_dead(values, message.body, bus_id, delivery.reason)
        elif delivery.job is not None and message.reply_to and self.awaiting is not None:
            await self.awaiting.start(self._reply(message, delivery.job, replies))
            return
        await message.ack()
        self.stats.acknowledged += 1

    async def _reply(
        self, message: AbstractIncomingMessage, job: Job, replies: AbstractExchange
    ) -> None:
        """Wait for `job` to end, publish its outcome to the request's reply_to queue
        (confirmed by the broker), then acknowledge the request."""
        import aio_pika

        job = await self.ended(job)
        body, headers = self.reply_of(job)
        reply = aio_pika.Message(
            body,
            content_type="application/json",
            correlation_id=message.correlation_id,
            headers=dict(headers),
        )
        # Through the default exchange: reply_to names a queue (or RabbitMQ's direct
        # reply-to pseudo-queue). A queue that is gone drops the reply; the request
        # is still acknowledged (its asker left).
        await replies.publish(reply, routing_key=message.reply_to or "")
        await message.ack()
        self.replied()

    async def _watch_lag(self, connection: Any, queue: str) -> None:
        """The queue's ready messages, read every LAG_INTERVAL seconds on a channel of
        its own (a failed passive declare closes the channel it was asked on)."""
        channel = await connection.channel()
        try:
            while True:
                await asyncio.sleep(LAG_INTERVAL)
                declared = await channel.declare_queue(queue, passive=True)
                self.stats.lag = declared.declaration_result.message_count
        finally:
            with contextlib.suppress(Exception):
                await channel.close()


BRIDGE = AmqpBridge
