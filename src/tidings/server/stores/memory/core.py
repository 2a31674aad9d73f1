"""What the parts of the memory store share: whether it is open, and the channels (a
job's events are appended to its channel by the jobs part)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tidings.protocol.errors import StoreClosed
from tidings.protocol.messages import Message
from tidings.server.stores.base import ChannelInfo, Published, Retention

__all__ = ["MemoryCore", "MemoryLog"]


@dataclass
class _Channel:
    created: float
    last_seq: int = 0
    retention: Retention | None = None
    # Retained messages; their sequence numbers are contiguous, ending at last_seq.
    messages: deque[Message] = field(default_factory=deque)
    idempotency: dict[str, tuple[Message, str | None, float]] = field(default_factory=dict)


class MemoryLog:
    """Every channel's retained messages, and the append both channels and jobs use."""

    def __init__(self, default_retention: Retention) -> None:
        self.default_retention = default_retention
        self.channels: dict[str, _Channel] = {}

    def get_or_create(self, name: str, now: float) -> _Channel:
        ch = self.channels.get(name)
        if ch is None:
            ch = self.channels[name] = _Channel(created=now)
        return ch

    def retention(self, ch: _Channel) -> Retention:
        return ch.retention or self.default_retention

    def info(self, name: str, ch: _Channel) -> ChannelInfo:
        return ChannelInfo(
            name=name,
            first_id=ch.messages[0].id if ch.messages else None,
            last_id=str(ch.last_seq) if ch.last_seq else None,
            messages=len(ch.messages),
            created=ch.created,
            retention=self.retention(ch),
            custom_retention=ch.retention is not None,
        )

    def append(self, channel: str, data: Any, event: str | None, now: float) -> Published:
        """Append one message to a channel (made if missing), trimmed to its retention."""
        ch = self.get_or_create(channel, now)
        limit = self.retention(ch).max_messages
        prev = str(ch.last_seq) if ch.last_seq else None
        ch.last_seq += 1
        msg = Message(id=str(ch.last_seq), channel=channel, data=data, event=event, time=now)
        ch.messages.append(msg)
        while len(ch.messages) > limit:
            ch.messages.popleft()
        return Published(msg, prev, keep=limit)


class MemoryCore:
    """The memory store's open flag and its channels."""

    def __init__(self, default_retention: Retention) -> None:
        self.log = MemoryLog(default_retention)
        self.open = False

    def check(self) -> None:
        """StoreClosed unless the store is started and not closed."""
        if not self.open:
            raise StoreClosed("store is not started: call `await store.start()` first")
