"""Channel messages as they travel: names, messages, publish answers, resets, SSE frames.

Encoding happens once per message on the publish path (`Message.sse_frame`,
`Message.json`), never once per subscriber.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

from tidings.protocol.codecs import encode_json, format_time

CHANNEL_RE = re.compile(r"[A-Za-z0-9._:-]{1,200}")


def valid_channel(name: str) -> bool:
    """True when `name` is a legal channel name: 1-200 chars of `[A-Za-z0-9._:-]`."""
    return CHANNEL_RE.fullmatch(name) is not None


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
