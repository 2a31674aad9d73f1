"""Channel messages as they travel: names, messages, publish answers, resets, SSE frames.

`Message`, `PublishAck` and `Reset` are what the server holds; each one's wire shape is one
Struct (`MessageWire`, `PublishAckWire`, `ResetWire`) that the server encodes, the SDK
decodes and the OpenAPI document describes. `sse_frame` and `data_text` write the SSE
form; the hub calls them once per message, never once per subscriber.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from tidings.protocol.codecs import Time, encode_json, format_time, parse_time

CHANNEL_RE = re.compile(r"[A-Za-z0-9._:-]{1,200}")


def valid_channel(name: str) -> bool:
    """True when `name` is a legal channel name: 1-200 chars of `[A-Za-z0-9._:-]`."""
    return CHANNEL_RE.fullmatch(name) is not None


class MessageWire(msgspec.Struct, frozen=True, gc=False):
    """A message as poll answers, WebSocket frames and multiplexed SSE events carry it."""

    id: str
    channel: str
    event: str | None
    data: Any
    time: Time


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

    def to_wire(self) -> MessageWire:
        """The message as poll answers and WebSocket frames carry it."""
        return MessageWire(self.id, self.channel, self.event, self.data, format_time(self.time))

    @classmethod
    def from_wire(cls, wire: MessageWire) -> Message:
        """The message a decoded `MessageWire` stands for."""
        return cls(wire.id, wire.channel, wire.data, wire.event, parse_time(wire.time))


class PageWire(msgspec.Struct, frozen=True, gc=False):
    """A poll answer: the messages after the cursor, the cursor to send as `after` next
    time, and whether history after the cursor is gone (`reset`)."""

    messages: list[MessageWire]
    next: str
    reset: bool


class PublishAckWire(msgspec.Struct, frozen=True, gc=False):
    """The 201 body of a publish."""

    id: str
    channel: str
    time: Time


class PublishAck(msgspec.Struct, frozen=True):
    """The answer to a publish: the durable message's id, channel and time."""

    id: str
    channel: str
    time: float

    def to_wire(self) -> PublishAckWire:
        """The 201 body."""
        return PublishAckWire(self.id, self.channel, format_time(self.time))

    @classmethod
    def from_wire(cls, wire: PublishAckWire) -> PublishAck:
        """The answer a decoded `PublishAckWire` stands for."""
        return cls(wire.id, wire.channel, parse_time(wire.time))


RESET_BEHIND = "cursor is older than the retained history of the channel"
RESET_AHEAD = (
    "cursor is ahead of the channel's newest message (the channel was deleted or recreated)"
)


class ResetWire(msgspec.Struct, frozen=True, kw_only=True):
    """The body of a `reset` control frame (SSE `event: reset`, WebSocket `"type": "reset"`)."""

    type: Literal["reset"] = "reset"
    channel: str
    first: str | None
    reason: str = RESET_BEHIND


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
        """The reset control frame's body, as the transports' control frames take it."""
        return msgspec.structs.asdict(
            ResetWire(channel=self.channel, first=self.first, reason=self.reason)
        )

    @classmethod
    def from_wire(cls, wire: ResetWire) -> Reset:
        """The reset a decoded `ResetWire` stands for."""
        return cls(wire.channel, wire.first, wire.reason)


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
