"""The Python SDK: `Client` (blocking) and `AsyncClient` (asyncio) for channels.

Both classes share everything but the I/O: requests are built and answers parsed by the
module-level helpers, and one `_Subscription` object holds a subscriber's cursor, parses
its frames and decides when and how soon to reconnect. The two classes differ only where
they call the network.

Answers are decoded into the wire Structs of `tidings.protocol` and turned into the SDK's
models (`Message`, `PublishAck`, `Reset`, `Page`, `ChannelInfo`, `JobInfo`). The errors
raised are those of `tidings.sdk.common`: `ClientError`, `TidingsHTTPError`,
`TidingsConnectionError`.

`subscribe` iterators never raise `TidingsConnectionError` nor 5xx/408/429 errors: they
reconnect and resume from the last message they yielded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar
from urllib.parse import quote

import httpx
import msgspec
import websockets.asyncio.client
import websockets.sync.client
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse, connect_sse
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from tidings.protocol.codecs import JSON_DECODER, encode_json, parse_optional_time, parse_time
from tidings.protocol.jobs import (
    JOB_TIME_FIELDS,
    TERMINAL_STATUSES,
    BatchAnswerWire,
    JobListWire,
    JobStatus,
    JobWire,
)
from tidings.protocol.messages import (
    Message,
    MessageWire,
    PageWire,
    PublishAck,
    PublishAckWire,
    Reset,
    ResetWire,
)
from tidings.protocol.schedules import ScheduleListWire, ScheduleWire
from tidings.sdk.common import (
    ClientError,
    TidingsConnectionError,
    TidingsHTTPError,
    auth_headers,
    channel_path,
    check,
    check_url,
    decode,
    error_from,
    job_path,
    json_object,
    schedule_path,
)

__all__ = [
    "AsyncClient",
    "AsyncJobHandle",
    "ChannelInfo",
    "ChannelRetention",
    "Client",
    "ClientError",
    "JobHandle",
    "JobInfo",
    "JobTimeout",
    "Page",
    "ScheduleInfo",
    "TidingsConnectionError",
    "TidingsHTTPError",
    "Via",
]

Via = Literal["sse", "ws", "longpoll", "poll"]
_VIAS: tuple[str, ...] = ("sse", "ws", "longpoll", "poll")

DEFAULT_URL = "http://127.0.0.1:8000"
# Seconds a long-polling subscriber asks the server to hold each request (the server
# caps waits at 30 s by default; staying below keeps clear of proxy read timeouts).
LONG_POLL_WAIT = 25.0
# Added to `wait` for the HTTP read timeout of a long poll, so the server answers first.
LONG_POLL_MARGIN = 10.0
# Reconnect delays double on consecutive failures up to this many seconds (or up to
# `reconnect_delay` if that is larger), so a restarting server is not hammered.
MAX_RECONNECT_DELAY = 5.0
# Largest WebSocket frame accepted: a 1 MiB message can grow when escaped in JSON.
WS_MAX_FRAME = 16 * 1024 * 1024


class Page(msgspec.Struct, frozen=True):
    """One answer of `read`: messages after the cursor, the next cursor, and whether
    history between the cursor and the first message was lost (`reset`)."""

    messages: list[Message]
    next: str
    reset: bool


class _StreamClosedError(Exception):
    """The server ended a stream on purpose (a `close` frame): reconnect and resume."""


# ---------------------------------------------------------------------------------------
# Request building and answer parsing, shared by both clients.


_PAGE = msgspec.json.Decoder(PageWire)
_ACK = msgspec.json.Decoder(PublishAckWire)
_JOB = msgspec.json.Decoder(JobWire)
_MESSAGE = msgspec.json.Decoder(MessageWire)
_JOBS = msgspec.json.Decoder(JobListWire)
_BATCH = msgspec.json.Decoder(BatchAnswerWire)


def _publish_request(
    channel: str, data: Any, event: str | None, idempotency_key: str | None
) -> dict[str, Any]:
    # Always JSON, even for text: a str stays a str (a text/plain body would too, but
    # JSON keeps one code path for every type).
    body: dict[str, Any] = {"data": data}
    if event is not None:
        body["event"] = event
    headers = {"Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    return {
        "method": "POST",
        "url": channel_path(channel, "/messages"),
        "content": encode_json(body),
        "headers": headers,
    }


def _read_request(
    channel: str, after: str, limit: int | None, wait: float | None, timeout: float
) -> dict[str, Any]:
    params: dict[str, str | int | float] = {"after": after}
    if limit is not None:
        params["limit"] = limit
    if wait is not None:
        params["wait"] = wait
        timeout = max(timeout, wait + LONG_POLL_MARGIN)
    return {
        "method": "GET",
        "url": channel_path(channel, "/messages"),
        "params": params,
        "timeout": timeout,
    }


def _info_request(channel: str) -> dict[str, Any]:
    return {"method": "GET", "url": channel_path(channel)}


def _parse_ack(response: httpx.Response) -> PublishAck:
    return PublishAck.from_wire(decode(response, _ACK))


def _parse_page(response: httpx.Response) -> Page:
    wire = decode(response, _PAGE)
    return Page([Message.from_wire(m) for m in wire.messages], wire.next, wire.reset)


def _parse_last_id(response: httpx.Response) -> str:
    """The cursor at the channel's current end; a channel never published to starts at 0."""
    if response.status_code == 404:
        return "0"
    last = json_object(response).get("last_id")
    return "0" if last is None else str(last)


class ChannelRetention(msgspec.Struct, frozen=True):
    """How much history a channel keeps: at most `max_messages`, none older than `max_age`
    seconds; `custom` is True when these are the channel's own, not the server's default."""

    max_messages: int
    max_age: float
    custom: bool = False


class ChannelInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A channel as the server describes it: its first and last kept ids (None when it
    keeps nothing), how many messages it keeps, when it was created (seconds since the
    epoch), its retention, and its live subscribers by transport."""

    name: str
    first_id: str | None = None
    last_id: str | None = None
    messages: int = 0
    created: float | None = None
    retention: ChannelRetention | None = None
    subscribers: dict[str, int] = msgspec.field(default_factory=dict)


class _ChannelWire(msgspec.Struct, frozen=True, kw_only=True):
    """`ChannelInfo` as served: `created` is RFC 3339."""

    name: str
    created: str
    first_id: str | None = None
    last_id: str | None = None
    messages: int = 0
    retention: ChannelRetention | None = None
    subscribers: dict[str, int] = msgspec.field(default_factory=dict)


class _ChannelListWire(msgspec.Struct, frozen=True):
    channels: list[_ChannelWire]
    next: str | None = None


_CHANNEL = msgspec.json.Decoder(_ChannelWire)
_CHANNELS = msgspec.json.Decoder(_ChannelListWire)


def _channel_info(wire: _ChannelWire) -> ChannelInfo:
    created = wire.created
    try:
        when = parse_time(created)
    except ValueError as exc:
        raise ClientError(f"malformed channel object from the server: {exc}") from exc
    return ChannelInfo(
        name=wire.name,
        first_id=wire.first_id,
        last_id=wire.last_id,
        messages=wire.messages,
        created=when,
        retention=wire.retention,
        subscribers=wire.subscribers,
    )


def _retention_request(
    channel: str, max_messages: int | None, max_age: float | None
) -> dict[str, Any]:
    if (max_messages is None) != (max_age is None):
        raise ValueError("give both max_messages and max_age, or neither (the default)")
    retention = None if max_messages is None else {"max_messages": max_messages, "max_age": max_age}
    return {
        "method": "PUT",
        "url": channel_path(channel),
        "content": encode_json({"retention": retention}),
        "headers": {"Content-Type": "application/json"},
    }


def _parse_channel(response: httpx.Response) -> ChannelInfo:
    return _channel_info(decode(response, _CHANNEL))


def _parse_deleted(response: httpx.Response) -> None:
    check(response)


def _reset_from(obj: Any, channel: str) -> Reset:
    """The reset a control frame's body stands for; one of another shape still resets."""
    try:
        return Reset.from_wire(msgspec.convert(obj, ResetWire))
    except msgspec.ValidationError:
        return Reset(channel=channel, first=None)


class _Subscription:
    """The I/O-free half of a subscribe iterator: cursor, frame parsing, reconnect policy."""

    def __init__(
        self,
        channel: str,
        via: str,
        after: str | None,
        poll_interval: float,
        reconnect_delay: float,
    ) -> None:
        if via not in _VIAS:
            raise ValueError(f"via must be one of {', '.join(_VIAS)}; got {via!r}")
        self.channel = channel
        self.via = via
        # The id of the last message yielded; None until the channel's end is looked up.
        self.cursor = after
        self.poll_interval = poll_interval
        self.reconnect_delay = reconnect_delay
        self.failures = 0
        self._sse_last_id = ""

    # Connecting -------------------------------------------------------------------------

    def connected(self) -> None:
        """A connection was accepted: the backoff starts over."""
        self.failures = 0
        self._sse_last_id = ""

    def sse_request(self) -> dict[str, Any]:
        # format=json: each event carries the whole message, so its data keeps its type
        # (the string "1" and the number 1 differ) and it has its time.
        headers = {"Last-Event-ID": self.cursor} if self.cursor is not None else {}
        return {
            "method": "GET",
            "url": channel_path(self.channel, "/events"),
            "params": {"format": "json"},
            "headers": headers,
        }

    def ws_url(self, base_url: str) -> str:
        base = httpx.URL(base_url)
        scheme = "wss" if base.scheme == "https" else "ws"
        path = base.path.rstrip("/") + channel_path(self.channel, "/ws")
        params = {"after": self.cursor} if self.cursor is not None else {}
        return str(base.copy_with(scheme=scheme, path=path, params=params))

    def read_args(self) -> dict[str, Any]:
        wait = LONG_POLL_WAIT if self.via == "longpoll" else None
        return {"after": self.cursor or "0", "wait": wait}

    # Frames -----------------------------------------------------------------------------

    def _accept(self, message: Message) -> Message | None:
        if message.id == self.cursor:
            return None  # the cursor's own message, replayed: already yielded
        self.cursor = message.id
        return message

    def sse_item(self, sse: ServerSentEvent) -> Message | Reset | None:
        """The item an SSE event stands for, or None for frames that carry none.

        Control events (`reset`, `close`) have no `id:` line. The SSE decoder carries the
        previous id over to id-less events, so "no id" means "same id as the last event".
        """
        fresh_id = sse.id not in ("", self._sse_last_id)
        if not fresh_id:
            if sse.event == "reset":
                return _reset_from(_decode_or_none(sse.data), self.channel)
            if sse.event == "close":
                raise _StreamClosedError(sse.data)
            return None  # e.g. a `retry:`-only frame
        self._sse_last_id = sse.id
        try:
            message = Message.from_wire(_MESSAGE.decode(sse.data))
        except (msgspec.DecodeError, ValueError) as exc:
            raise ClientError(f"malformed message event from the server: {exc}") from exc
        return self._accept(message)

    def ws_item(self, frame: str | bytes) -> Message | Reset | None:
        """The item a WebSocket frame stands for, or None for acks and errors."""
        try:
            obj = JSON_DECODER.decode(frame)
        except msgspec.DecodeError as exc:
            raise ClientError(f"malformed WebSocket frame from the server: {exc}") from exc
        if not isinstance(obj, dict):
            return None
        kind = obj.get("type")
        if kind is None and "id" in obj:
            try:
                message = Message.from_wire(msgspec.convert(obj, MessageWire))
            except (msgspec.ValidationError, ValueError) as exc:
                raise ClientError(f"malformed message frame from the server: {exc}") from exc
            return self._accept(message)
        if kind == "reset":
            return _reset_from(obj, self.channel)
        if kind == "close":
            raise _StreamClosedError(str(obj.get("reason", "")))
        return None  # ack, error (of a publish through the socket), or a newer frame type

    def ws_closed(self, code: int | None, reason: str) -> None:
        """Raise when the server closed the socket for a reason a retry cannot fix."""
        if code == 1008:
            status = 403
        elif code is not None and 4400 <= code < 4500 and code not in (4408, 4429):
            status = code - 4000
        else:
            return
        raise TidingsHTTPError(status, f"ws_close_{code}", reason or "closed by the server")

    def page_items(self, page: Page) -> list[Message | Reset]:
        items: list[Message | Reset] = []
        if page.reset:
            first = page.messages[0].id if page.messages else None
            items.append(Reset(channel=self.channel, first=first))
        for message in page.messages:
            accepted = self._accept(message)
            if accepted is not None:
                items.append(accepted)
        if page.next:
            self.cursor = page.next
        return items

    def pause_after(self, page: Page, elapsed: float) -> float:
        """Seconds to wait before the next poll."""
        if page.messages:
            return 0.0
        if self.via == "poll":
            return self.poll_interval
        # A long poll that came back empty at once (server ignoring `wait`, or a proxy
        # cutting it): do not spin.
        return self.poll_interval if elapsed < 1.0 else 0.0

    # Failures ---------------------------------------------------------------------------

    def retry_delay(self, exc: Exception) -> float:
        """Seconds to wait before reconnecting after `exc`; re-raises what a retry can't fix."""
        if isinstance(exc, InvalidStatus):
            response = exc.response
            exc = error_from(
                response.status_code,
                bytes(response.body or b""),
                response.headers.get("Retry-After"),
            )
        if isinstance(exc, TidingsHTTPError):
            if not exc.retryable:
                raise exc
        elif isinstance(exc, _StreamClosedError):
            self.failures = 0
        elif not isinstance(exc, _TRANSIENT):
            raise exc
        ceiling = max(self.reconnect_delay, MAX_RECONNECT_DELAY)
        delay = min(self.reconnect_delay * 2.0 ** min(self.failures, 16), ceiling)
        self.failures += 1
        if isinstance(exc, TidingsHTTPError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, 60.0))
        return delay


_TRANSIENT: tuple[type[Exception], ...] = (
    httpx.TransportError,
    TidingsConnectionError,
    ConnectionClosed,
    InvalidHandshake,
    OSError,  # includes TimeoutError and refused connections
    _StreamClosedError,
)


def _decode_or_none(text: str) -> Any:
    try:
        return JSON_DECODER.decode(text)
    except msgspec.DecodeError:
        return None


def _close_info(exc: ConnectionClosed) -> tuple[int | None, str]:
    """The close code and reason the server sent, if it sent a close frame."""
    return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (None, "")


# ---------------------------------------------------------------------------------------
# Jobs: requests and answers, shared by both clients.


class JobTimeout(ClientError, TimeoutError):
    """`wait(timeout=...)` ran out before the job ended; the job itself goes on."""


class JobInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A job as the server describes it (`JobWire`), with times as seconds since the epoch
    (or None).

    `payload` is None in job events (they carry the job without its payload);
    `JobHandle.events()` fills it in from the handle's last known job. `error` is the last
    failed attempt's error (`{"type", "message", "traceback"?, "attempt"?}` from the SDK's
    worker; the traceback only in the job's own answer, and only for a principal who may
    work its type or an admin), `errors` the last few attempts' errors without their
    tracebacks, oldest first (empty in job events and listings).
    """

    id: str
    type: str
    status: JobStatus
    payload: Any = None
    progress: float | None = None
    message: str | None = None
    result: Any = None
    error: Any = None
    errors: list[Any] = msgspec.field(default_factory=list)
    attempt: int = 0
    max_attempts: int = 0
    priority: int = 0
    timeout: float | None = None
    cancel_requested: bool = False
    submitted_by: str | None = None
    worker: str | None = None
    unique_key: str | None = None
    group: str | None = None
    after: list[str] = msgspec.field(default_factory=list)
    created_at: float | None = None
    updated_at: float | None = None
    run_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    lease_expires_at: float | None = None
    links: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """True once the job has ended: succeeded, failed or cancelled."""
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_wire(cls, wire: JobWire) -> JobInfo:
        """The job a decoded `JobWire` stands for (RFC 3339 times become epoch seconds);
        raises ValueError on a time that is not RFC 3339."""
        # Only the fields a JobInfo has: a submit answer's `served` and `deduplicated` go
        # to the handle.
        fields = {
            name: value
            for name, value in msgspec.structs.asdict(wire).items()
            if name in cls.__struct_fields__ and value is not msgspec.UNSET
        }
        for name in JOB_TIME_FIELDS:
            fields[name] = parse_optional_time(fields[name])
        fields["links"] = msgspec.to_builtins(wire.links)
        return cls(**fields)


def _submit_request(
    type: str,
    payload: Any,
    *,
    max_attempts: int | None,
    timeout: float | None,
    delay: float | None,
    priority: int | None,
    idempotency_key: str | None,
    unique_key: str | None,
    group: str | None,
    wait: float | None,
    http_timeout: float,
    after: list[str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"type": type, "payload": payload}
    for name, value in (
        ("max_attempts", max_attempts),
        ("timeout", timeout),
        ("delay", delay),
        ("priority", priority),
        ("unique_key", unique_key),
        ("group", group),
        ("after", after),
    ):
        if value is not None:
            body[name] = value
    headers = {"Content-Type": "application/json"}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    params: dict[str, float] = {}
    if wait is not None:
        params["wait"] = wait
        http_timeout = max(http_timeout, wait + LONG_POLL_MARGIN)
    return {
        "method": "POST",
        "url": "/v1/jobs",
        "content": encode_json(body),
        "headers": headers,
        "params": params,
        "timeout": http_timeout,
    }


def _batch_request(jobs: list[dict[str, Any]], http_timeout: float) -> dict[str, Any]:
    return {
        "method": "POST",
        "url": "/v1/jobs/batch",
        "content": encode_json({"jobs": jobs}),
        "headers": {"Content-Type": "application/json"},
        "timeout": http_timeout,
    }


def _parse_batch(response: httpx.Response) -> list[tuple[str, JobInfo]]:
    """A batch submit's answer: each job made with its ref, in the batch's order."""
    return [
        ("" if isinstance(wire.ref, msgspec.UnsetType) else wire.ref, _job_info(wire))
        for wire in decode(response, _BATCH).jobs
    ]


def _get_job_request(job_id: str, wait: float | None, http_timeout: float) -> dict[str, Any]:
    params: dict[str, float] = {}
    if wait is not None:
        params["wait"] = wait
        http_timeout = max(http_timeout, wait + LONG_POLL_MARGIN)
    return {"method": "GET", "url": job_path(job_id), "params": params, "timeout": http_timeout}


T = TypeVar("T")


class _Pages(Generic[T]):
    """Sans-I/O: the requests of a paged listing and what its pages add up to. A page may
    come back short, even empty, with a `next` (a non-admin's channel page skips what it
    may not read; a Redis job page filtered by status or type scans a bounded stretch), so
    pages are followed until `limit` items are in hand or `next` is null. Each asks for
    what is missing, at most `page_max` (the server's cap)."""

    def __init__(
        self,
        url: str,
        params: dict[str, str | int],
        cursor: str,
        limit: int,
        page_max: int,
        parse: Callable[[httpx.Response], tuple[list[T], str | None]],
    ) -> None:
        self.url, self.params, self.cursor, self.limit = url, params, cursor, limit
        self.page_max, self.parse = page_max, parse
        self.items: list[T] = []
        self.next: str | None = None

    def request(self) -> dict[str, Any]:
        params = {**self.params, "limit": min(self.limit - len(self.items), self.page_max)}
        if self.next is not None:
            params[self.cursor] = self.next
        return {"method": "GET", "url": self.url, "params": params}

    def add(self, response: httpx.Response) -> bool:
        """Take a page in; True when the list is whole."""
        items, self.next = self.parse(response)
        self.items += items
        return self.next is None or len(self.items) >= self.limit


def _channel_pages(prefix: str, limit: int | None) -> _Pages[ChannelInfo]:
    def parse(response: httpx.Response) -> tuple[list[ChannelInfo], str | None]:
        page = decode(response, _CHANNELS)
        return [_channel_info(c) for c in page.channels], page.next

    params: dict[str, str | int] = {"prefix": prefix} if prefix else {}
    return _Pages("/v1/channels", params, "after", 1000 if limit is None else limit, 10_000, parse)


def _job_pages(status: str | None, type: str | None, limit: int | None) -> _Pages[JobInfo]:
    def parse(response: httpx.Response) -> tuple[list[JobInfo], str | None]:
        page = decode(response, _JOBS)
        return [_job_info(j) for j in page.jobs], page.next

    params: dict[str, str | int] = {}
    if status is not None:
        params["status"] = status
    if type is not None:
        params["type"] = type
    return _Pages("/v1/jobs", params, "before", 100 if limit is None else limit, 1000, parse)


class ScheduleInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as the server describes it (`ScheduleWire`), with times as seconds since
    the epoch: what was put (exactly one of `cron`, read in `timezone`, and `every`
    seconds), the next slot to fire (`next_run_at`), the slot fired last (`last_run_at`)
    and its job (`last_job_id`: `sched:{name}:{slot}`), and the principal whose jobs its
    firings are (`owner`; None: anonymous)."""

    name: str
    type: str
    payload: Any = None
    cron: str | None = None
    every: int | None = None
    timezone: str | None = None
    max_attempts: int = 3
    timeout: float | None = None
    priority: int = 0
    catch_up: str = "latest"
    next_run_at: float
    last_run_at: float | None = None
    last_job_id: str | None = None
    created_at: float
    updated_at: float
    owner: str | None = None

    @classmethod
    def from_wire(cls, wire: ScheduleWire) -> ScheduleInfo:
        """The schedule a decoded `ScheduleWire` stands for; ValueError on a time that is
        not RFC 3339."""
        fields = {
            name: value
            for name, value in msgspec.structs.asdict(wire).items()
            if name in cls.__struct_fields__
        }
        for name in ("next_run_at", "created_at", "updated_at", "last_run_at"):
            fields[name] = parse_optional_time(fields[name])
        return cls(**fields)


_SCHEDULE = msgspec.json.Decoder(ScheduleWire)
_SCHEDULES = msgspec.json.Decoder(ScheduleListWire)


def _schedule_request(
    name: str,
    type: str,
    payload: Any,
    cron: str | None,
    every: int | None,
    timezone: str | None,
    max_attempts: int,
    timeout: float | None,
    priority: int,
    catch_up: str,
) -> dict[str, Any]:
    if (cron is None) == (every is None):
        raise ValueError("give exactly one of cron (five fields) or every (seconds)")
    body: dict[str, Any] = {
        "type": type,
        "payload": payload,
        "max_attempts": max_attempts,
        "priority": priority,
        "catch_up": catch_up,
    }
    for key, value in (("cron", cron), ("every", every), ("timezone", timezone)):
        if value is not None:
            body[key] = value
    if timeout is not None:
        body["timeout"] = timeout
    return {
        "method": "PUT",
        "url": schedule_path(name),
        "content": encode_json(body),
        "headers": {"Content-Type": "application/json"},
    }


def _schedule_info(wire: ScheduleWire) -> ScheduleInfo:
    try:
        return ScheduleInfo.from_wire(wire)
    except ValueError as exc:
        raise ClientError(f"malformed schedule object from the server: {exc}") from exc


def _parse_schedule(response: httpx.Response) -> ScheduleInfo:
    return _schedule_info(decode(response, _SCHEDULE))


def _schedule_pages(limit: int | None) -> _Pages[ScheduleInfo]:
    def parse(response: httpx.Response) -> tuple[list[ScheduleInfo], str | None]:
        page = decode(response, _SCHEDULES)
        return [_schedule_info(s) for s in page.schedules], page.next

    return _Pages("/v1/schedules", {}, "after", 1000 if limit is None else limit, 1000, parse)


def _job_action_request(job_id: str, action: str) -> dict[str, Any]:
    return {"method": "POST", "url": job_path(job_id, f"/{action}")}


def _parse_job(response: httpx.Response) -> JobInfo:
    return _job_info(decode(response, _JOB))


class _Served(msgspec.Struct, frozen=True):
    served: bool | None = None
    deduplicated: bool = False


_SERVED = msgspec.json.Decoder(_Served)


def _parse_submitted(response: httpx.Response) -> tuple[JobInfo, _Served]:
    """A submit answer: the job, whether a worker or handler has asked for its type
    lately (`served`; None when the answer does not say: the server queued the job but
    could not read whether its type is served) and whether the job is one that held the
    submit's unique key (`deduplicated`)."""
    job = _parse_job(response)
    try:
        said = _SERVED.decode(response.content)
    except (msgspec.DecodeError, msgspec.ValidationError):
        said = _Served()
    return job, said


def _job_info(wire: JobWire) -> JobInfo:
    try:
        return JobInfo.from_wire(wire)
    except ValueError as exc:
        raise ClientError(f"malformed job object from the server: {exc}") from exc


def _queue_request(
    type: str,
    limits: dict[str, Any] | None = None,
    *,
    lift: bool = False,
) -> dict[str, Any]:
    """GET /v1/queues/{type}; with `limits`, PUT them; with `lift`, DELETE them."""
    url = f"/v1/queues/{quote(type, safe='')}"
    if lift:
        return {"method": "DELETE", "url": url}
    if limits is None:
        return {"method": "GET", "url": url}
    return {"method": "PUT", "url": url, "json": limits}


def _limits_body(
    rate: int | None, per: float, concurrency: int | None, group_concurrency: int | None
) -> dict[str, Any]:
    return {
        "rate": None if rate is None else {"limit": rate, "per": per},
        "concurrency": concurrency,
        "group_concurrency": group_concurrency,
    }


def _parse_queues(response: httpx.Response) -> dict[str, dict[str, int]]:
    queues = json_object(response).get("queues")
    if not isinstance(queues, dict):
        raise ClientError('expected {"queues": {...}} from the server')
    return {
        str(t): {str(s): int(n) for s, n in counts.items()}
        for t, counts in queues.items()
        if isinstance(counts, dict)
    }


class _JobWait:
    """The I/O-free half of `wait()`: how long each long poll asks for, when to give up."""

    def __init__(self, timeout: float | None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.failures = 0

    def next_wait(self) -> float:
        """Seconds the next long poll asks the server to hold; JobTimeout when none are left."""
        if self.deadline is None:
            return LONG_POLL_WAIT
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise JobTimeout("the job did not end within the timeout")
        return min(LONG_POLL_WAIT, remaining)

    def retry_delay(self, exc: Exception) -> float:
        """Seconds before asking again after `exc`; re-raises what a retry cannot fix."""
        if isinstance(exc, TidingsHTTPError):
            if not exc.retryable:
                raise exc
        elif not isinstance(exc, _TRANSIENT):
            raise exc
        delay = min(0.25 * 2.0 ** min(self.failures, 16), MAX_RECONNECT_DELAY)
        self.failures += 1
        if self.deadline is not None:
            delay = min(delay, max(0.0, self.deadline - time.monotonic()))
        return delay


class _JobEvents:
    """The I/O-free half of `events()`: the SSE cursor, event parsing, reconnect policy."""

    def __init__(self, job_id: str, last: JobInfo | None) -> None:
        self.job_id = job_id
        self.last = last
        self.cursor: str | None = None
        self._done = False
        self.failures = 0
        self._sse_last_id = ""

    def connected(self) -> None:
        self.failures = 0
        self._sse_last_id = ""

    def sse_request(self) -> dict[str, Any]:
        headers = {"Last-Event-ID": self.cursor} if self.cursor is not None else {}
        return {"method": "GET", "url": job_path(self.job_id, "/events"), "headers": headers}

    def sse_item(self, sse: ServerSentEvent) -> tuple[str, JobInfo] | None:
        """(event, job) for a job event; None for control frames. Marks the terminal one."""
        if sse.id in ("", self._sse_last_id):
            if sse.event == "close":
                raise _StreamClosedError(sse.data)
            return None  # reset, retry-only frames: the job's state comes with every event
        self._sse_last_id = sse.id
        if sse.id == self.cursor:
            return None  # replayed: already yielded
        self.cursor = sse.id
        try:
            wire = _JOB.decode(sse.data)
            info = JobInfo.from_wire(wire)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            return None
        if wire.payload is msgspec.UNSET and self.last is not None:
            info = msgspec.structs.replace(info, payload=self.last.payload)
        self.last = info
        if info.terminal or sse.event in TERMINAL_STATUSES:
            self._done = True
        return sse.event, info

    def done(self) -> bool:
        """True once the terminal event was seen: the stream has nothing more to say."""
        return self._done

    def retry_delay(self, exc: Exception) -> float:
        """Seconds before reconnecting after `exc`; re-raises what a retry cannot fix."""
        if isinstance(exc, TidingsHTTPError):
            if not exc.retryable:
                raise exc
        elif isinstance(exc, _StreamClosedError):
            self.failures = 0
        elif not isinstance(exc, _TRANSIENT):
            raise exc
        delay = min(0.25 * 2.0 ** min(self.failures, 16), MAX_RECONNECT_DELAY)
        self.failures += 1
        return delay


# ---------------------------------------------------------------------------------------
# The blocking client.


class Client:
    """A blocking client for a tidings server.

    Use it as a context manager, or call `close()` when done. One instance is safe to use
    from several threads (it wraps one `httpx.Client` connection pool).
    """

    def __init__(
        self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        """
        Args:
            url: Base URL of the server, e.g. `http://127.0.0.1:8000` (a path prefix is
                kept, for servers behind a proxy). WebSocket URLs are derived from it.
            token: API token or session token, sent as `Authorization: Bearer <token>` on
                every HTTP request and WebSocket handshake. None sends no credentials.
            timeout: Seconds to wait for connecting and for each read. Long polls add their
                `wait` on top; SSE streams reconnect on a read timeout (the server's
                heartbeats arrive well within the default).
        """
        check_url(url)
        self.url = url
        self.timeout = timeout
        self._token = token
        self._http = httpx.Client(base_url=url, headers=auth_headers(token), timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool. Subscribe iterators still open stop working."""
        self._http.close()

    def _request(self, spec: dict[str, Any]) -> httpx.Response:
        try:
            return self._http.request(**spec)
        except httpx.TransportError as exc:
            raise TidingsConnectionError(f"{self.url}: {exc!r}") from exc

    def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> PublishAck:
        """Publish one message and return once the server has made it durable.

        Args:
            channel: Channel name (1-200 chars of `[A-Za-z0-9._:-]`).
            data: A `str` or any JSON-serialisable value; its type is kept.
            event: Optional event name (the SSE `event:` field).
            idempotency_key: Optional key; publishing again with the same key returns the
                first message's id instead of publishing twice.

        Raises:
            TidingsHTTPError: the server refused the message (e.g. 413 when too large).
            TidingsConnectionError: the server could not be reached.
        """
        return _parse_ack(self._request(_publish_request(channel, data, event, idempotency_key)))

    def read(
        self,
        channel: str,
        *,
        after: str = "0",
        limit: int | None = None,
        wait: float | None = None,
    ) -> Page:
        """Read the messages after a cursor (short poll, or long poll with `wait`).

        Args:
            channel: Channel name.
            after: Cursor: the id of the last message already seen; "0" reads from the
                oldest message retained.
            limit: Most messages to return (the server's default and cap apply).
            wait: Seconds the server may hold the request until a message exists (long
                poll; capped by the server, 30 s by default). None answers at once.

        Raises:
            TidingsHTTPError: e.g. 400 for a malformed cursor.
            TidingsConnectionError: the server could not be reached.
        """
        return _parse_page(self._request(_read_request(channel, after, limit, wait, self.timeout)))

    def subscribe(
        self,
        channel: str,
        *,
        via: Via = "sse",
        after: str | None = None,
        poll_interval: float = 1.0,
        reconnect_delay: float = 0.5,
    ) -> Iterator[Message | Reset]:
        """Iterate over a channel's messages, in order, for as long as the caller wants.

        The iterator keeps the id of the last message it yielded and, when the connection
        drops or the server restarts, reconnects from it by itself: nothing is skipped and
        nothing is repeated. When the server says the requested history is gone it yields
        a `Reset` before the messages it still has. Close the iterator (or break out of
        the loop) to disconnect.

        Over SSE, message data is exact for JSON objects, arrays and text; other JSON
        values (numbers, booleans, null, JSON strings) arrive as their text, because SSE
        does not say which one was published; `time` is 0.0 (SSE does not carry it).
        WebSocket and polling keep exact types and times.

        Args:
            channel: Channel name.
            via: Transport: "sse", "ws" (WebSocket), "longpoll" or "poll".
            after: Start after this message id ("0": from the oldest retained). None: only
                messages published after the subscription starts (the channel's current
                end is looked up first, so an early reconnect loses nothing either).
            poll_interval: Seconds between requests for "poll" when nothing is new.
            reconnect_delay: Seconds before the first reconnect; consecutive failures
                double it up to max(reconnect_delay, 5 s).

        Raises:
            TidingsHTTPError: a 4xx answer other than 408/429 (bad channel, no permission).
                5xx, 408, 429 and transport errors are retried.
        """
        sub = _Subscription(channel, via, after, poll_interval, reconnect_delay)
        while True:
            try:
                if sub.cursor is None:
                    sub.cursor = _parse_last_id(self._request(_info_request(channel)))
                if via == "sse":
                    yield from self._sse(sub)
                elif via == "ws":
                    yield from self._ws(sub)
                else:
                    yield from self._poll(sub)
                delay = sub.reconnect_delay  # the server ended the stream
            except Exception as exc:
                delay = sub.retry_delay(exc)
            time.sleep(delay)

    def _sse(self, sub: _Subscription) -> Iterator[Message | Reset]:
        with connect_sse(self._http, **sub.sse_request()) as source:
            response = source.response
            if not response.is_success:
                response.read()
                check(response)
            sub.connected()
            try:
                for sse in source.iter_sse():
                    item = sub.sse_item(sse)
                    if item is not None:
                        yield item
            except SSEError as exc:
                raise ClientError(f"not an event stream: {exc}") from exc

    def _ws(self, sub: _Subscription) -> Iterator[Message | Reset]:
        with websockets.sync.client.connect(
            sub.ws_url(self.url),
            additional_headers=auth_headers(self._token),
            open_timeout=self.timeout,
            max_size=WS_MAX_FRAME,
        ) as ws:
            sub.connected()
            try:
                for frame in ws:
                    item = sub.ws_item(frame)
                    if item is not None:
                        yield item
            except ConnectionClosed as exc:
                sub.ws_closed(*_close_info(exc))
                raise
            sub.ws_closed(ws.close_code, ws.close_reason or "")

    def _poll(self, sub: _Subscription) -> Iterator[Message | Reset]:
        while True:
            started = time.monotonic()
            page = self.read(sub.channel, **sub.read_args())
            sub.connected()
            yield from sub.page_items(page)
            pause = sub.pause_after(page, time.monotonic() - started)
            if pause:
                time.sleep(pause)

    # Jobs -------------------------------------------------------------------------------

    def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        max_attempts: int | None = None,
        timeout: float | None = None,
        delay: float | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        unique_key: str | None = None,
        group: str | None = None,
        wait: float | None = None,
        after: list[str] | None = None,
    ) -> JobHandle:
        """Submit a job and return a handle to follow it.

        Args:
            type: Job type; a worker with a handler for it runs the job.
            payload: Any JSON value, given to the handler as `job.payload`.
            max_attempts: Attempts before the job ends `failed` (server default: 3).
            timeout: Seconds one attempt may run.
            delay: Seconds before the job may first run.
            priority: Higher runs first among ready jobs of a type.
            idempotency_key: Submitting again with the same key returns the same job.
            unique_key: While a waiting, queued or running job of this type holds this key, the
                submit returns that job (the handle's `deduplicated` is True) instead of
                queuing another.
            group: What the type's `group_concurrency` (PUT /v1/queues/{type}) counts the
                job by, e.g. a tenant: at most that many jobs of a group run at once.
            after: Parent job ids (at most 100): the job waits (status "waiting") until
                they all succeeded, and its handler sees their results (`job.parents`); a
                parent that fails or is cancelled ends it cancelled.
            wait: Seconds the server may hold the answer until the job ends; the handle's
                `job` is then already terminal (check `handle.job.terminal`).

        The handle's `served` is False when no worker (nor in-server handler) has asked
        for jobs of this type lately: the job waits until one does, which may mean a
        typo in `type` or no worker running; None when the server could not tell.

        Raises:
            TidingsHTTPError: the server refused the job (e.g. 422 for a bad field).
            TidingsConnectionError: the server could not be reached.
        """
        spec = _submit_request(
            type,
            payload,
            max_attempts=max_attempts,
            timeout=timeout,
            delay=delay,
            priority=priority,
            idempotency_key=idempotency_key,
            unique_key=unique_key,
            group=group,
            wait=wait,
            http_timeout=self.timeout,
            after=after,
        )
        job, said = _parse_submitted(self._request(spec))
        return JobHandle(self, job, served=said.served, deduplicated=said.deduplicated)

    def submit_batch(self, jobs: list[dict[str, Any]]) -> dict[str, JobHandle]:
        """Submit a graph of jobs at once: all are made, or none (a 422 or 409 raises
        `TidingsHTTPError`, saying what to fix). Each job is a dict of `submit`'s fields
        (`type`, `payload`, `after`, `unique_key`, ...) with a `ref`, its name in the batch;
        `after` names jobs of the batch by their ref, or existing jobs by id. At most
        1,000 jobs; no cycles.

        Returns a handle on each job made, by ref, in the batch's order::

            handles = client.submit_batch([
                {"ref": "a", "type": "fetch", "payload": 1},
                {"ref": "b", "type": "fetch", "payload": 2},
                {"ref": "sum", "type": "add", "after": ["a", "b"]},
            ])
            handles["sum"].wait()
        """
        made = _parse_batch(self._request(_batch_request(jobs, self.timeout)))
        return {ref: JobHandle(self, job) for ref, job in made}

    def job(self, job_id: str) -> JobHandle:
        """A handle on an existing job (fetched once: 404 raises `TidingsHTTPError`)."""
        return JobHandle(self, self.get_job(job_id))

    def get_job(self, job_id: str, *, wait: float | None = None) -> JobInfo:
        """The job now, or with `wait` once it ends or after `wait` seconds (long poll)."""
        return _parse_job(self._request(_get_job_request(job_id, wait, self.timeout)))

    def list_jobs(
        self, *, status: str | None = None, type: str | None = None, limit: int | None = None
    ) -> list[JobInfo]:
        """Jobs, newest first, optionally only those of a `status` and/or `type`: `limit`
        of them (default 100) or as many as there are; the server's pages are followed
        until then."""
        pages = _job_pages(status, type, limit)
        while not pages.add(self._request(pages.request())):
            pass
        return pages.items

    def cancel_job(self, job_id: str) -> JobInfo:
        """Cancel a job: a queued one at once, a running one at its next heartbeat.

        Raises `TidingsHTTPError` 409 if the job has already ended.
        """
        return _parse_job(self._request(_job_action_request(job_id, "cancel")))

    def retry_job(self, job_id: str) -> JobInfo:
        """Requeue a failed or cancelled job; 409 (`TidingsHTTPError`) for any other."""
        return _parse_job(self._request(_job_action_request(job_id, "retry")))

    def queues(self) -> dict[str, dict[str, int]]:
        """Job counts per type and status: `{type: {status: count}}`."""
        return _parse_queues(self._request({"method": "GET", "url": "/v1/queues"}))

    def queue(self, type: str) -> dict[str, Any]:
        """One job type's queue: `{"type", "counts": {status: count}, "limits"}`, its
        limits null when it has none, else with `waiting`: the jobs each holds back."""
        return json_object(self._request(_queue_request(type)))

    def set_queue_limits(
        self,
        type: str,
        *,
        rate: int | None = None,
        per: float = 1.0,
        concurrency: int | None = None,
        group_concurrency: int | None = None,
    ) -> dict[str, Any] | None:
        """Limit a job type (admins): at most `rate` leases per `per` seconds, `concurrency`
        running jobs at once, `group_concurrency` per group (each None: no such limit;
        all None lifts them). Returns the limits now (None: none).

        Raises:
            TidingsHTTPError: 422 for a bad value (a rate of 0, ...), 403 for a non-admin.
        """
        body = _limits_body(rate, per, concurrency, group_concurrency)
        limits = json_object(self._request(_queue_request(type, body))).get("limits")
        return limits if isinstance(limits, dict) else None

    def lift_queue_limits(self, type: str) -> None:
        """Lift every limit of a job type (admins)."""
        check(self._request(_queue_request(type, lift=True)))

    # Channels ---------------------------------------------------------------------------

    def list_channels(self, *, prefix: str = "", limit: int | None = None) -> list[ChannelInfo]:
        """The channels this principal may read (all of them, job channels included, for
        an admin), by name, optionally only those whose name starts with `prefix`.

        Args:
            prefix: Only channels whose name starts with it.
            limit: At most this many (default 1000); the server's pages are followed
                until then.

        Raises:
            TidingsHTTPError: e.g. 400 for a limit out of range.
        """
        pages = _channel_pages(prefix, limit)
        while not pages.add(self._request(pages.request())):
            pass
        return pages.items

    def channel_info(self, channel: str) -> ChannelInfo:
        """One channel: its ids, message count, creation time, retention and subscribers.

        Raises:
            TidingsHTTPError: 404 when the channel does not exist, 403 without subscribe
                permission on it.
        """
        return _parse_channel(self._request(_info_request(channel)))

    def set_retention(
        self, channel: str, *, max_messages: int | None = None, max_age: float | None = None
    ) -> ChannelInfo:
        """Give a channel its own retention (admin): keep at most `max_messages`, none
        older than `max_age` seconds. Give neither to return it to the server's default.

        Raises:
            ValueError: only one of the two was given.
            TidingsHTTPError: 403 for a non-admin, 422 for a value out of range.
        """
        return _parse_channel(self._request(_retention_request(channel, max_messages, max_age)))

    def delete_channel(self, channel: str) -> None:
        """Delete a channel (admin): its history goes, its open streams end.

        Raises:
            TidingsHTTPError: 404 when there is no such channel, 403 for a non-admin.
        """
        _parse_deleted(self._request({"method": "DELETE", "url": channel_path(channel)}))

    # Schedules --------------------------------------------------------------------------

    def put_schedule(
        self,
        name: str,
        type: str,
        payload: Any = None,
        *,
        cron: str | None = None,
        every: int | None = None,
        timezone: str | None = None,
        max_attempts: int = 3,
        timeout: float | None = None,
        priority: int = 0,
        catch_up: Literal["latest", "skip"] = "latest",
    ) -> ScheduleInfo:
        """Create or replace the schedule `name`: a job of `type` with `payload` at each
        slot. Each firing's job id is `sched:{name}:{slot as YYYYmmddTHHMMSSZ}`, and it is
        submitted once however many servers share the store.

        Args:
            name: 1-128 characters of A-Z a-z 0-9 . _ : -
            type: The job type each firing submits (needs the right to submit it).
            payload: Each job's payload (any JSON value).
            cron: Five fields (minute hour day-of-month month day-of-week), read in
                `timezone`; exactly one of `cron` and `every`.
            every: Whole seconds between firings, the first `every` from now.
            timezone: IANA name of the time zone `cron` is read in (default UTC).
            max_attempts, timeout, priority: Each job's, as in `submit`.
            catch_up: Slots at most the server's grace (10 s) late are all fired, in
                order; after downtime (older slots) "latest" fires the most recent slot
                once, "skip" none of the older ones.

        Raises:
            ValueError: both or neither of `cron` and `every`.
            TidingsHTTPError: 422 saying what to fix (a bad cron expression, an unknown
                time zone, ...), 403 without the right to submit `type` or to replace
                another's schedule, 409 past the server's number of schedules or the
                number one owner may have, or when another request created or changed
                the schedule meanwhile.
        """
        spec = _schedule_request(
            name, type, payload, cron, every, timezone, max_attempts, timeout, priority, catch_up
        )
        return _parse_schedule(self._request(spec))

    def get_schedule(self, name: str) -> ScheduleInfo:
        """One schedule, with its next slot and its last firing's job.

        Raises:
            TidingsHTTPError: 404 when there is no such schedule.
        """
        return _parse_schedule(self._request({"method": "GET", "url": schedule_path(name)}))

    def list_schedules(self, *, limit: int | None = None) -> list[ScheduleInfo]:
        """The schedules this principal may see, by name: at most `limit` (default 1000);
        the server's pages are followed until then."""
        pages = _schedule_pages(limit)
        while not pages.add(self._request(pages.request())):
            pass
        return pages.items

    def delete_schedule(self, name: str) -> None:
        """Remove a schedule (its owner or an admin); the jobs it submitted stay.

        Raises:
            TidingsHTTPError: 404 when there is no such schedule.
        """
        _parse_deleted(self._request({"method": "DELETE", "url": schedule_path(name)}))

    def _wait_job(self, job_id: str, limit: float | None) -> JobInfo:
        state = _JobWait(limit)
        while True:
            wait = state.next_wait()
            try:
                info = self.get_job(job_id, wait=wait)
            except Exception as exc:
                time.sleep(state.retry_delay(exc))
                continue
            state.failures = 0
            if info.terminal:
                return info

    def _job_events(self, follow: _JobEvents) -> Iterator[tuple[str, JobInfo]]:
        while not follow.done():
            try:
                with connect_sse(self._http, **follow.sse_request()) as source:
                    response = source.response
                    if not response.is_success:
                        response.read()
                        check(response)
                    if response.status_code == 204:
                        return  # the job has ended and nothing follows this cursor
                    follow.connected()
                    try:
                        for sse in source.iter_sse():
                            item = follow.sse_item(sse)
                            if item is not None:
                                yield item
                            if follow.done():
                                return
                    except SSEError as exc:
                        raise ClientError(f"not an event stream: {exc}") from exc
                delay = 0.0  # the server ended the stream before the terminal event
            except Exception as exc:
                delay = follow.retry_delay(exc)
            time.sleep(delay)


# ---------------------------------------------------------------------------------------
# The asyncio client: the same calls, awaited.


class AsyncClient:
    """An asyncio client for a tidings server; the `Client` API, awaited.

    Use it as an async context manager, or `await aclose()` when done.
    """

    def __init__(
        self, url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 30.0
    ) -> None:
        """
        Args:
            url: Base URL of the server, e.g. `http://127.0.0.1:8000` (a path prefix is
                kept, for servers behind a proxy). WebSocket URLs are derived from it.
            token: API token or session token, sent as `Authorization: Bearer <token>` on
                every HTTP request and WebSocket handshake. None sends no credentials.
            timeout: Seconds to wait for connecting and for each read. Long polls add their
                `wait` on top; SSE streams reconnect on a read timeout.
        """
        check_url(url)
        self.url = url
        self.timeout = timeout
        self._token = token
        self._http = httpx.AsyncClient(base_url=url, headers=auth_headers(token), timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Subscribe iterators still open stop working."""
        await self._http.aclose()

    close = aclose

    async def _request(self, spec: dict[str, Any]) -> httpx.Response:
        try:
            return await self._http.request(**spec)
        except httpx.TransportError as exc:
            raise TidingsConnectionError(f"{self.url}: {exc!r}") from exc

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> PublishAck:
        """Publish one message once it is durable; see `Client.publish` for the arguments."""
        spec = _publish_request(channel, data, event, idempotency_key)
        return _parse_ack(await self._request(spec))

    async def read(
        self,
        channel: str,
        *,
        after: str = "0",
        limit: int | None = None,
        wait: float | None = None,
    ) -> Page:
        """Read the messages after a cursor; see `Client.read` for the arguments."""
        spec = _read_request(channel, after, limit, wait, self.timeout)
        return _parse_page(await self._request(spec))

    async def subscribe(
        self,
        channel: str,
        *,
        via: Via = "sse",
        after: str | None = None,
        poll_interval: float = 1.0,
        reconnect_delay: float = 0.5,
    ) -> AsyncIterator[Message | Reset]:
        """Iterate over a channel's messages, in order; see `Client.subscribe`.

        Close it with `await it.aclose()` (or `contextlib.aclosing`) to disconnect at once
        rather than when the iterator is garbage-collected.

        Args:
            channel: Channel name.
            via: Transport: "sse", "ws" (WebSocket), "longpoll" or "poll".
            after: Start after this message id ("0": from the oldest retained). None: only
                messages published after the subscription starts.
            poll_interval: Seconds between requests for "poll" when nothing is new.
            reconnect_delay: Seconds before the first reconnect; consecutive failures
                double it up to max(reconnect_delay, 5 s).

        Raises:
            TidingsHTTPError: a 4xx answer other than 408/429. 5xx, 408, 429 and transport
                errors are retried.
        """
        sub = _Subscription(channel, via, after, poll_interval, reconnect_delay)
        while True:
            try:
                if sub.cursor is None:
                    sub.cursor = _parse_last_id(await self._request(_info_request(channel)))
                if via == "sse":
                    stream = self._sse(sub)
                elif via == "ws":
                    stream = self._ws(sub)
                else:
                    stream = self._poll(sub)
                # aclosing: when the caller stops, the connection closes now, not at GC.
                async with aclosing(stream):
                    async for item in stream:
                        yield item
                delay = sub.reconnect_delay  # the server ended the stream
            except Exception as exc:
                delay = sub.retry_delay(exc)
            await asyncio.sleep(delay)

    async def _sse(self, sub: _Subscription) -> AsyncGenerator[Message | Reset, None]:
        async with aconnect_sse(self._http, **sub.sse_request()) as source:
            response = source.response
            if not response.is_success:
                await response.aread()
                check(response)
            sub.connected()
            try:
                async for sse in source.aiter_sse():
                    item = sub.sse_item(sse)
                    if item is not None:
                        yield item
            except SSEError as exc:
                raise ClientError(f"not an event stream: {exc}") from exc

    async def _ws(self, sub: _Subscription) -> AsyncGenerator[Message | Reset, None]:
        async with websockets.asyncio.client.connect(
            sub.ws_url(self.url),
            additional_headers=auth_headers(self._token),
            open_timeout=self.timeout,
            max_size=WS_MAX_FRAME,
        ) as ws:
            sub.connected()
            try:
                async for frame in ws:
                    item = sub.ws_item(frame)
                    if item is not None:
                        yield item
            except ConnectionClosed as exc:
                sub.ws_closed(*_close_info(exc))
                raise
            sub.ws_closed(ws.close_code, ws.close_reason or "")

    async def _poll(self, sub: _Subscription) -> AsyncGenerator[Message | Reset, None]:
        while True:
            started = time.monotonic()
            page = await self.read(sub.channel, **sub.read_args())
            sub.connected()
            for item in sub.page_items(page):
                yield item
            pause = sub.pause_after(page, time.monotonic() - started)
            if pause:
                await asyncio.sleep(pause)

    # Jobs -------------------------------------------------------------------------------

    async def submit(
        self,
        type: str,
        payload: Any = None,
        *,
        max_attempts: int | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the job's timeout, not this call's
        delay: float | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        unique_key: str | None = None,
        group: str | None = None,
        wait: float | None = None,
        after: list[str] | None = None,
    ) -> AsyncJobHandle:
        """Submit a job and return a handle to follow it; see `Client.submit`."""
        spec = _submit_request(
            type,
            payload,
            max_attempts=max_attempts,
            timeout=timeout,
            delay=delay,
            priority=priority,
            idempotency_key=idempotency_key,
            unique_key=unique_key,
            group=group,
            wait=wait,
            http_timeout=self.timeout,
            after=after,
        )
        job, said = _parse_submitted(await self._request(spec))
        return AsyncJobHandle(self, job, served=said.served, deduplicated=said.deduplicated)

    async def submit_batch(self, jobs: list[dict[str, Any]]) -> dict[str, AsyncJobHandle]:
        """Submit a graph of jobs at once, all or none; see `Client.submit_batch`."""
        made = _parse_batch(await self._request(_batch_request(jobs, self.timeout)))
        return {ref: AsyncJobHandle(self, job) for ref, job in made}

    async def job(self, job_id: str) -> AsyncJobHandle:
        """A handle on an existing job (fetched once: 404 raises `TidingsHTTPError`)."""
        return AsyncJobHandle(self, await self.get_job(job_id))

    async def get_job(self, job_id: str, *, wait: float | None = None) -> JobInfo:
        """The job now, or with `wait` once it ends or after `wait` seconds (long poll)."""
        return _parse_job(await self._request(_get_job_request(job_id, wait, self.timeout)))

    async def list_jobs(
        self, *, status: str | None = None, type: str | None = None, limit: int | None = None
    ) -> list[JobInfo]:
        """Jobs, newest first; see `Client.list_jobs`."""
        pages = _job_pages(status, type, limit)
        while not pages.add(await self._request(pages.request())):
            pass
        return pages.items

    async def cancel_job(self, job_id: str) -> JobInfo:
        """Cancel a job; see `Client.cancel_job`."""
        return _parse_job(await self._request(_job_action_request(job_id, "cancel")))

    async def retry_job(self, job_id: str) -> JobInfo:
        """Requeue a failed or cancelled job; 409 (`TidingsHTTPError`) for any other."""
        return _parse_job(await self._request(_job_action_request(job_id, "retry")))

    async def queues(self) -> dict[str, dict[str, int]]:
        """Job counts per type and status: `{type: {status: count}}`."""
        return _parse_queues(await self._request({"method": "GET", "url": "/v1/queues"}))

    async def queue(self, type: str) -> dict[str, Any]:
        """One job type's queue; see `Client.queue`."""
        return json_object(await self._request(_queue_request(type)))

    async def set_queue_limits(
        self,
        type: str,
        *,
        rate: int | None = None,
        per: float = 1.0,
        concurrency: int | None = None,
        group_concurrency: int | None = None,
    ) -> dict[str, Any] | None:
        """Limit a job type (admins); see `Client.set_queue_limits`."""
        body = _limits_body(rate, per, concurrency, group_concurrency)
        limits = json_object(await self._request(_queue_request(type, body))).get("limits")
        return limits if isinstance(limits, dict) else None

    async def lift_queue_limits(self, type: str) -> None:
        """Lift every limit of a job type (admins)."""
        check(await self._request(_queue_request(type, lift=True)))

    # Channels ---------------------------------------------------------------------------

    async def list_channels(
        self, *, prefix: str = "", limit: int | None = None
    ) -> list[ChannelInfo]:
        """The channels this principal may read; see `Client.list_channels`."""
        pages = _channel_pages(prefix, limit)
        while not pages.add(await self._request(pages.request())):
            pass
        return pages.items

    async def channel_info(self, channel: str) -> ChannelInfo:
        """One channel's ids, counts, retention and subscribers; see `Client.channel_info`."""
        return _parse_channel(await self._request(_info_request(channel)))

    async def set_retention(
        self, channel: str, *, max_messages: int | None = None, max_age: float | None = None
    ) -> ChannelInfo:
        """Set (or, with neither, reset) a channel's retention; see `Client.set_retention`."""
        spec = _retention_request(channel, max_messages, max_age)
        return _parse_channel(await self._request(spec))

    async def delete_channel(self, channel: str) -> None:
        """Delete a channel (admin); see `Client.delete_channel`."""
        _parse_deleted(await self._request({"method": "DELETE", "url": channel_path(channel)}))

    # Schedules --------------------------------------------------------------------------

    async def put_schedule(
        self,
        name: str,
        type: str,
        payload: Any = None,
        *,
        cron: str | None = None,
        every: int | None = None,
        timezone: str | None = None,
        max_attempts: int = 3,
        timeout: float | None = None,  # noqa: ASYNC109 - each job's time limit
        priority: int = 0,
        catch_up: Literal["latest", "skip"] = "latest",
    ) -> ScheduleInfo:
        """Create or replace a schedule; see `Client.put_schedule`."""
        spec = _schedule_request(
            name, type, payload, cron, every, timezone, max_attempts, timeout, priority, catch_up
        )
        return _parse_schedule(await self._request(spec))

    async def get_schedule(self, name: str) -> ScheduleInfo:
        """One schedule; see `Client.get_schedule`."""
        spec = {"method": "GET", "url": schedule_path(name)}
        return _parse_schedule(await self._request(spec))

    async def list_schedules(self, *, limit: int | None = None) -> list[ScheduleInfo]:
        """The schedules this principal may see; see `Client.list_schedules`."""
        pages = _schedule_pages(limit)
        while not pages.add(await self._request(pages.request())):
            pass
        return pages.items

    async def delete_schedule(self, name: str) -> None:
        """Remove a schedule; see `Client.delete_schedule`."""
        _parse_deleted(await self._request({"method": "DELETE", "url": schedule_path(name)}))

    async def _wait_job(self, job_id: str, limit: float | None) -> JobInfo:
        state = _JobWait(limit)
        while True:
            wait = state.next_wait()
            try:
                info = await self.get_job(job_id, wait=wait)
            except Exception as exc:
                await asyncio.sleep(state.retry_delay(exc))
                continue
            state.failures = 0
            if info.terminal:
                return info

    async def _job_events(self, follow: _JobEvents) -> AsyncGenerator[tuple[str, JobInfo], None]:
        while not follow.done():
            try:
                async with aconnect_sse(self._http, **follow.sse_request()) as source:
                    response = source.response
                    if not response.is_success:
                        await response.aread()
                        check(response)
                    if response.status_code == 204:
                        return  # the job has ended and nothing follows this cursor
                    follow.connected()
                    try:
                        async for sse in source.aiter_sse():
                            item = follow.sse_item(sse)
                            if item is not None:
                                yield item
                            if follow.done():
                                return
                    except SSEError as exc:
                        raise ClientError(f"not an event stream: {exc}") from exc
                delay = 0.0  # the server ended the stream before the terminal event
            except Exception as exc:
                delay = follow.retry_delay(exc)
            await asyncio.sleep(delay)


# ---------------------------------------------------------------------------------------
# Job handles: what `submit` returns.


class JobHandle:
    """A submitted job: its id, its last known state, and ways to follow it to its end.

    Attributes:
        id: The job id.
        job: The job as last seen by this handle (updated by every call below).
        served: From `submit`: True when a worker or in-server handler has asked for jobs
            of this type lately, False when none has (the job waits for one), None when
            the server did not say (and for handles from `Client.job`).
        deduplicated: From `submit` with a `unique_key`: True when no job was queued
            because this one, queued or running, holds the key.
    """

    def __init__(
        self,
        client: Client,
        job: JobInfo,
        *,
        served: bool | None = None,
        deduplicated: bool = False,
    ) -> None:
        self.client = client
        self.id = job.id
        self.job = job
        self.served = served
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"<JobHandle {self.job.type} {self.id} {self.job.status}>"

    def refresh(self) -> JobInfo:
        """Fetch the job's current state."""
        self.job = self.client.get_job(self.id)
        return self.job

    def wait(self, timeout: float | None = None) -> JobInfo:
        """Block until the job ends (succeeded, failed or cancelled) and return it.

        Long-polls the server, reconnecting by itself when the connection drops.

        Raises:
            JobTimeout: `timeout` seconds passed first (the job goes on).
            TidingsHTTPError: e.g. 404 when the job does not exist.
        """
        if not self.job.terminal:
            self.job = self.client._wait_job(self.id, timeout)
        return self.job

    def events(self) -> Iterator[tuple[str, JobInfo]]:
        """Iterate over the job's events from its first: (event name, job), e.g.
        ("queued", ...), ("running", ...), ("progress", ...), ("succeeded", ...).

        Streams over SSE, resumes by itself when the connection drops, and stops after
        the terminal event (succeeded, failed or cancelled).
        """
        follow = _JobEvents(self.id, self.job)
        for event, info in self.client._job_events(follow):
            self.job = info
            yield event, info

    def cancel(self) -> JobInfo:
        """Cancel the job; see `Client.cancel_job`."""
        self.job = self.client.cancel_job(self.id)
        return self.job


class AsyncJobHandle:
    """A submitted job, for `AsyncClient`; see `JobHandle`."""

    def __init__(
        self,
        client: AsyncClient,
        job: JobInfo,
        *,
        served: bool | None = None,
        deduplicated: bool = False,
    ) -> None:
        self.client = client
        self.id = job.id
        self.job = job
        self.served = served
        self.deduplicated = deduplicated

    def __repr__(self) -> str:
        return f"<AsyncJobHandle {self.job.type} {self.id} {self.job.status}>"

    async def refresh(self) -> JobInfo:
        """Fetch the job's current state."""
        self.job = await self.client.get_job(self.id)
        return self.job

    async def wait(self, timeout: float | None = None) -> JobInfo:  # noqa: ASYNC109 - the sync twin's signature
        """Wait until the job ends and return it; see `JobHandle.wait`."""
        if not self.job.terminal:
            self.job = await self.client._wait_job(self.id, timeout)
        return self.job

    async def events(self) -> AsyncIterator[tuple[str, JobInfo]]:
        """Iterate over the job's events until its terminal one; see `JobHandle.events`."""
        follow = _JobEvents(self.id, self.job)
        stream = self.client._job_events(follow)
        async with aclosing(stream):
            async for event, info in stream:
                self.job = info
                yield event, info

    async def cancel(self) -> JobInfo:
        """Cancel the job; see `Client.cancel_job`."""
        self.job = await self.client.cancel_job(self.id)
        return self.job
