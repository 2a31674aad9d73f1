"""What every bridge shares: its parsed URL, its counters, its reconnect loop and the
one publish path through which a bus message becomes a channel message.

A bridge runs `session()` (connect, consume until the connection fails) inside `run()`,
which reconnects with capped exponential backoff and jitter. A bus message goes
through `Bridge.deliver`: rendered into a channel and an event, decoded and bounded, then
published through the channel service with the bus message's id as the idempotency key,
so that a redelivery of a message tidings already committed is not published again. Only
after `deliver` returns does the bridge acknowledge the message to its bus.

`deliver` tells the bridge what to do with the bus message: `Outcome.PUBLISHED` or
`Outcome.DUPLICATE` (acknowledge it), `Outcome.DEAD` (malformed or oversized: hand it to
the dead-letter destination, then acknowledge it). Any other failure (the store is down)
raises, and the session ends without acknowledging: the bus redelivers once the bridge
has reconnected.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import hashlib
import logging
import random
import re
import string
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from tidings.protocol.errors import TidingsError
from tidings.server.channels import ChannelService, check_channel, check_event
from tidings.server.depth import decode_limited

if TYPE_CHECKING:
    from tidings.server.bridges.outbound import Forwarder

__all__ = [
    "DEAD_LETTER_CHANNEL",
    "Backoff",
    "Bridge",
    "BridgeConfigError",
    "BridgeSpec",
    "BridgeState",
    "BridgeStats",
    "Outcome",
    "Template",
]

log = logging.getLogger("tidings.bridges")

# Where malformed bus messages are recorded when the bus has no dead-letter destination.
DEAD_LETTER_CHANNEL = "bridge.errors"
# Backoff between reconnects: the first wait, its cap, in seconds.
BACKOFF_FIRST = 0.2
BACKOFF_CAP = 30.0
# A dead-letter record quotes at most this much of the message it refuses.
DEAD_QUOTE = 1024
# Bridge names: what metrics, the admin view and idempotency keys call a bridge.
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Query parameters every bridge kind understands.
COMMON_PARAMS = frozenset(
    {"name", "channel", "event", "format", "max_bytes", "errors", "max_depth"}
)


class BridgeConfigError(ValueError):
    """A bridge URL that cannot work: says which parameter to fix and how."""


class BridgeState(enum.StrEnum):
    """Where a bridge is in its life."""

    STARTING = "starting"
    CONNECTING = "connecting"
    RUNNING = "running"
    # An outbound-only bridge whose lease another node holds (it forwards, this waits).
    STANDBY = "standby"
    BACKOFF = "backoff"
    STOPPED = "stopped"


class Outcome(enum.Enum):
    """What became of one bus message."""

    PUBLISHED = "published"
    DUPLICATE = "duplicate"
    DEAD = "dead"


class Template:
    """A channel or event template: text with `{field}` placeholders from a fixed set.

    Args:
        text: the template, e.g. `orders.{routing_key}`.
        allowed: the placeholders this bridge kind offers.
        what: the parameter's name, for error messages.
    """

    def __init__(self, text: str, allowed: frozenset[str], what: str) -> None:
        self.text = text
        self.fields: list[str] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise BridgeConfigError(
                f"{what}={text!r}: {exc}; write placeholders as {{name}}"
            ) from None
        for _, name, spec, conversion in parsed:
            if name is None:
                continue
            if name not in allowed or spec or conversion:
                raise BridgeConfigError(
                    f"{what}={text!r}: unknown placeholder {{{name}}}; this bridge offers "
                    + ", ".join(f"{{{a}}}" for a in sorted(allowed))
                )
            self.fields.append(name)

    def render(self, values: dict[str, str]) -> str:
        """The template with each placeholder replaced by its value."""
        if not self.fields:
            return self.text
        return self.text.format_map(values)


@dataclass(frozen=True, slots=True)
class BridgeSpec:
    """One bridge as its URL declares it.

    Args:
        kind: `amqp`, `nats` or `postgres`.
        name: what the bridge is called (`?name=`; default from its queue or table).
        url: the URL as given (secrets included: never shown; see `shown_url`).
        connect_url: the URL the driver connects to (tidings' parameters removed).
        params: tidings' query parameters.
        channel: the channel template.
        event: the event template (None: no event name).
        format: `json` (the body is a JSON value) or `text` (UTF-8 text).
        max_bytes: the largest bus message body accepted; larger is dead-lettered.
        max_depth: deepest nesting accepted in a JSON body.
        errors: the channel dead-letter records go to.
        shown_url: the URL without its secrets, for logs and the admin view.
        extra: the kind's own parameters, checked (its module's `parse`).
    """

    kind: str
    name: str
    url: str
    connect_url: str
    params: dict[str, str]
    channel: Template
    event: Template | None
    format: str
    max_bytes: int
    max_depth: int
    errors: str
    shown_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def split_url(url: str, own: frozenset[str]) -> tuple[str, dict[str, str]]:
    """`url` without the query parameters named in `own`, and those parameters.

    A parameter given twice is refused: a mapping has one channel and one event.
    """
    parts = urlsplit(url)
    kept: list[tuple[str, str]] = []
    params: dict[str, str] = {}
    # A + is a plus (an MQTT wildcard), never a space: no bridge parameter holds spaces.
    query = parts.query.replace("+", "%2B")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in own:
            if key in params:
                raise BridgeConfigError(f"{key}= is given twice: give it once")
            params[key] = value
        else:
            kept.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(kept))), params


def shown(url: str) -> str:
    """A bridge URL fit for a log line or the admin view: without its password."""
    from tidings.server.http.admin import redacted_url

    return redacted_url(url)


def int_param(params: dict[str, str], key: str, default: int, low: int, high: int) -> int:
    """`params[key]` as an integer within [low, high], or `default` when absent."""
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BridgeConfigError(f"{key}={raw!r} is not an integer ({low}-{high})") from None
    if not low <= value <= high:
        raise BridgeConfigError(f"{key}={value} is out of range: use {low}-{high}")
    return value


def float_param(params: dict[str, str], key: str, default: float, low: float, high: float) -> float:
    """`params[key]` as a number of seconds within [low, high], or `default`."""
    raw = params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise BridgeConfigError(f"{key}={raw!r} is not a number ({low}-{high})") from None
    if not low <= value <= high:  # also refuses NaN
        raise BridgeConfigError(f"{key}={value} is out of range: use {low}-{high}")
    return value


def common_spec(
    kind: str,
    url: str,
    connect_url: str,
    params: dict[str, str],
    fields: frozenset[str],
    default_name: str,
    default_channel: str | None,
    max_bytes: int,
    max_depth: int,
    inbound: bool = True,
) -> BridgeSpec:
    """The parameters every kind shares, checked: name, channel, event, format, bounds.
    `inbound=False`: the bridge only forwards (tidings.server.bridges.outbound), and
    takes no channel or event template."""
    name = params.get("name") or default_name
    if not _NAME.match(name):
        raise BridgeConfigError(
            f"name={name!r}: use 1-64 characters of A-Z a-z 0-9 . _ : - (name the bridge "
            "with ?name=)"
        )
    if not inbound:
        for key in ("channel", "event", "errors", "max_bytes", "max_depth"):
            if key in params:
                raise BridgeConfigError(
                    f"{key}= is for consuming from the bus, and this bridge only forwards "
                    "(forward= without a source to consume): remove it"
                )
    channel_text = params.get("channel") or default_channel
    if not inbound:
        channel_text = ""
    elif not channel_text:
        raise BridgeConfigError(
            "channel= is missing: the channel template, text with placeholders among "
            + ", ".join(f"{{{f}}}" for f in sorted(fields))
        )
    channel = Template(channel_text, fields, "channel")
    if inbound and not channel.fields:
        check_bridge_channel(channel_text, "channel")
    event_text = params.get("event")
    event = Template(event_text, fields, "event") if event_text else None
    if event is not None and not event.fields:
        try:
            check_event(event_text)
        except TidingsError as exc:
            raise BridgeConfigError(f"event={event_text!r}: {exc.message}") from None
    fmt = params.get("format") or "json"
    if fmt not in ("json", "text"):
        raise BridgeConfigError(f"format={fmt!r}: use json (a JSON body) or text (UTF-8 text)")
    errors = params.get("errors") or DEAD_LETTER_CHANNEL
    check_bridge_channel(errors, "errors")
    return BridgeSpec(
        kind=kind,
        name=name,
        url=url,
        connect_url=connect_url,
        params=params,
        channel=channel,
        event=event,
        format=fmt,
        max_bytes=int_param(params, "max_bytes", max_bytes, 1, max_bytes),
        max_depth=int_param(params, "max_depth", max_depth, 1, max_depth),
        errors=errors,
        shown_url=shown(url),
    )


def check_bridge_channel(name: str, what: str) -> None:
    """BridgeConfigError unless `name` is a channel a bridge may publish to."""
    try:
        check_channel(name)
    except TidingsError as exc:
        raise BridgeConfigError(f"{what}={name!r}: {exc.message}") from None
    if name.startswith("job."):
        raise BridgeConfigError(f"{what}={name!r}: channels job.* belong to the job system")


class Backoff:
    """Capped exponential backoff with jitter: before the n-th retry, wait a random time
    between half and all of min(cap, first * 2**n) (never nothing: a broker that refuses
    at once is not hammered); `reset` after a success."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> None:
        self.first = first
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        """The wait before the next attempt (it grows with each call)."""
        ceiling = min(self.cap, self.first * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        # Jitter: nodes that lost the same broker at once do not return at once.
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (not cryptography)

    def reset(self) -> None:
        """A connection succeeded: the next failure waits the shortest time again."""
        self.attempt = 0


@dataclass(slots=True)
class BridgeStats:
    """A bridge's counters, as the admin view and the metrics show them."""

    state: BridgeState = BridgeState.STARTING
    acknowledged: int = 0
    published: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    reconnects: int = 0
    lag: int | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    connected_since: float | None = None

    def failed(self, error: BaseException | str) -> None:
        """Note a failure: its message and when."""
        text = error if isinstance(error, str) else (f"{type(error).__name__}: {error}")
        self.last_error = text[:500]
        self.last_error_at = time.time()


class Dead(Exception):
    """A bus message no channel can take: why, and what of it to quote."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Bridge(abc.ABC):
    """One bridge: a loop that keeps a session with its bus open and feeds the channels.

    Args:
        spec: what its URL says.
        channels: the channel service it publishes through.
    """

    kind: ClassVar[str]

    def __init__(self, spec: BridgeSpec, channels: ChannelService) -> None:
        self.spec = spec
        self.channels = channels
        self.stats = BridgeStats()
        self.backoff = Backoff()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The outbound side (forward=), set by the kind's constructor.
        self.forwarder: Forwarder | None = None

    @property
    def stopping(self) -> bool:
        """True once `stop` was called."""
        return self._stopping.is_set()

    def start(self) -> None:
        """Start the bridge's loop (it connects in the background), and its outbound
        side if it has one."""
        if self.spec.extra.get("inbound", True):
            self._task = asyncio.get_running_loop().create_task(
                self.run(), name=f"tidings-bridge-{self.spec.name}"
            )
        if self.forwarder is not None:
            self.forwarder.start()

    async def stop(self) -> None:
        """Stop consuming and close the bus connection; unacknowledged messages stay on
        the bus for the next consumer."""
        self._stopping.set()
        if self.forwarder is not None:
            await self.forwarder.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.stats.state = BridgeState.STOPPED

    async def run(self) -> None:
        """Keep a session open: on failure wait (backoff) and reconnect, until stopped."""
        while not self.stopping:
            self.stats.state = BridgeState.CONNECTING
            try:
                await self.session()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.stats.failed(exc)
                log.warning(
                    "bridge %s (%s): %s; reconnecting", self.spec.name, self.spec.shown_url, exc
                )
            finally:
                self.stats.connected_since = None
            if self._stopping.is_set():  # (a method: stop() may have run meanwhile)
                break
            self.stats.state = BridgeState.BACKOFF
            self.stats.reconnects += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.backoff.next())

    def connected(self) -> None:
        """The session is up: consuming."""
        self.stats.state = BridgeState.RUNNING
        self.stats.connected_since = time.time()
        self.backoff.reset()

    @abc.abstractmethod
    async def session(self) -> None:
        """Connect, consume until the connection fails (raise) or the bridge stops."""

    def decode(self, body: bytes | str) -> Any:
        """A bus message's body as the message's data; Dead when it is too large or does
        not decode as the bridge's format says."""
        size = len(body)
        if size > self.spec.max_bytes:
            raise Dead(f"the body is {size} bytes, over max_bytes={self.spec.max_bytes}")
        if self.spec.format == "text":
            if isinstance(body, str):
                return body
            try:
                return body.decode()
            except UnicodeDecodeError:
                raise Dead("the body is not UTF-8 text (format=text)") from None
        try:
            return decode_limited(msgspec.json.decode, body, self.spec.max_depth, "body")
        except msgspec.DecodeError as exc:
            raise Dead(f"the body is not JSON (format=json): {exc}") from None
        except TidingsError as exc:
            raise Dead(exc.message) from None

    def route(self, values: dict[str, str]) -> tuple[str, str | None]:
        """The channel and event of a message whose fields are `values`; Dead when they
        are not legal names."""
        channel = self.spec.channel.render(values)
        event = None if self.spec.event is None else self.spec.event.render(values) or None
        try:
            check_channel(channel)
            check_event(event)
        except TidingsError as exc:
            raise Dead(exc.message) from None
        if channel.startswith("job."):
            raise Dead(f"{channel!r}: channels job.* belong to the job system")
        return channel, event

    @staticmethod
    def key_for(name: str, bus_id: str) -> str:
        """The idempotency key of bus message `bus_id` on bridge `name`: stable across
        redeliveries and restarts, within 200 characters whatever the bus id."""
        digest = hashlib.blake2b(bus_id.encode(), digest_size=16).hexdigest()
        return f"bridge:{name}:{digest}"

    def key(self, bus_id: str) -> str:
        """This bridge's idempotency key of bus message `bus_id` (`key_for`)."""
        return self.key_for(self.spec.name, bus_id)

    async def deliver(
        self, values: dict[str, str], body: bytes | str, bus_id: str | None
    ) -> tuple[Outcome, str]:
        """Publish one bus message (committed when this returns), and say what became of
        it: with Outcome.DEAD, why the message was refused (the caller dead-letters it)."""
        try:
            channel, event = self.route(values)
            data = self.decode(body)
            key = None if bus_id is None else self.key(bus_id)
            _, duplicate = await self.channels.publish_keyed(channel, data, event, key)
        except Dead as dead:
            return Outcome.DEAD, dead.reason
        except TidingsError as exc:
            if exc.status >= 500:
                raise
            return Outcome.DEAD, exc.message
        if duplicate:
            self.stats.duplicates += 1
            return Outcome.DUPLICATE, ""
        self.stats.published += 1
        return Outcome.PUBLISHED, ""

    async def record_dead(
        self, values: dict[str, str], body: bytes | str, bus_id: str | None, reason: str
    ) -> None:
        """Publish a record of a refused bus message on the errors channel (idempotent on
        its bus id), counted as dead-lettered."""
        quote = body[:DEAD_QUOTE]
        text = quote.decode(errors="replace") if isinstance(quote, bytes) else quote
        record = {
            "bridge": self.spec.name,
            "reason": reason,
            "fields": values,
            "bus_id": bus_id,
            "size": len(body),
            "body": text,
        }
        key = None if bus_id is None else self.key(f"dead:{bus_id}")
        await self.channels.publish_keyed(self.spec.errors, record, "bridge.error", key)
        self.dead_lettered(reason)

    def dead_lettered(self, reason: str) -> None:
        """Count one message dead-lettered, and log why."""
        self.stats.dead_lettered += 1
        self.stats.failed(f"dead-lettered a message: {reason}")
        log.warning("bridge %s: dead-lettered a message: %s", self.spec.name, reason)

    def snapshot(self) -> dict[str, Any]:
        """The bridge as `GET /v1/admin/bridges` shows it."""
        from tidings.protocol.codecs import format_time

        s = self.stats
        return {
            "name": self.spec.name,
            "kind": self.kind,
            "url": self.spec.shown_url,
            "channel": self.spec.channel.text,
            "event": None if self.spec.event is None else self.spec.event.text,
            "state": str(s.state),
            "acknowledged": s.acknowledged,
            "published": s.published,
            "duplicates": s.duplicates,
            "dead_lettered": s.dead_lettered,
            "reconnects": s.reconnects,
            "lag": s.lag,
            "last_error": s.last_error,
            "last_error_at": None if s.last_error_at is None else format_time(s.last_error_at),
            "connected_since": (
                None if s.connected_since is None else format_time(s.connected_since)
            ),
            "forward": None if self.forwarder is None else self.forwarder.snapshot(),
        }
