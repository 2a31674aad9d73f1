"""What travels on the wire: message models, JSON/MessagePack codecs, SSE frames, cursors.

Everything here is pure and shared by the server and the SDK. Encoding happens once per
message on the publish path (`Message.sse_frame`, `Message.json`), never once per
subscriber.
"""

from __future__ import annotations

import functools
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import msgspec

__all__ = [
    "CHANNEL_RE",
    "JSON_DECODER",
    "RESET_AHEAD",
    "RESET_BEHIND",
    "Message",
    "PublishAck",
    "Reset",
    "decode_composite_cursor",
    "encode_composite_cursor",
    "encode_json",
    "format_time",
    "sse_frame",
    "valid_channel",
]

CHANNEL_RE = re.compile(r"[A-Za-z0-9._:-]{1,200}")

encode_json = msgspec.json.Encoder().encode
JSON_DECODER = msgspec.json.Decoder()


def valid_channel(name: str) -> bool:
    """True when `name` is a legal channel name: 1-200 chars of `[A-Za-z0-9._:-]`."""
    return CHANNEL_RE.fullmatch(name) is not None


def format_time(ts: float) -> str:
    """RFC 3339 UTC with microseconds, the form every `time` field takes on the wire.

    Built from a cached per-second prefix: polls format every message's time, and
    `datetime.strftime` cost 20x the JSON encoding of a page (decision 0008).
    """
    frac, whole = math.modf(ts)  # the rounding datetime.fromtimestamp does
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_second(int(whole))}.{micros:06d}Z"


@functools.lru_cache(maxsize=4096)
def _second(secs: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


class Message(msgspec.Struct, frozen=True, gc=False):
    """One message of a channel, as stored and as served.

    `data` is a `str` for text messages or any JSON value. `time` is seconds since the
    epoch; it is formatted as RFC 3339 on the wire.
    """

    id: str
    channel: str
    data: Any
    event: str | None = None
    time: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        """The message as poll answers and WebSocket frames carry it."""
        return {
            "id": self.id,
            "channel": self.channel,
            "event": self.event,
            "data": self.data,
            "time": format_time(self.time),
        }

    @classmethod
    def from_wire(cls, obj: dict[str, Any]) -> Message:
        """Parse the wire form (as produced by `to_wire`)."""
        raw_time = obj.get("time")
        ts = (
            datetime.fromisoformat(raw_time.replace("Z", "+00:00")).timestamp()
            if isinstance(raw_time, str)
            else 0.0
        )
        return cls(
            id=str(obj["id"]),
            channel=str(obj["channel"]),
            data=obj.get("data"),
            event=obj.get("event"),
            time=ts,
        )


class PublishAck(msgspec.Struct, frozen=True):
    """The answer to a publish: the durable message's id, channel and time."""

    id: str
    channel: str
    time: float

    def to_wire(self) -> dict[str, Any]:
        """The 201 body."""
        return {"id": self.id, "channel": self.channel, "time": format_time(self.time)}


RESET_BEHIND = "cursor is older than the retained history of the channel"
RESET_AHEAD = (
    "cursor is ahead of the channel's newest message (the channel was deleted or recreated)"
)


class Reset(msgspec.Struct, frozen=True):
    """History the subscriber asked for is gone: what follows is not contiguous with its cursor.

    `first` is the oldest id still retained (None when the channel is empty). `reason` is
    `RESET_BEHIND` (retention dropped what followed the cursor) or `RESET_AHEAD` (the
    cursor belongs to an earlier life of the channel).
    """

    channel: str
    first: str | None
    reason: str = RESET_BEHIND

    def to_wire(self) -> dict[str, Any]:
        """The reset control frame's body."""
        return {
            "type": "reset",
            "channel": self.channel,
            "first": self.first,
            "reason": self.reason,
        }


def data_text(data: Any) -> str:
    """SSE `data:` text: a string as itself, any other JSON value as its JSON encoding."""
    if isinstance(data, str):
        return data
    return encode_json(data).decode()


def sse_frame(id: str | None, event: str | None, data: str) -> bytes:
    """Encode one SSE event; multi-line data becomes several `data:` lines."""
    parts: list[str] = []
    if id is not None:
        parts.append(f"id: {id}\n")
    if event is not None:
        parts.append(f"event: {event}\n")
    if "\n" in data or "\r" in data:
        for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            parts.append(f"data: {line}\n")
    else:
        parts.append(f"data: {data}\n")
    parts.append("\n")
    return "".join(parts).encode()


COMPACT_CURSOR = "~"


def encode_composite_cursor(positions: Mapping[str, str | None]) -> str:
    """Cursor of a multiplexed stream: `~`, then the position in each channel, in the
    stream's channel order, joined by `.`; an empty position is 0 (no message yet).

    It names no channel: the stream's URL does, and EventSource resends that URL unchanged
    with the cursor. So it grows by one message id and a dot per channel, whatever the
    channel names. The leading `~` (never in a channel name) marks this form; another
    form would take another mark.
    """
    return COMPACT_CURSOR + ".".join(
        "" if pos is None or pos == "0" else pos for pos in positions.values()
    )


def decode_composite_cursor(text: str, channels: Sequence[str]) -> dict[str, str]:
    """The position a multiplexed stream's cursor gives each of `channels` (the stream's,
    in its order); raises ValueError on a malformed cursor.

    The compact form (`encode_composite_cursor`) must hold one position per channel. The
    older `channel=id,...` form is matched by name: a channel it does not name is absent
    from the answer, a channel the stream does not follow is ignored.
    """
    if not text:
        return {}
    if text.startswith(COMPACT_CURSOR):
        parts = text[len(COMPACT_CURSOR) :].split(".")
        if len(parts) != len(channels):
            raise ValueError(
                f"cursor holds {len(parts)} positions but the stream follows "
                f"{len(channels)} channels: resume with the same channels, in the same "
                "order, as the stream that gave the cursor"
            )
        return {ch: pos or "0" for ch, pos in zip(channels, parts, strict=True)}
    named: dict[str, str] = {}
    for part in text.split(","):
        ch, sep, pos = part.partition("=")
        if not sep or not valid_channel(ch) or not pos:
            raise ValueError(
                f"malformed cursor part {part[:100]!r}: expected an id this stream sent"
            )
        named[ch] = pos
    return {ch: named[ch] for ch in channels if ch in named}


# -- jobs ---------------------------------------------------------------------------------

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


JOB_CHANNEL_PREFIX = "job."


def job_channel(job_id: str) -> str:
    """The channel every state change and progress report of a job is published on."""
    return JOB_CHANNEL_PREFIX + job_id


def _opt_time(ts: float | None) -> str | None:
    return None if ts is None else format_time(ts)


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A job as stored. Times are seconds since the epoch (RFC 3339 on the wire).

    `run_at` is when a queued job may next be leased (its delay or retry backoff);
    `lease_token` and `lease_expires_at` belong to the worker holding it while running.
    """

    id: str
    type: str
    payload: Any = None
    status: str = "queued"
    progress: float | None = None
    message: str | None = None
    result: Any = None
    error: Any = None
    attempt: int = 0
    max_attempts: int = 3
    priority: int = 0
    timeout: float | None = None
    idempotency_key: str | None = None
    cancel_requested: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    run_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    lease_seconds: float | None = None
    submitted_by: str | None = None  # the principal that submitted it (None: anonymous)

    @property
    def terminal(self) -> bool:
        """True once the job has ended (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    def to_wire(self) -> dict[str, Any]:
        """The public form: everything but the lease token, with links."""
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "payload": self.payload,
            "progress": self.progress,
            "message": self.message,
            "result": self.result,
            "error": self.error,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "timeout": self.timeout,
            "cancel_requested": self.cancel_requested,
            "submitted_by": self.submitted_by,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "run_at": format_time(self.run_at),
            "started_at": _opt_time(self.started_at),
            "finished_at": _opt_time(self.finished_at),
            "lease_expires_at": _opt_time(self.lease_expires_at),
            "links": {
                "self": f"/v1/jobs/{self.id}",
                "events": f"/v1/jobs/{self.id}/events",
                "ws": f"/v1/jobs/{self.id}/ws",
                "channel": f"/v1/channels/{job_channel(self.id)}/messages",
            },
        }

    def lease_to_wire(self) -> dict[str, Any]:
        """What a worker receives for a leased job."""
        return {
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "lease_token": self.lease_token,
            "lease_expires_at": _opt_time(self.lease_expires_at),
        }


class JobOutcome(msgspec.Struct, frozen=True):
    """A worker's word on one leased job: `ok` completes it with `value` as its result;
    otherwise the attempt fails with `value` as its error (retried when `retry`)."""

    id: str
    lease_token: str
    ok: bool
    value: Any = None
    retry: bool = True
