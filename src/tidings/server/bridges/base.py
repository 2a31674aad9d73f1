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

A bridge declared with `job=TYPE` (instead of `channel=`) submits each bus message as a
job of that type instead, the decoded body its payload, through the job service with the
same idempotency key: a redelivery finds the job it made (`Outcome.DUPLICATE`) rather
than making a second. A kind that can carry a reply address (AMQP `reply_to`, a NATS
`Tidings-Reply-To` header) waits for such a message's job to end (`ended`), publishes its
outcome there (`reply_of`), and only then acknowledges the message; those waits run as
tasks of the session (`Awaiting`), at most `max_replies` at once.
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
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec

from tidings.protocol.codecs import encode_json
from tidings.protocol.errors import TidingsError
from tidings.server.channels import ChannelService, check_channel, check_event
from tidings.server.depth import decode_limited

if TYPE_CHECKING:
    from tidings.protocol.jobs import Job
    from tidings.server.bridges.outbound import Forwarder
    from tidings.server.jobs import JobService

__all__ = [
    "DEAD_LETTER_CHANNEL",
    "Awaiting",
    "Backoff",
    "Bridge",
    "BridgeConfigError",
    "BridgeSpec",
    "BridgeState",
    "BridgeStats",
    "Delivery",
    "JobTarget",
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
# Seconds a job bridge waits on a job before looking again (and keeping a request alive),
# and the least it waits between two looks.
REPLY_POLL = 30.0
KEEPALIVE_MIN = 0.05
# Bridge names: what metrics, the admin view and idempotency keys call a bridge.
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
# Query parameters every bridge kind understands.
COMMON_PARAMS = frozenset(
    {"name", "channel", "event", "format", "max_bytes", "errors", "max_depth"}
    | {"job", "max_attempts", "priority", "job_timeout", "max_replies"}
)
# The parameters only a job bridge (`job=TYPE`) takes.
JOB_PARAMS = ("max_attempts", "priority", "job_timeout", "max_replies")
# Replies one job bridge awaits at once, by default and at most.
DEFAULT_MAX_REPLIES = 1000
MAX_REPLIES = 100_000
# The longest a job's time limit (`job_timeout=`) may be, in seconds (as a submit's).
MAX_JOB_TIMEOUT = 24 * 3600.0


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
    SUBMITTED = "submitted"
    DUPLICATE = "duplicate"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What `Bridge.deliver` made of one bus message: its outcome, why it was refused
    (Outcome.DEAD), and the job a job bridge submitted or found (its redelivery)."""

    outcome: Outcome
    reason: str = ""
    job: Job | None = None


@dataclass(frozen=True, slots=True)
class JobTarget:
    """What a job bridge submits: jobs of `type` with these fields; `max_replies`: the
    replies it awaits at once (more wait for a free place before being consumed)."""

    type: str
    max_attempts: int
    priority: int
    timeout: float | None
    max_replies: int


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
        kind: `amqp`, `nats`, `mqtt` or `postgres`.
        name: what the bridge is called (`?name=`; default from its queue or table).
        url: the URL as given (secrets included: never shown; see `shown_url`).
        connect_url: the URL the driver connects to (tidings' parameters removed).
        params: tidings' query parameters.
        channel: the channel template (None: a job bridge).
        event: the event template (None: no event name).
        format: `json` (the body is a JSON value) or `text` (UTF-8 text).
        max_bytes: the largest bus message body accepted; larger is dead-lettered.
        max_depth: deepest nesting accepted in a JSON body.
        errors: the channel dead-letter records go to.
        shown_url: the URL without its secrets, for logs and the admin view.
        extra: the kind's own parameters, checked (its module's `parse`).
        job: what a job bridge (`job=TYPE`) submits; None: a channel bridge.
    """

    kind: str
    name: str
    url: str
    connect_url: str
    params: dict[str, str]
    channel: Template | None
    event: Template | None
    format: str
    max_bytes: int
    max_depth: int
    errors: str
    shown_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    job: JobTarget | None = None


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
    """The parameters every kind shares, checked: name, channel and event (or job),
    format, bounds. `inbound=False`: the bridge only forwards
    (tidings.server.bridges.outbound), and takes no channel, event or job."""
    name = params.get("name") or default_name
    if not _NAME.match(name):
        raise BridgeConfigError(
            f"name={name!r}: use 1-64 characters of A-Z a-z 0-9 . _ : - (name the bridge "
            "with ?name=)"
        )
    if not inbound:
        for key in ("channel", "event", "errors", "max_bytes", "max_depth", "job", *JOB_PARAMS):
            if key in params:
                raise BridgeConfigError(
                    f"{key}= is for consuming from the bus, and this bridge only forwards "
                    "(forward= without a source to consume): remove it"
                )
    channel: Template | None = None
    event: Template | None = None
    job: JobTarget | None = None
    if not inbound:
        pass  # nothing consumed: no channel, event or job
    elif "job" in params:
        job = job_target(params, max_depth)
    else:
        given = [p for p in JOB_PARAMS if p in params]
        if given:
            raise BridgeConfigError(
                f"{given[0]}= is a job bridge's: give job=TYPE too (the type of the jobs "
                "each bus message becomes), or drop it"
            )
        channel_text = params.get("channel") or default_channel
        if not channel_text:
            raise BridgeConfigError(
                "channel= is missing: the channel template, text with placeholders among "
                + ", ".join(f"{{{f}}}" for f in sorted(fields))
                + " (or job=TYPE: each message becomes a job of that type)"
            )
        channel = Template(channel_text, fields, "channel")
        if not channel.fields:
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
        job=job,
    )


def job_target(params: dict[str, str], max_depth: int) -> JobTarget:
    """A job bridge's `job=` and its job parameters, checked; channel= and event= are
    refused with it (a bridge either publishes or submits)."""
    from tidings.server.jobs import MAX_ATTEMPTS_LIMIT, check_job_fields

    type_ = params["job"]
    both = [p for p in ("channel", "event") if p in params]
    if both:
        raise BridgeConfigError(
            f"job= and {both[0]}= exclude each other: a bridge either submits jobs (job=TYPE) "
            f"or publishes to channels ({both[0]}=); drop one, or declare two bridges"
        )
    try:
        check_job_fields(type_, None, max_depth=max_depth)
    except TidingsError:
        raise BridgeConfigError(
            f"job={type_!r}: a job type is 1-200 characters of A-Z a-z 0-9 . _ : -"
        ) from None
    timeout = float_param(params, "job_timeout", 0.0, 0.001, MAX_JOB_TIMEOUT)
    return JobTarget(
        type=type_,
        max_attempts=int_param(params, "max_attempts", 3, 1, MAX_ATTEMPTS_LIMIT),
        priority=int_param(params, "priority", 0, -(2**31), 2**31 - 1),
        timeout=timeout or None,
        max_replies=int_param(params, "max_replies", DEFAULT_MAX_REPLIES, 1, MAX_REPLIES),
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
    submitted: int = 0
    replied: int = 0
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


class Awaiting:
    """The replies one session awaits, each a task: at most `limit` at once (`start`
    waits for a free place). The first that fails ends the session (`failed` raises its
    error): its message stays unacknowledged, and the bus delivers it again."""

    def __init__(self, limit: int) -> None:
        self._slots = asyncio.Semaphore(limit)
        self.tasks: set[asyncio.Task[None]] = set()
        self._failed = asyncio.Event()
        self._error: BaseException | None = None

    async def start(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task once fewer than `limit` are running."""
        try:
            await self._slots.acquire()
        except BaseException:
            work.close()
            raise
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()
            self._failed.set()

    async def failed(self) -> None:
        """Raise the first task's failure, once there is one."""
        await self._failed.wait()
        if self._error is not None:
            raise self._error

    async def close(self) -> None:
        """Cancel the tasks still waiting (their messages stay unacknowledged)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Bridge(abc.ABC):
    """One bridge: a loop that keeps a session with its bus open and feeds the channels
    (or, declared with `job=TYPE`, the job queue).

    Args:
        spec: what its URL says.
        channels: the channel service it publishes through.
        jobs: the job service a job bridge submits through (required when `spec.job`).
    """

    kind: ClassVar[str]

    def __init__(
        self, spec: BridgeSpec, channels: ChannelService, jobs: JobService | None = None
    ) -> None:
        if spec.job is not None and jobs is None:
            raise BridgeConfigError(
                f"bridge {spec.name}: job={spec.job.type} needs the server's job service"
            )
        self.spec = spec
        self.channels = channels
        self.jobs = jobs
        self.stats = BridgeStats()
        self.backoff = Backoff()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The replies the current session awaits (a job bridge's; None between sessions).
        self.awaiting: Awaiting | None = None
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
        # Both sides at once: the inbound side stops consuming while the forwarder
        # finishes its batch and releases its lease, and one side failing to stop does
        # not leave the other running.
        sides: list[Any] = []
        if self.forwarder is not None:
            sides.append(self.forwarder.stop())
        if self._task is not None:
            self._task.cancel()
            sides.append(self._task)
        results = await asyncio.gather(*sides, return_exceptions=True)
        self.stats.state = BridgeState.STOPPED
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, asyncio.CancelledError):
                log.warning("bridge %s: stopping: %s", self.spec.name, result)

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
        if self.spec.channel is None:
            raise RuntimeError(f"bridge {self.spec.name} submits jobs: it routes nothing")
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
    ) -> Delivery:
        """Publish one bus message, or submit it as a job (a job bridge); committed when
        this returns. Says what became of it: with Outcome.DEAD, why the message was
        refused (the caller dead-letters it)."""
        if self.spec.job is not None:
            return await self._submit(self.spec.job, body, bus_id)
        try:
            channel, event = self.route(values)
            data = self.decode(body)
            key = None if bus_id is None else self.key(bus_id)
            _, duplicate = await self.channels.publish_keyed(channel, data, event, key)
        except Dead as dead:
            return Delivery(Outcome.DEAD, dead.reason)
        except TidingsError as exc:
            if exc.status >= 500:
                raise
            return Delivery(Outcome.DEAD, exc.message)
        if duplicate:
            self.stats.duplicates += 1
            return Delivery(Outcome.DUPLICATE)
        self.stats.published += 1
        return Delivery(Outcome.PUBLISHED)

    async def _submit(self, target: JobTarget, body: bytes | str, bus_id: str | None) -> Delivery:
        """Submit one bus message as a job of `target.type`, its body the payload, keyed
        by its bus id: a redelivery answers the job the first delivery made."""
        if self.jobs is None:
            raise RuntimeError(f"bridge {self.spec.name} has no job service")
        try:
            payload = self.decode(body)
            job, created = await self.jobs.submit(
                target.type,
                payload,
                max_attempts=target.max_attempts,
                timeout=target.timeout,
                priority=target.priority,
                idempotency_key=None if bus_id is None else self.key(bus_id),
            )
        except Dead as dead:
            return Delivery(Outcome.DEAD, dead.reason)
        except TidingsError as exc:
            if exc.status >= 500:
                raise
            return Delivery(Outcome.DEAD, exc.message)
        if not created:
            self.stats.duplicates += 1
            return Delivery(Outcome.DUPLICATE, job=job)
        self.stats.submitted += 1
        return Delivery(Outcome.SUBMITTED, job=job)

    async def ended(
        self,
        job: Job,
        every: float = REPLY_POLL,
        keepalive: Callable[[], Awaitable[None]] | None = None,
    ) -> Job:
        """`job` once it has ended (succeeded, failed for good, or cancelled), followed
        through the job service; `keepalive` is awaited every `every` seconds meanwhile
        (a bus that redelivers what is not acknowledged in time). Once the server
        closes, waits until the bridge stops (which cancels it)."""
        if self.jobs is None:
            raise RuntimeError(f"bridge {self.spec.name} has no job service")
        due = time.monotonic() + every
        while not job.terminal:
            # The wait answers early on each change of the job (its progress, too).
            job = await self.jobs.wait(job, max(KEEPALIVE_MIN, due - time.monotonic()))
            if job.terminal:
                break
            if self.jobs.hub.closing:
                # Shutting down: the wait answers at once from now on. The bridge is
                # stopped next, which cancels this (the message stays unacknowledged).
                await asyncio.get_running_loop().create_future()
            if time.monotonic() >= due:
                if keepalive is not None:
                    await keepalive()
                due = time.monotonic() + every
        return job

    @staticmethod
    def reply_of(job: Job) -> tuple[bytes, dict[str, str]]:
        """The reply to a request whose job ended: its body (JSON: the result when the
        job succeeded, else its error, without traceback) and its headers (the job's id
        and status)."""
        if job.status == "succeeded":
            value: Any = job.result
        elif isinstance(job.error, dict):
            value = {k: v for k, v in job.error.items() if k != "traceback"}
        else:
            value = {"type": job.status, "message": job.message or f"the job was {job.status}"}
        return encode_json(value), {"tidings-job-id": job.id, "tidings-job-status": job.status}

    def replied(self) -> None:
        """Count a reply sent and its request acknowledged."""
        self.stats.replied += 1
        self.stats.acknowledged += 1

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
            "channel": None if self.spec.channel is None else self.spec.channel.text,
            "event": None if self.spec.event is None else self.spec.event.text,
            "job": None if self.spec.job is None else self.spec.job.type,
            "state": str(s.state),
            "acknowledged": s.acknowledged,
            "published": s.published,
            "submitted": s.submitted,
            "replied": s.replied,
            "awaiting": 0 if self.awaiting is None else len(self.awaiting.tasks),
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
