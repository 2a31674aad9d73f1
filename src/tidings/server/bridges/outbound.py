"""Bridges' outbound side: messages published on matching channels, forwarded to the bus.

    amqp://guest:guest@127.0.0.1:5672/?forward=orders.*,audit&forward_exchange=events
    nats://127.0.0.1:4222/?forward=orders.*&forward_subject=tidings.{channel}
    mqtt://127.0.0.1:1883/?forward=orders.*&forward_topic=tidings/{channel}

`forward=` names the channels, comma-separated (at most 32 entries): a channel name, or a
prefix pattern `prefix*` (`orders.*`: every channel whose name starts with `orders.`;
`job.*` channels are never forwarded). The kind says where each message goes (AMQP:
`forward_exchange=` and `forward_key=`, NATS: `forward_subject=`, MQTT: `forward_topic=`,
templates whose one placeholder is `{channel}`). `forward_lease=` (seconds, default 15)
is the lease below, `forward_batch=` (default 100) the most messages of a channel on
their way at once.

One node forwards a bridge's channels at a time, whatever the number of nodes sharing
the store: the holder of the bridge's lease (ForwardStore), which renews it every third
of its time to live and stops forwarding as soon as it cannot be sure it still holds it.
For each matching channel the holder runs one worker: it reads up to forward_batch messages
after the channel's cursor (the id of the last message forwarded, kept in the store),
woken by the publish of the next one as a long poll is (with a poll every POLL_WAIT
seconds besides), publishes them to the bus in order and waits for the bus to confirm
each (AMQP publisher confirms, a JetStream publish ack, an MQTT PUBACK), then moves the
cursor. So messages are forwarded at least once and, per channel, in order: after a
crash, a cut connection or a change of holder, the messages after the stored cursor are
published again — those between the last cursor write and the failure reach the bus
twice, with the same message id (`{channel}:{id}`: the AMQP `message_id`, JetStream's
`Nats-Msg-Id`, which JetStream deduplicates within its window, the MQTT user property
`message-id`). One case breaks the order of first arrivals: a bus that refuses one
message (an AMQP nack, an MQTT PUBACK with an error code) and takes the
next ones of the same batch — those come first, then again after the refused one;
`forward_batch=1` (one message at a time, one round trip each) rules that out.

A bus that refuses one message while its connection stays usable (MessageRefused: a
JetStream stream's error answer, a subject no stream captures, a payload over the
server's max_payload; an AMQP nack, a templated exchange that does not exist; an MQTT
PUBACK with an error code) stalls that channel only: its worker leaves the cursor before
the refused message and tries it again after a backoff of its own (REFUSED_FIRST seconds,
doubling up to REFUSED_CAP), while the other channels go on on the same connection and
lease. Nothing is skipped: the channel moves on by itself once the bus takes the message
(its cause fixed). The admin view shows the stalled channels and their errors (`stalled`)
and counts the refusals (`refused`). Any other error ends the session of every channel:
reconnect, after the bridge's backoff.

Named channels are forwarded from the start; channels matching a prefix are found by a
scan of the store's channel list, one page per pattern every SCAN_INTERVAL seconds, so a
new channel's first messages go out within a few seconds. A channel without a cursor is
forwarded from its oldest retained message. A channel whose history was trimmed past its
cursor (retention) is forwarded from its oldest retained message, and the messages lost
are counted (`missed`). At most MAX_FORWARD_CHANNELS channels a bridge.

A bridge's inbound side must not feed its outbound side: a `forward=` pattern that may
match the channel its inbound template writes (or its errors channel) is refused when
the server starts. Two bridges that feed each other through a bus are not detected.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

from tidings.protocol.jobs import JOB_CHANNEL_PREFIX
from tidings.protocol.messages import Message, valid_channel
from tidings.server.bridges.base import (
    Backoff,
    BridgeConfigError,
    BridgeState,
    Template,
    float_param,
    int_param,
)
from tidings.server.constants import MAX_FORWARD_CHANNELS

if TYPE_CHECKING:
    from tidings.server.bridges.base import Bridge, BridgeSpec

__all__ = [
    "FORWARD_PARAMS",
    "ForwardSpec",
    "Forwarder",
    "LeaseLost",
    "MessageRefused",
    "body_of",
    "check_no_loop",
    "parse_forward",
    "refuse_consuming",
]

log = logging.getLogger("tidings.bridges")

# The query parameters of the outbound side every kind takes.
FORWARD_PARAMS = frozenset({"forward", "forward_lease", "forward_batch"})
# Most entries of forward=.
MAX_PATTERNS = 32
# Messages one worker reads (and publishes before its cursor is written) at a time, by
# default (forward_batch=), and at most.
BATCH = 100
MAX_BATCH = 1000
# Seconds between two pages of a prefix pattern's scan, and the size of a page.
SCAN_INTERVAL = 1.0
SCAN_PAGE = 500
# A worker reads its channel at least this often even when no publish woke it.
POLL_WAIT = 30.0
# Seconds a worker waits when the hub is closing (shutdown) before it looks again.
IDLE_WAIT = 0.5
# The longest the bus may take to confirm one message.
CONFIRM_TIMEOUT = 30.0
# The longest a release of the lease is waited for when forwarding stops.
RELEASE_TIMEOUT = 2.0
# The share of the lease's time to live a holder counts on: it stops forwarding this
# much before the lease could have expired in the store (clocks and delays differ).
LEASE_MARGIN = 0.8
# A channel whose message the bus refused tries it again after this long, doubling up to
# REFUSED_CAP seconds (with jitter).
REFUSED_FIRST = 1.0
REFUSED_CAP = 60.0
# The most stalled channels the admin view names (all are counted).
STALLED_SHOWN = 10


class LeaseLost(Exception):
    """This node no longer holds (or can no longer be sure it holds) the bridge's lease."""


class MessageRefused(Exception):
    """The bus refused this one message and its connection stays usable (a driver raises
    it only for the errors that say so): the channel is retried on its own, the others go
    on."""


@dataclass(frozen=True, slots=True)
class ForwardSpec:
    """What `forward=` names: channels by name and by prefix, and the lease's time.

    Args:
        text: `forward=` as given.
        names: the channels named exactly.
        prefixes: the prefixes of the `prefix*` patterns.
        lease: the lease's time to live, in seconds.
        batch: the most messages of a channel on their way to the bus at once.
    """

    text: str
    names: frozenset[str]
    prefixes: tuple[str, ...]
    lease: float
    batch: int = BATCH

    def matches(self, channel: str) -> bool:
        """Whether `channel` is forwarded (never a job's channel)."""
        if channel.startswith(JOB_CHANNEL_PREFIX):
            return False
        return channel in self.names or any(channel.startswith(p) for p in self.prefixes)


def refuse_consuming(params: dict[str, str], keys: frozenset[str], what: str) -> None:
    """BridgeConfigError naming the first of a kind's consuming parameters (`keys`) given
    to a bridge that only forwards, where they would be ignored; `what` says what they
    set, e.g. "consuming (stream=)"."""
    for key in sorted(keys & params.keys()):
        raise BridgeConfigError(
            f"{key}= is a setting of {what}, and this bridge only forwards: remove it"
        )


def parse_forward(params: dict[str, str]) -> ForwardSpec | None:
    """`forward=` and `forward_lease=`, checked; None when the bridge forwards nothing."""
    text = params.get("forward")
    if text is None:
        for key in ("forward_lease", "forward_batch"):
            if key in params:
                raise BridgeConfigError(f"{key}= is a setting of forward=: give forward= too")
        return None
    entries = [e for e in text.split(",") if e]
    if not entries:
        raise BridgeConfigError(
            "forward= is empty: name channels (orders) or prefixes (orders.*), comma-separated"
        )
    if len(entries) > MAX_PATTERNS:
        raise BridgeConfigError(f"forward= has {len(entries)} entries: at most {MAX_PATTERNS}")
    names: set[str] = set()
    prefixes: list[str] = []
    for entry in entries:
        if entry.endswith("*"):
            prefix = entry[:-1]
            if not prefix:
                raise BridgeConfigError(
                    "forward=* would forward every channel: name a prefix (orders.*)"
                )
            # A prefix is a channel name's start: the same characters, no other '*'.
            if not valid_channel(prefix):
                raise BridgeConfigError(
                    f"forward={entry!r}: a pattern is a prefix of 1-200 characters of "
                    "A-Z a-z 0-9 . _ : - ending with *"
                )
            if prefix.startswith(JOB_CHANNEL_PREFIX) or JOB_CHANNEL_PREFIX.startswith(prefix):
                raise BridgeConfigError(
                    f"forward={entry!r}: channels job.* belong to the job system and are "
                    "never forwarded"
                )
            prefixes.append(prefix)
        else:
            if not valid_channel(entry):
                raise BridgeConfigError(
                    f"forward={entry!r}: not a channel name (1-200 characters of "
                    "A-Z a-z 0-9 . _ : -) nor a prefix pattern (orders.*)"
                )
            if entry.startswith(JOB_CHANNEL_PREFIX):
                raise BridgeConfigError(
                    f"forward={entry!r}: channels job.* belong to the job system"
                )
            names.add(entry)
    lease = float_param(params, "forward_lease", 15.0, 2.0, 300.0)
    batch = int_param(params, "forward_batch", BATCH, 1, MAX_BATCH)
    return ForwardSpec(text, frozenset(names), tuple(prefixes), lease, batch)


def _may_write(template: Template, forward: ForwardSpec) -> bool:
    """Whether a channel `template` renders may be one `forward` matches (a prefix of the
    template's text before its first placeholder is all that is known of it)."""
    if not template.fields:
        return forward.matches(template.text)
    literal = template.text[: template.text.find("{")]
    if any(name.startswith(literal) for name in forward.names):
        return True
    return any(p.startswith(literal) or literal.startswith(p) for p in forward.prefixes)


def check_no_loop(spec: BridgeSpec, forward: ForwardSpec) -> None:
    """BridgeConfigError when the bridge's inbound side may write a channel its outbound
    side forwards: each message would go round, bus to channel to bus."""
    if spec.channel is not None and _may_write(spec.channel, forward):
        raise BridgeConfigError(
            f"forward={forward.text!r} may match channel={spec.channel.text!r}, which this "
            "bridge's inbound side writes: its messages would be forwarded back to the bus; "
            "forward other channels, or use two bridges on separate buses"
        )
    if spec.extra.get("inbound", True) and forward.matches(spec.errors):
        raise BridgeConfigError(
            f"forward={forward.text!r} matches the errors channel {spec.errors!r}: give "
            "errors= another channel"
        )


def body_of(msg: Message, fmt: str) -> tuple[bytes, str]:
    """A message's data as a bus message body, and its content type: JSON; with
    format=text, a text message's data as UTF-8 text."""
    if fmt == "text" and isinstance(msg.data, str):
        return msg.data.encode(), "text/plain; charset=utf-8"
    return msgspec.json.encode(msg.data), "application/json"


def _holder() -> str:
    """This node's name as a lease holder: its host, process and a random part (a process
    restarted with the same pid is another holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class ForwardStats:
    """The outbound side's counters, as the admin view and the metrics show them."""

    state: str = "starting"
    forwarded: int = 0
    missed: int = 0
    leases: int = 0
    refused: int = 0
    last_error: str | None = None
    last_error_at: float | None = None

    def failed(self, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.last_error = text[:500]
        self.last_error_at = time.time()


class Forwarder(abc.ABC):
    """A bridge's outbound side: takes the bridge's lease and, while it holds it, forwards
    every matching channel's messages to the bus through the kind's `connect`, `send` and
    `disconnect`.

    Args:
        bridge: the bridge it belongs to (its spec, channel service and counters).
        forward: what `forward=` names.
    """

    def __init__(self, bridge: Bridge, forward: ForwardSpec) -> None:
        self.bridge = bridge
        self.name = bridge.spec.name
        self.forward = forward
        self.channels = bridge.channels
        self.store = bridge.channels.store
        self.holder = _holder()
        self.stats = ForwardStats()
        self.backoff = Backoff()
        # An outbound-only bridge's state is its outbound side's.
        self.outbound_only = not bridge.spec.extra.get("inbound", True)
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._valid_until = 0.0
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._cursors: dict[str, str] = {}
        self._lag: dict[str, int] = {}
        # The channels whose next message the bus refused, and its error (this session).
        self._stalled: dict[str, str] = {}
        self._failure: asyncio.Future[None] | None = None
        self._full_noted = False

    # -- the kind's part ----------------------------------------------------------------

    @abc.abstractmethod
    async def connect(self) -> asyncio.Event:
        """Connect to the bus; an event set when the connection is lost."""

    @abc.abstractmethod
    async def send(self, msg: Message) -> None:
        """Publish one message; return once the bus confirmed it (raise otherwise:
        MessageRefused when the bus refused this message and the connection is still
        good, any other exception when the session is over)."""

    async def prepare(self, channel: str) -> None:  # noqa: B027 (a hook, most kinds need none)
        """Before a batch of `channel` is sent: MessageRefused when the bus cannot take
        the channel's messages (what a kind can tell beforehand; nothing by default)."""

    def check(self, msg: Message) -> None:  # noqa: B027 (a hook, most kinds need none)
        """Before `msg` is sent: MessageRefused when the bus cannot take it (what a kind
        can tell without asking it; nothing by default). The messages after it in its
        batch are then not sent."""

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Close the bus connection (not waiting long for a bus that is gone)."""

    @abc.abstractmethod
    def target(self) -> str:
        """Where messages go, for the admin view."""

    # -- life cycle ---------------------------------------------------------------------

    def _set_state(self, state: str) -> None:
        self.stats.state = state
        if self.outbound_only:
            self.bridge.stats.state = {
                "standby": BridgeState.STANDBY,
                "connecting": BridgeState.CONNECTING,
                "forwarding": BridgeState.RUNNING,
                "backoff": BridgeState.BACKOFF,
                "stopped": BridgeState.STOPPED,
            }.get(state, BridgeState.STARTING)

    def _failed(self, error: BaseException | str) -> None:
        """Note a failure (on the bridge too when it only forwards: its own view)."""
        self.stats.failed(error)
        if self.outbound_only:
            self.bridge.stats.failed(error)

    def start(self) -> None:
        """Start taking the lease and forwarding (in the background)."""
        self._task = asyncio.get_running_loop().create_task(
            self.run(), name=f"tidings-forward-{self.name}"
        )

    async def stop(self) -> None:
        """Stop forwarding and let go of the lease; what was not confirmed is forwarded
        again by the next holder."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._set_state("stopped")

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def run(self) -> None:
        """Take the lease when free; forward while holding it; on a failure let it go,
        wait (backoff) and try again, until stopped."""
        ttl = self.forward.lease
        while not self._stopping.is_set():
            began = time.monotonic()
            try:
                held = await asyncio.wait_for(
                    self.store.forwards.hold_lease(self.name, self.holder, ttl), ttl / 3
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
                log.warning("bridge %s: cannot take its forward lease: %s", self.name, exc)
                self._set_state("backoff")
                await self._pause(self.backoff.next())
                continue
            if not held:
                self._set_state("standby")
                await self._pause(ttl / 3)
                continue
            self.stats.leases += 1
            self._valid_until = began + ttl * LEASE_MARGIN
            failed = False
            try:
                await self._forward_all()
            except asyncio.CancelledError:
                raise
            except LeaseLost as exc:
                log.info("bridge %s: stops forwarding: %s", self.name, exc)
            except Exception as exc:
                failed = True
                self._failed(exc)
                log.warning(
                    "bridge %s (%s): forwarding failed: %s; reconnecting",
                    self.name,
                    self.bridge.spec.shown_url,
                    exc,
                )
            finally:
                self._valid_until = 0.0
                # Another node may take over at once (a bus this one cannot reach).
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        self.store.forwards.release_lease(self.name, self.holder),
                        RELEASE_TIMEOUT,
                    )
            if failed and not self._stopping.is_set():
                if self.outbound_only:
                    self.bridge.stats.reconnects += 1
                self._set_state("backoff")
                await self._pause(self.backoff.next())

    async def _forward_all(self) -> None:
        """Holding the lease: connect, then run the scan and a worker per channel until
        one of them fails, the lease is lost or the connection is; the lease keeper runs
        from the start (a slow connect must not outlast the lease)."""
        self._set_state("connecting")
        self._failure = asyncio.get_running_loop().create_future()
        tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._keep_lease())]
        try:
            lost = await self.connect()
            if tasks[0].done():
                tasks[0].result()  # raises LeaseLost if the lease ran out while connecting
            cursors = await self.store.forwards.get_cursors(self.name)
            stale = [c for c in cursors if not self.forward.matches(c)]
            if stale:
                await self.store.forwards.drop_cursors(self.name, stale)
            self._cursors = {c: i for c, i in cursors.items() if self.forward.matches(c)}
            self._set_state("forwarding")
            if self.outbound_only:
                self.bridge.stats.connected_since = time.time()
            self.backoff.reset()
            for channel in sorted(self.forward.names | self._cursors.keys()):
                self._spawn(channel)
            tasks.append(asyncio.ensure_future(lost.wait()))
            if self.forward.prefixes:
                tasks.append(asyncio.ensure_future(self._scan()))
            await asyncio.wait([*tasks, self._failure], return_when=asyncio.FIRST_COMPLETED)
            if self._failure.done():
                self._failure.result()  # a worker's failure is the session's
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            raise ConnectionError("the connection to the bus was lost")
        finally:
            if self.outbound_only:
                self.bridge.stats.connected_since = None
            workers = list(self._workers.values())
            for task in [*tasks, *workers]:
                task.cancel()
            await asyncio.gather(*tasks, *workers, return_exceptions=True)
            self._workers.clear()
            self._lag.clear()
            self._stalled.clear()
            if not self._failure.done():
                self._failure.cancel()
            with contextlib.suppress(Exception):
                await self.disconnect()

    async def _keep_lease(self) -> None:
        """Renew the lease every third of its time; LeaseLost when another node holds it,
        or when renewals failed until it may have expired."""
        ttl = self.forward.lease
        while True:
            await asyncio.sleep(ttl / 3)
            began = time.monotonic()
            try:
                held = await asyncio.wait_for(
                    self.store.forwards.hold_lease(self.name, self.holder, ttl), ttl / 3
                )
            except Exception as exc:
                self._failed(exc)
                if time.monotonic() >= self._valid_until:
                    raise LeaseLost(f"the lease could not be renewed: {exc}") from None
                continue
            if not held:
                raise LeaseLost("another node holds the lease")
            self._valid_until = began + ttl * LEASE_MARGIN

    async def _scan(self) -> None:
        """Find the channels the prefix patterns match: one page per pattern each
        SCAN_INTERVAL seconds, starting over at the end of the list."""
        after = dict.fromkeys(self.forward.prefixes, "")
        while True:
            for prefix in self.forward.prefixes:
                page = await self.store.channels.list_channels(prefix, SCAN_PAGE, after[prefix])
                for info in page:
                    if self.forward.matches(info.name):
                        self._spawn(info.name)
                after[prefix] = page[-1].name if len(page) == SCAN_PAGE else ""
            await asyncio.sleep(SCAN_INTERVAL)

    def _spawn(self, channel: str) -> None:
        """Start the worker of `channel` unless it runs or the bridge forwards its most."""
        if channel in self._workers:
            return
        if len(self._workers) >= MAX_FORWARD_CHANNELS:
            if not self._full_noted:
                self._full_noted = True
                self._failed(
                    f"more than {MAX_FORWARD_CHANNELS} channels match forward=: the others "
                    "are not forwarded"
                )
                log.error("bridge %s: %s", self.name, self.stats.last_error)
            return
        task = asyncio.ensure_future(self._worker(channel))
        self._workers[channel] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._workers.get(channel) is t:
                del self._workers[channel]
                self._lag.pop(channel, None)
                self._stalled.pop(channel, None)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None and self._failure is not None and not self._failure.done():
                self._failure.set_exception(exc)

        task.add_done_callback(done)

    # -- one channel --------------------------------------------------------------------

    async def _worker(self, channel: str) -> None:
        """Forward `channel` from its cursor, in order, until cancelled (or the channel
        is deleted, for a channel found by a prefix: the scan finds it again if it comes
        back)."""
        key = self.store.channels.cursor_key
        cursor = self._cursors.get(channel, "0")
        refusals = Backoff(REFUSED_FIRST, REFUSED_CAP)
        while True:
            res = await self.channels.wait(channel, cursor, self.forward.batch, POLL_WAIT)
            if res.reset:
                if res.first_id is None and res.last_id is None:
                    # A deleted channel: its cursor would name ids of no message, so it goes.
                    await self.store.forwards.drop_cursors(self.name, [channel])
                    self._cursors.pop(channel, None)
                    if channel not in self.forward.names:
                        return
                    cursor = "0"
                    continue
                missed = 0
                if res.first_id is not None and key(res.first_id) > key(cursor):
                    missed = key(res.first_id) - key(cursor) - 1
                self.stats.missed += missed
                log.warning(
                    "bridge %s: channel %s lost %d messages to retention before they were "
                    "forwarded; forwarding from its oldest retained message",
                    self.name,
                    channel,
                    missed,
                )
                cursor = "0"
                continue
            if not res.messages:
                if self.channels.hub.closing:
                    await asyncio.sleep(IDLE_WAIT)
                continue
            moved, refused = await self._send_batch(channel, res.messages)
            cursor = moved or cursor
            if res.last_id is not None:
                self._lag[channel] = max(0, key(res.last_id) - key(cursor))
            if refused is not None:
                # The channel waits and tries the refused message again: nothing after it
                # goes first, nothing is skipped.
                self.stats.refused += 1
                self._stalled[channel] = f"{refused}"[:200]
                self._failed(f"channel {channel}: {type(refused).__name__}: {refused}")
                log.warning(
                    "bridge %s: the bus refused a message of channel %s: %s; retrying it",
                    self.name,
                    channel,
                    refused,
                )
                await asyncio.sleep(refusals.next())
                continue
            if self._stalled.pop(channel, None) is not None:
                log.info("bridge %s: channel %s is forwarded again", self.name, channel)
            refusals.reset()

    async def _send_batch(
        self, channel: str, msgs: list[Message]
    ) -> tuple[str | None, MessageRefused | None]:
        """Publish `msgs`, then move the cursor to the last; after a failure, to the last
        of the unbroken run of confirmed ones from the first (what follows is published
        again). The new cursor (None: not moved), and the refusal that stopped the batch
        if one did (any other failure is raised: the session's).

        The sends are started in order and run at once: each queues its message on the
        bus connection before the next starts (the drivers write in call order), and the
        confirmations are awaited together, so a batch costs one round trip, not one per
        message."""
        self._check_lease()
        # What is refused before it is sent ends the batch there: the messages before it
        # go, none after it.
        ready: list[Message] = []
        early: MessageRefused | None = None
        try:
            await self.prepare(channel)
            for msg in msgs:
                self.check(msg)
                ready.append(msg)
        except MessageRefused as exc:
            early = exc
        sends = [asyncio.ensure_future(self.send(msg)) for msg in ready]
        last: str | None = None
        refused: MessageRefused | None = None
        try:
            for msg, sent in zip(ready, sends, strict=True):
                try:
                    await sent
                except MessageRefused as exc:
                    refused = exc
                    break
                last = msg.id
                self.stats.forwarded += 1
        except BaseException:
            for sent in sends:
                sent.cancel()
            await asyncio.gather(*sends, return_exceptions=True)
            if last is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._move(channel, last), RELEASE_TIMEOUT)
            raise
        refused = refused or early
        if refused is not None:
            # The sends after the refused one are not awaited (the bus may have taken
            # some: they come again after it, as after any failure).
            for sent in sends:
                sent.cancel()
            await asyncio.gather(*sends, return_exceptions=True)
            if last is not None:
                await self._move(channel, last)
            return last, refused
        last = msgs[-1].id
        await self._move(channel, last)
        return last, None

    def _check_lease(self) -> None:
        """LeaseLost once the lease may have expired without a renewal."""
        if time.monotonic() >= self._valid_until:
            raise LeaseLost("the lease may have expired (no renewal in time)")

    async def _move(self, channel: str, message_id: str) -> None:
        if not await self.store.forwards.set_cursor(self.name, self.holder, channel, message_id):
            raise LeaseLost("another node holds the lease (a cursor write was refused)")
        self._cursors[channel] = message_id

    # -- views ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The outbound side as `GET /v1/admin/bridges` shows it (`forward`)."""
        from tidings.protocol.codecs import format_time

        s = self.stats
        return {
            "patterns": self.forward.text,
            "target": self.target(),
            "state": s.state,
            "holder": self._valid_until > 0,
            "channels": len(self._workers),
            "forwarded": s.forwarded,
            "missed": s.missed,
            "lag": sum(self._lag.values()),
            "leases": s.leases,
            "refused": s.refused,
            "stalled_channels": len(self._stalled),
            "stalled": dict(sorted(self._stalled.items())[:STALLED_SHOWN]),
            "last_error": s.last_error,
            "last_error_at": None if s.last_error_at is None else format_time(s.last_error_at),
        }
