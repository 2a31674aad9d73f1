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

Outbound (tidings.server.bridges.outbound): with `forward=`, the messages of the matching
channels are published to `forward_exchange=` (it must exist; a template whose one
placeholder is `{channel}`) with routing key `forward_key=` (default `{channel}`), as
persistent messages whose `message_id` is `{channel}:{id}`, `type` the event, and
headers `tidings-channel`, `tidings-id` and `tidings-event`; each is confirmed by the
broker (publisher confirms) before the channel's cursor moves past it. A templated
exchange that does not exist, or a nack, holds back that channel only until the broker
takes the message (MessageRefused). A message the exchange routes to no queue is dropped
by the broker, as for any publisher: bind a queue first. A bridge with `forward=` and
neither `queue=` nor `exchange=` only forwards.

    amqp://guest:guest@127.0.0.1:5672/?forward=orders.*&forward_exchange=events
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
    Template,
    common_spec,
    int_param,
    split_url,
)
from tidings.server.bridges.outbound import (
    FORWARD_PARAMS,
    Forwarder,
    ForwardSpec,
    MessageRefused,
    body_of,
    check_no_loop,
    parse_forward,
    refuse_consuming,
)
from tidings.server.channels import ChannelService

if TYPE_CHECKING:
    import aio_pika
    from aio_pika.abc import AbstractExchange, AbstractIncomingMessage, AbstractQueue

    from tidings.protocol.jobs import Job
    from tidings.protocol.messages import Message
    from tidings.server.jobs import JobService

__all__ = ["BRIDGE", "AmqpBridge", "parse"]

FIELDS = frozenset({"routing_key", "exchange", "queue", "type"})
# The parameters of consuming, refused on a bridge that only forwards.
CONSUME_PARAMS = frozenset({"prefetch", "dead_letter"})
PARAMS = (
    COMMON_PARAMS
    | FORWARD_PARAMS
    | {"queue", "exchange", "binding", "prefetch", "dead_letter", "forward_exchange", "forward_key"}
)
# The placeholder of forward_exchange= and forward_key=.
FORWARD_FIELDS = frozenset({"channel"})
# Seconds between two reads of the queue's length (the lag).
LAG_INTERVAL = 5.0
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0


def parse(url: str, max_bytes: int, max_depth: int) -> BridgeSpec:
    """An `amqp://` or `amqps://` bridge URL, checked."""
    connect_url, params = split_url(url, PARAMS)
    queue, exchange = params.get("queue", ""), params.get("exchange", "")
    forward = parse_forward(params)
    inbound = bool(queue or exchange)
    if not inbound and forward is None:
        raise BridgeConfigError(
            "an amqp bridge needs queue=NAME (a queue on the broker) or exchange=NAME "
            "(with binding=KEY,...) to consume, or forward=CHANNELS to forward"
        )
    if "binding" in params and not exchange:
        raise BridgeConfigError("binding= binds to an exchange: give exchange= too")
    if not inbound:
        refuse_consuming(params, CONSUME_PARAMS, "consuming (queue= or exchange=)")
    target = None if forward is None else _forward_target(params)
    if forward is None and ("forward_exchange" in params or "forward_key" in params):
        raise BridgeConfigError(
            "forward_exchange= and forward_key= say where forward= sends: give forward= too"
        )
    # An outbound-only bridge is named after its exchange, its placeholder spelled out.
    outbound_name = (
        "" if target is None else "forward." + target[0].text.replace("{", "").replace("}", "")
    )
    spec = common_spec(
        "amqp",
        url,
        connect_url,
        params,
        FIELDS,
        default_name=f"amqp.{queue or exchange or outbound_name}"[:64],
        default_channel=None,
        max_bytes=max_bytes,
        max_depth=max_depth,
        inbound=inbound,
    )
    spec.extra["inbound"] = inbound
    spec.extra["forward"] = forward
    if forward is not None and target is not None:
        check_no_loop(spec, forward)
        spec.extra["forward_exchange"], spec.extra["forward_key"] = target
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


def _forward_target(params: dict[str, str]) -> tuple[Template, Template]:
    """forward_exchange= and forward_key=, checked."""
    exchange = params.get("forward_exchange", "")
    if not exchange:
        raise BridgeConfigError(
            "forward= needs forward_exchange=NAME: the exchange (it must exist) the messages "
            "are published to; {channel} in it is the channel's name"
        )
    ex = Template(exchange, FORWARD_FIELDS, "forward_exchange")
    key = Template(params.get("forward_key") or "{channel}", FORWARD_FIELDS, "forward_key")
    literal = ex.text.replace("{channel}", "")
    if len(ex.text) > 255 or not all(c.isalnum() or c in "-_.:{}" for c in literal):
        raise BridgeConfigError(
            f"forward_exchange={exchange!r}: an exchange name is up to 255 characters of "
            "A-Z a-z 0-9 - _ . :"
        )
    if len(key.text) > 255:
        raise BridgeConfigError("forward_key= is over 255 characters: the most AMQP allows")
    return ex, key


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
        forward: ForwardSpec | None = spec.extra["forward"]
        if forward is not None:
            self.forwarder = AmqpForwarder(self, forward)

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


class AmqpForwarder(Forwarder):
    """Publishes forwarded messages on a channel of its own connection, with publisher
    confirms: `send` returns once the broker has taken the message."""

    def __init__(self, bridge: Bridge, forward: ForwardSpec) -> None:
        super().__init__(bridge, forward)
        self.exchange: Template = bridge.spec.extra["forward_exchange"]
        self.key: Template = bridge.spec.extra["forward_key"]
        self._connection: Any = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        # A channel of its own for the passive declares of a templated exchange: a missing
        # exchange closes the channel it is asked on, which must not be the publishing one.
        self._probe: aio_pika.abc.AbstractChannel | None = None
        self._probing = asyncio.Lock()

    def target(self) -> str:
        return f"exchange {self.exchange.text}, routing key {self.key.text}"

    async def connect(self) -> asyncio.Event:
        import aio_pika

        self._exchanges.clear()
        self._probe = None
        connection = await aio_pika.connect(self.bridge.spec.connect_url, timeout=CONNECT_TIMEOUT)
        self._connection = connection
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_: lost.set())
        self._channel = channel = await connection.channel(publisher_confirms=True)
        if not self.exchange.fields:
            # Checked once now: a missing exchange is a failure to report at once.
            self._exchanges[self.exchange.text] = await channel.get_exchange(
                self.exchange.text, ensure=True
            )
        return lost

    async def prepare(self, channel: str) -> None:
        """A templated exchange is looked up (a passive declare) the first time a channel
        of this connection names it: one that does not exist refuses the channel's
        messages (MessageRefused) until it is made, while the other channels go on."""
        import aiormq.exceptions

        name = self.exchange.render({"channel": channel})
        if not self.exchange.fields or name in self._exchanges:
            return
        async with self._probing:
            if name in self._exchanges:
                return
            if self._channel is None or self._connection is None:
                raise ConnectionError("not connected to the broker")
            if self._probe is None or self._probe.is_closed:
                self._probe = await self._connection.channel(publisher_confirms=False)
            try:
                await self._probe.get_exchange(name, ensure=True)
            except aiormq.exceptions.ChannelNotFoundEntity as exc:
                # The broker closed the probe channel only (404 NOT_FOUND); the next
                # lookup opens another.
                self._probe = None
                raise MessageRefused(f"exchange {name!r} does not exist: {exc}") from exc
            if len(self._exchanges) < 1000:
                self._exchanges[name] = await self._channel.get_exchange(name, ensure=False)

    async def send(self, msg: Message) -> None:
        import aio_pika
        import aiormq.exceptions

        if self._channel is None:
            raise ConnectionError("not connected to the broker")
        values = {"channel": msg.channel}
        name = self.exchange.render(values)
        exchange = self._exchanges.get(name)
        if exchange is None:
            exchange = await self._channel.get_exchange(name, ensure=False)
            if len(self._exchanges) < 1000:
                self._exchanges[name] = exchange
        body, content_type = body_of(msg, self.bridge.spec.format)
        headers: dict[str, Any] = {"tidings-channel": msg.channel, "tidings-id": msg.id}
        if msg.event is not None:
            headers["tidings-event"] = msg.event
        message = aio_pika.Message(
            body,
            message_id=f"{msg.channel}:{msg.id}",
            content_type=content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            type=msg.event,
            timestamp=msg.time,
            headers=headers,
        )
        try:
            await exchange.publish(
                message, routing_key=self.key.render(values), mandatory=False, timeout=30.0
            )
        except aiormq.exceptions.DeliveryError as exc:
            # A nack: the broker (a queue full with overflow=reject-publish, a queue that
            # failed) did not take this message; the channel stays open.
            raise MessageRefused(f"the broker nacked the message (exchange {name!r})") from exc
        # A closed channel or connection, or no confirmation in time, ends the session.

    async def disconnect(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        self._probe = None
        if connection is not None:
            await asyncio.wait_for(connection.close(), CLOSE_TIMEOUT)


BRIDGE = AmqpBridge
