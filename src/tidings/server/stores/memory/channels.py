"""The memory store's channels: deques of messages with retention and idempotency keys."""

from __future__ import annotations

import heapq
import time
from typing import Any

from tidings.protocol.jobs import JOB_CHANNEL_PREFIX
from tidings.server.constants import IDEMPOTENCY_TTL
from tidings.server.stores.base import (
    ChannelInfo,
    ChannelStore,
    Published,
    ReadResult,
    Retention,
    is_reset,
)
from tidings.server.stores.common import parse_seq
from tidings.server.stores.memory.core import MemoryCore, MemoryLog

__all__ = ["MemoryChannels"]


class MemoryChannels(ChannelStore):
    """Every ChannelStore method over the core's channels."""

    def __init__(self, core: MemoryCore, log: MemoryLog) -> None:
        super().__init__(log.default_retention)
        self._core = core
        self._log = log

    def cursor_key(self, message_id: str) -> int:
        return parse_seq(message_id)

    async def publish(
        self,
        channel: str,
        data: Any,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> Published:
        self._core.check()
        now = time.time()
        log = self._log
        ch = log.get_or_create(channel, now)
        if idempotency_key is not None:
            seen = ch.idempotency.get(idempotency_key)
            if seen is not None and seen[2] > now:
                limit = log.retention(ch).max_messages
                return Published(seen[0], seen[1], keep=limit, duplicate=True)
        published = log.append(channel, data, event, now)
        if idempotency_key is not None:
            ch.idempotency[idempotency_key] = (
                published.message,
                published.prev_id,
                now + IDEMPOTENCY_TTL,
            )
        return published

    async def read(self, channel: str, after: str, limit: int) -> ReadResult:
        self._core.check()
        after_seq = parse_seq(after)
        ch = self._log.channels.get(channel)
        if ch is None:
            return ReadResult(messages=[], reset=after_seq != 0, first_id=None, last_id=None)
        first = ch.last_seq - len(ch.messages) + 1
        reset = is_reset(after_seq, first, ch.last_seq)
        start = 0 if reset else max(0, after_seq - first + 1)
        out = [ch.messages[i] for i in range(start, min(start + limit, len(ch.messages)))]
        return ReadResult(
            messages=out,
            reset=reset,
            first_id=str(first) if ch.messages else None,
            last_id=str(ch.last_seq) if ch.last_seq else None,
        )

    async def info(self, channel: str) -> ChannelInfo | None:
        self._core.check()
        ch = self._log.channels.get(channel)
        return None if ch is None else self._log.info(channel, ch)

    async def list_channels(
        self, prefix: str = "", limit: int = 1000, after: str = ""
    ) -> list[ChannelInfo]:
        self._core.check()
        channels = self._log.channels
        names = heapq.nsmallest(
            max(0, limit), (n for n in channels if n > after and n.startswith(prefix))
        )
        return [self._log.info(n, channels[n]) for n in names]

    async def delete(self, channel: str) -> bool:
        self._core.check()
        return self._log.channels.pop(channel, None) is not None

    async def set_retention(self, channel: str, retention: Retention | None) -> ChannelInfo:
        self._core.check()
        ch = self._log.get_or_create(channel, time.time())
        ch.retention = retention
        limit = self._log.retention(ch).max_messages
        while len(ch.messages) > limit:
            ch.messages.popleft()
        return self._log.info(channel, ch)

    async def sweep(self, now: float) -> list[str]:
        self._core.check()
        trimmed = []
        for name, ch in self._log.channels.items():
            if name.startswith(JOB_CHANNEL_PREFIX):
                continue  # a job's channel goes with its job (see ChannelStore.sweep)
            cutoff = now - self._log.retention(ch).max_age
            if ch.messages and ch.messages[0].time < cutoff:
                trimmed.append(name)
            while ch.messages and ch.messages[0].time < cutoff:
                ch.messages.popleft()
            expired = [k for k, v in ch.idempotency.items() if v[2] <= now]
            for k in expired:
                del ch.idempotency[k]
        return trimmed
