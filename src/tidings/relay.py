"""Cross-node live delivery for a shared store (Redis): one follower per server process.

On a store several processes share, a message published on node A must reach node B's
SSE streams, WebSockets and long polls. Each node runs one `Relay`: a single blocking
read (`store.follow`, one XREAD over many streams) of the channels its own hub watches —
not one Redis connection per subscriber — and hands what it reads to the hub exactly as a
local publish would. On such a store every message, local ones included, reaches the hub
this way, so live order is the stream's order on every node.

Starting to follow a channel (`watch`) records the channel's current end *before* the
caller reads history: whatever the caller's read does not see comes after that point and
is relayed, and what both deliver is dropped by the subscriber's cursor.

The relay also reads the store's wake-up stream: a job that became queued on any node
wakes the lease requests parked on this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from typing import Any, Protocol

from tidings.errors import StoreError
from tidings.hub import Hub
from tidings.wire import Message

__all__ = ["FOLLOW_BLOCK_MS", "Followable", "Relay"]

log = logging.getLogger("tidings.relay")

# How long one blocking read waits: also the longest a newly watched channel waits to be
# added to the read (its position is fixed at once, so nothing is missed meanwhile).
FOLLOW_BLOCK_MS = 100
RETRY_DELAY = 0.5


class Followable(Protocol):
    """What a shared store offers the relay."""

    async def last_seq(self, channel: str) -> int: ...

    async def wake_position(self) -> bytes: ...

    async def follow(
        self, positions: dict[str, int], wake_from: bytes, block_ms: int
    ) -> tuple[list[tuple[str, list[Message]]], list[tuple[str, float]], bytes]: ...


class Relay:
    """Follows the watched channels of one hub in a shared store.

    Args:
        store: the shared store.
        hub: this process's hub (what it watches; where messages go).
        wake: called with (job type, run_at) for each job queued anywhere.
    """

    def __init__(self, store: Followable, hub: Hub, wake: Callable[[str, float], None]) -> None:
        self.store = store
        self.hub = hub
        self.wake = wake
        self.positions: dict[str, int] = {}
        self._starting: dict[str, asyncio.Future[int]] = {}
        self._task: asyncio.Task[None] | None = None
        self.relayed = 0

    async def watch(self, channel: str) -> None:
        """Follow `channel` from its current end (no-op when already followed)."""
        if channel in self.positions:
            return
        pending = self._starting.get(channel)
        if pending is not None:
            await asyncio.shield(pending)
            return
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._starting[channel] = fut
        try:
            seq = await self.store.last_seq(channel)
            self.positions.setdefault(channel, seq)
            fut.set_result(seq)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()
            raise
        finally:
            del self._starting[channel]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tidings-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        wake_from: bytes | None = None
        while True:
            try:
                if wake_from is None:
                    wake_from = await self.store.wake_position()
                watched = self.hub.watched()
                for channel in [c for c in self.positions if c not in watched]:
                    del self.positions[channel]
                batches, wakes, wake_from = await self.store.follow(
                    dict(self.positions), wake_from, FOLLOW_BLOCK_MS
                )
            except StoreError as exc:
                log.warning("relay: %s; retrying in %.1f s", exc.message, RETRY_DELAY)
                await asyncio.sleep(RETRY_DELAY)
                continue
            await self._deliver(batches)
            for type_, run_at in wakes:
                self.wake(type_, run_at)

    async def _deliver(self, batches: list[tuple[str, list[Message]]]) -> None:
        # One read returns each channel's messages apart: merge them by publish time, so a
        # stream of several channels sees them in the order they were published (each
        # channel's own order is kept whatever the clocks say: merge never reorders within
        # one input).
        # When the channel changes, the hub's pass for the previous one runs first (a
        # loop turn), as between two local publishes: a stream of both channels gets
        # them in that order (for passes of up to FANOUT_CHUNK subscribers; larger ones
        # may interleave across channels, never within one).
        merged = heapq.merge(*(msgs for _, msgs in batches), key=lambda m: m.time)
        previous = None
        for msg in merged:
            pos = self.positions.get(msg.channel)
            if pos is None:
                continue  # no longer watched
            seq = int(msg.id)
            if seq <= pos:
                continue
            if previous is not None and msg.channel != previous:
                await asyncio.sleep(0)
            previous = msg.channel
            self.hub.publish(msg, str(pos) if pos else None)
            self.positions[msg.channel] = seq
            self.relayed += 1

    def info(self) -> dict[str, Any]:
        return {"channels": len(self.positions), "relayed": self.relayed}
