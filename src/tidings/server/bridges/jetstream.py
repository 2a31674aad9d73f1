"""The NATS JetStream inbound bridge, on nats-py (`tidings[nats]`).

    nats://127.0.0.1:4222/?stream=ORDERS&subject=orders.>&channel=orders.{subject}

Reads a stream that exists on the server (`stream=`) through a durable pull consumer
(`durable=`, default `tidings`; made with explicit acks when it does not exist yet,
filtered on `subject=`, default every subject of the stream), `batch` messages per
fetch. Each message is published to the channel its template names (`{subject}`,
`{stream}`), then acknowledged — only after tidings committed it. Its stream sequence
(with the stream's creation time) is its idempotency key: a message JetStream delivers
again (its ack was lost, or tidings stopped before sending it) is not published twice.

At most `max_ack_pending` messages (default 1000, the consumer's own setting when it is
made) wait for their ack. A malformed or oversized message is recorded on the errors
channel (`bridge.errors`) and acknowledged; with `dead_letter=term` it is terminated
instead (JetStream does not deliver it again and publishes a MSG_TERMINATED advisory).
The lag shown is the consumer's pending count, read every few seconds.

Order: messages are published in stream order while the connection holds. After a
failure (a cut connection, tidings killed), the messages that were fetched but not
acknowledged come again only once `ack_wait` (default 30 s) has passed, after later ones
— JetStream does not rewind a consumer. Each is still published once; a channel that
needs strict order takes `max_ack_pending=1` (one message in flight) when its consumer
is made.

With `job=TYPE` each message is submitted as a job instead (keyed by its stream
sequence: a redelivery makes no second job). A message with a `Tidings-Reply-To` header
(a subject) is a request: it is acknowledged only once its job has ended and the outcome
was published to that subject (the result as JSON when the job succeeded, else its
error), with headers `Tidings-Job-Id`, `Tidings-Job-Status` and the request's
`Tidings-Correlation-Id` echoed; meanwhile the bridge tells JetStream the message is in
progress every third of the consumer's `ack_wait`, so that it is not delivered again. A
reply is thus sent at least once (a request tidings did not acknowledge comes again and
finds the same job). Other messages are acknowledged once their job is committed.

Outbound (tidings.server.bridges.outbound): with `forward=`, the messages of the matching
channels are published to `forward_subject=` (default `{channel}`, its one placeholder)
through JetStream, each acknowledged by the stream that captures the subject before the
channel's cursor moves past it (a subject no stream captures fails the publish, and the
bridge retries). Its `Nats-Msg-Id` header is `{channel}:{id}`, so JetStream drops a
message forwarded again within the stream's duplicate window; headers `Tidings-Channel`,
`Tidings-Id` and `Tidings-Event` say where it comes from. A bridge with `forward=` and no
`stream=` only forwards.

    nats://127.0.0.1:4222/?forward=orders.*&forward_subject=tidings.{channel}
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
    float_param,
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
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from tidings.protocol.jobs import Job
    from tidings.protocol.messages import Message
    from tidings.server.jobs import JobService

__all__ = ["BRIDGE", "JetStreamBridge", "parse"]

FIELDS = frozenset({"subject", "stream"})
# The parameters of consuming, refused on a bridge that only forwards.
CONSUME_PARAMS = frozenset(
    {"subject", "durable", "batch", "max_ack_pending", "ack_wait", "dead_letter"}
)
PARAMS = (
    COMMON_PARAMS
    | {
        "stream",
        "subject",
        "durable",
        "batch",
        "max_ack_pending",
        "ack_wait",
        "dead_letter",
        "forward_subject",
    }
    | FORWARD_PARAMS
)
# The placeholder of forward_subject=.
FORWARD_FIELDS = frozenset({"channel"})
# Seconds between two reads of the consumer's pending count (the lag).
LAG_INTERVAL = 5.0
CONNECT_TIMEOUT = 10.0
# The longest a fetch waits for a first message before asking again.
FETCH_WAIT = 1.0
# A job bridge's request headers: where its reply goes, and what it echoes.
REPLY_TO = "Tidings-Reply-To"
CORRELATION_ID = "Tidings-Correlation-Id"
# The longest reply subject taken.
MAX_SUBJECT = 255
# The reply headers, as NATS spells its own (the AMQP bridge's names, capitalised).
REPLY_HEADERS = {"tidings-job-id": "Tidings-Job-Id", "tidings-job-status": "Tidings-Job-Status"}

# The longest JetStream may take to acknowledge one forwarded message.
PUBLISH_TIMEOUT = 30.0


def parse(url: str, max_bytes: int, max_depth: int) -> BridgeSpec:
    """A `nats://` or `tls://` JetStream bridge URL, checked."""
    connect_url, params = split_url(url, PARAMS)
    stream = params.get("stream", "")
    forward = parse_forward(params)
    if not stream and forward is None:
        raise BridgeConfigError(
            "a nats bridge needs stream=NAME: the JetStream stream to read (it must exist), "
            "or forward=CHANNELS to forward"
        )
    if forward is None and "forward_subject" in params:
        raise BridgeConfigError("forward_subject= says where forward= sends: give forward= too")
    if not stream:
        refuse_consuming(params, CONSUME_PARAMS, "consuming (stream=)")
    subject = None
    if forward is not None:
        subject = Template(
            params.get("forward_subject") or "{channel}", FORWARD_FIELDS, "forward_subject"
        )
        literal = subject.text.replace("{channel}", "")
        if len(subject.text) > 255 or any(c in literal for c in " \t\r\n*>"):
            raise BridgeConfigError(
                f"forward_subject={subject.text!r}: a subject to publish to is up to 255 "
                "characters without spaces or wildcards (* >)"
            )
    # An outbound-only bridge is named after its subject, its placeholder spelled out.
    outbound_name = "nats.forward." + (subject.text if subject else "").translate(
        {ord("{"): None, ord("}"): None}
    )
    durable = params.get("durable") or "tidings"
    checked = (("stream", stream), ("durable", durable)) if stream else ()
    for what, value in checked:
        if not value.replace("-", "").replace("_", "").isalnum() or len(value) > 64:
            raise BridgeConfigError(f"{what}={value!r}: use 1-64 characters of A-Z a-z 0-9 - _")
    spec = common_spec(
        "nats",
        url,
        connect_url,
        params,
        FIELDS,
        default_name=(f"nats.{stream}.{durable}" if stream else outbound_name)[:64],
        default_channel=None,
        max_bytes=max_bytes,
        max_depth=max_depth,
        inbound=bool(stream),
    )
    spec.extra["inbound"] = bool(stream)
    spec.extra["forward"] = forward
    spec.extra["forward_subject"] = subject
    if forward is not None:
        check_no_loop(spec, forward)
    spec.extra["stream"] = stream
    spec.extra["durable"] = durable
    spec.extra["subject"] = params.get("subject") or None
    spec.extra["batch"] = int_param(params, "batch", 100, 1, 10_000)
    spec.extra["max_ack_pending"] = int_param(params, "max_ack_pending", 1000, 1, 100_000)
    spec.extra["ack_wait"] = float_param(params, "ack_wait", 30.0, 1.0, 3600.0)
    dead = params.get("dead_letter") or "channel"
    if dead not in ("channel", "term"):
        raise BridgeConfigError(
            f"dead_letter={dead!r}: use channel (record on the errors channel, then ack) or "
            "term (terminate the message: JetStream does not deliver it again)"
        )
    spec.extra["dead_letter"] = dead
    return spec


class JetStreamBridge(Bridge):
    """Drains one durable pull consumer: fetch, publish (or submit) each message, ack it."""

    kind: ClassVar[str] = "nats"

    def __init__(
        self, spec: BridgeSpec, channels: ChannelService, jobs: JobService | None = None
    ) -> None:
        super().__init__(spec, channels, jobs)
        self.stream: str = spec.extra["stream"]
        self.durable: str = spec.extra["durable"]
        self.subject: str | None = spec.extra["subject"]
        self.batch: int = spec.extra["batch"]
        self.term_dead = spec.extra["dead_letter"] == "term"
        # The session's connection (replies go through it) and the seconds between two
        # in-progress acks of a request whose job runs (a third of the consumer's ack_wait).
        self._nc: NatsClient | None = None
        self._keepalive = 10.0
        # The requests this session awaits the jobs of, by bus id: the latest delivery
        # of each (the one in-progress acks and the final ack go to).
        self._held: dict[str, _Held] = {}
        forward: ForwardSpec | None = spec.extra["forward"]
        if forward is not None:
            self.forwarder = JetStreamForwarder(self, forward)

    async def session(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig
        from nats.js.errors import NotFoundError

        lost = asyncio.Event()

        async def on_lost(*_: Any) -> None:
            lost.set()

        # nats-py's own reconnection is off: this bridge's loop reconnects (with its
        # backoff, its state and its counters) as every other kind does.
        nc = await nats.connect(
            self.spec.connect_url,
            allow_reconnect=False,
            connect_timeout=CONNECT_TIMEOUT,
            disconnected_cb=on_lost,
            closed_cb=on_lost,
            error_cb=on_lost,
        )
        try:
            js = nc.jetstream()
            info = await js.stream_info(self.stream)
            created = "" if info.created is None else info.created.isoformat()
            try:
                consumer = await js.consumer_info(self.stream, self.durable)
            except NotFoundError:
                consumer = await js.add_consumer(
                    self.stream,
                    config=ConsumerConfig(
                        durable_name=self.durable,
                        ack_policy=AckPolicy.EXPLICIT,
                        max_ack_pending=self.spec.extra["max_ack_pending"],
                        ack_wait=self.spec.extra["ack_wait"],
                        filter_subject=self.subject,
                    ),
                )
            # In-progress acks keep a request's message ours while its job runs: three
            # within the consumer's own ack_wait.
            self._keepalive = max(0.1, (consumer.config.ack_wait or 30.0) / 3)
            self._nc = nc
            self._held = {}
            sub = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
            self.connected()
            awaiting = self.awaiting = Awaiting(
                1 if self.spec.job is None else self.spec.job.max_replies
            )
            consume: asyncio.Future[Any] = asyncio.ensure_future(self._consume(sub, created))
            lag: asyncio.Future[Any] = asyncio.ensure_future(self._watch_lag(sub))
            gone: asyncio.Future[Any] = asyncio.ensure_future(lost.wait())
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
            for task in (consume, lag, replies):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            raise ConnectionError("the connection to NATS was lost")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2.0)

    async def _consume(self, sub: JetStreamContext.PullSubscription, created: str) -> None:
        import nats.errors

        while not self.stopping:
            try:
                msgs = await sub.fetch(self.batch, timeout=FETCH_WAIT)
            except nats.errors.TimeoutError:
                continue
            for msg in msgs:
                await self._handle(msg, created)

    async def _handle(self, msg: Msg, created: str) -> None:
        values = {"subject": msg.subject, "stream": self.stream}
        bus_id = f"{self.stream}:{created}:{msg.metadata.sequence.stream}"
        reply_to = (msg.headers or {}).get(REPLY_TO) if self.spec.job is not None else None
        held = self._held.get(bus_id)
        if held is not None:
            # Delivered again while its job runs (an in-progress ack came late): the
            # task that awaits the job answers, acknowledging this delivery.
            held.msg = msg
            self.stats.duplicates += 1
            return
        if reply_to is not None and not _subject(reply_to):
            outcome, reason = (
                Outcome.DEAD,
                f"the {REPLY_TO} header {reply_to[:80]!r} is not a subject (1-{MAX_SUBJECT} "
                "characters, no spaces, no wildcards)",
            )
            job = None
        else:
            delivery = await self.deliver(values, msg.data, bus_id)
            outcome, reason, job = delivery.outcome, delivery.reason, delivery.job
        if outcome is Outcome.DEAD:
            if self.term_dead:
                await msg.term()
                self.dead_lettered(reason)
                return
            await self.record_dead(values, msg.data, bus_id, reason)
        elif job is not None and reply_to and self.awaiting is not None:
            held = self._held[bus_id] = _Held(msg)
            await self.awaiting.start(self._reply(held, bus_id, job, reply_to))
            return
        await msg.ack()
        self.stats.acknowledged += 1

    async def _reply(self, held: _Held, bus_id: str, job: Job, reply_to: str) -> None:
        """Wait for `job` to end (telling JetStream the request is in progress), publish
        its outcome to `reply_to` and flush it, then acknowledge the request."""
        try:
            job = await self.ended(job, self._keepalive, held.in_progress)
            body, headers = self.reply_of(job)
            out = {REPLY_HEADERS.get(k, k): v for k, v in headers.items()}
            correlation = (held.msg.headers or {}).get(CORRELATION_ID)
            if correlation is not None:
                out[CORRELATION_ID] = correlation
            nc = self._nc
            if nc is None:
                raise ConnectionError("the connection to NATS was lost")
            await nc.publish(reply_to, body, headers=out)
            await nc.flush()
            await held.msg.ack()
            self.replied()
        finally:
            if self._held.get(bus_id) is held:
                del self._held[bus_id]

    async def _watch_lag(self, sub: JetStreamContext.PullSubscription) -> None:
        while True:
            info = await sub.consumer_info()
            self.stats.lag = (info.num_pending or 0) + (info.num_ack_pending or 0)
            await asyncio.sleep(LAG_INTERVAL)


class _Held:
    """A request whose job a session awaits: its latest delivery."""

    __slots__ = ("msg",)

    def __init__(self, msg: Msg) -> None:
        self.msg = msg

    async def in_progress(self) -> None:
        """Tell JetStream the request is still being worked on (its latest delivery)."""
        await self.msg.in_progress()


def _subject(text: str) -> bool:
    """Whether `text` is a subject a reply may be published to."""
    return (
        0 < len(text) <= MAX_SUBJECT
        and not any(c.isspace() for c in text)
        and not any(t in ("*", ">", "") for t in text.split("."))
    )


def _headers_size(headers: dict[str, str]) -> int:
    """The bytes `headers` take in a NATS message, as nats-py writes them: a first line,
    a line each, a blank line."""
    return len(b"NATS/1.0\r\n\r\n") + sum(len(f"{k}: {v}\r\n".encode()) for k, v in headers.items())


class JetStreamForwarder(Forwarder):
    """Publishes forwarded messages through JetStream on a connection of its own: `send`
    returns once the stream acknowledged the message (stored, or a duplicate of one
    stored within its window)."""

    def __init__(self, bridge: Bridge, forward: ForwardSpec) -> None:
        super().__init__(bridge, forward)
        self.subject: Template = bridge.spec.extra["forward_subject"]
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None

    def target(self) -> str:
        return f"subject {self.subject.text}"

    async def connect(self) -> asyncio.Event:
        import nats

        lost = asyncio.Event()

        async def on_lost(*_: Any) -> None:
            lost.set()

        # No reconnection of nats-py's own: the forwarder's loop reconnects, from the
        # cursors, as the inbound side does.
        self._nc = nc = await nats.connect(
            self.bridge.spec.connect_url,
            allow_reconnect=False,
            connect_timeout=CONNECT_TIMEOUT,
            disconnected_cb=on_lost,
            closed_cb=on_lost,
            error_cb=on_lost,
        )
        self._js = nc.jetstream()
        return lost

    def _encode(self, msg: Message) -> tuple[bytes, dict[str, str]]:
        """A message's body and headers on the bus."""
        body, content_type = body_of(msg, self.bridge.spec.format)
        headers = {
            "Nats-Msg-Id": f"{msg.channel}:{msg.id}",
            "Content-Type": content_type,
            "Tidings-Channel": msg.channel,
            "Tidings-Id": msg.id,
        }
        if msg.event is not None:
            headers["Tidings-Event"] = msg.event
        return body, headers

    def check(self, msg: Message) -> None:
        # The server holds a message's headers and body to its max_payload (nats-py checks
        # the body only) and closes the connection of a client that sends more: such a
        # message is refused here, before it is sent.
        if self._nc is None:
            return
        body, headers = self._encode(msg)
        size = len(body) + _headers_size(headers)
        if size > self._nc.max_payload:
            raise MessageRefused(
                f"the message ({size} bytes with its headers) is over the NATS server's "
                f"max_payload ({self._nc.max_payload})"
            )

    async def send(self, msg: Message) -> None:
        import nats.js.errors

        if self._js is None:
            raise ConnectionError("not connected to NATS")
        body, headers = self._encode(msg)
        subject = self.subject.render({"channel": msg.channel})
        try:
            await self._js.publish(subject, body, timeout=PUBLISH_TIMEOUT, headers=headers)
        except nats.js.errors.NoStreamResponseError as exc:
            # The server's no-responders answer: no stream captures the subject.
            raise MessageRefused(f"no JetStream stream captures subject {subject}") from exc
        except nats.js.errors.APIError as exc:
            # The stream's error answer about this message (over its max_msg_size, full
            # with discard=new, ...): the connection is fine.
            raise MessageRefused(str(exc)) from exc
        # Any other error (no ack in time, a connection closed) ends the session.

    async def disconnect(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            await asyncio.wait_for(nc.close(), 2.0)


BRIDGE = JetStreamBridge
