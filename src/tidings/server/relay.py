"""Cross-node live delivery for a shared store (Redis): one follower per server process.

On a store several processes share, a message published on node A must reach node B's
SSE streams, WebSockets and long polls. Each node runs one `Relay`: a single blocking
read (`follow` of the store's channel part, one XREAD over many streams) of the channels
its own hub watches — not one Redis connection per subscriber — and hands what it reads
to the hub exactly as a local publish would. On such a store every message, local ones
included, reaches the hub this way, so live order is the stream's order on every node.

Starting to follow a channel (`watch`) records the channel's current end *before* the
caller reads history: whatever the caller's read does not see comes after that point and
is relayed, and what both deliver is dropped by the subscriber's cursor.

The relay also reads the store's wake-up stream: a job that became queued on any node
wakes the lease requests parked on this one. It reads it only while it has something to
wake or follow (a parked lease request, a watched channel — deletions are announced on
that stream too): a node whose workers keep leasing without waiting reads nothing per job.
When it starts again it reads from where it stopped, so no wake-up is lost; wake-ups that
arrive for nobody cost a spurious re-check of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from tidings.protocol.errors import StoreError
from tidings.protocol.messages import Message
from tidings.server.hub import Hub

__all__ = ["FOLLOW_BLOCK_MS", "Followable", "Relay"]

log = logging.getLogger("tidings.relay")

# How long one blocking read waits: also the longest a newly watched channel waits to be
# added to the read (its position is fixed at once, so nothing is missed meanwhile).
FOLLOW_BLOCK_MS = 100
RETRY_DELAY = 0.5
# How often followed channels are checked for having been deleted (on any node).
RECREATE_CHECK = 1.0


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


class Followable(Protocol):
    """What the channel part of a shared store (`store.channels`) offers the relay."""

    async def channel_marks(self, channels: list[str]) -> list[tuple[int, bytes | None]]: ...

    async def wake_position(self) -> bytes: ...

    async def follow(
        self, positions: dict[str, int], wake_from: bytes, block_ms: int
    ) -> tuple[list[tuple[str, list[Message]]], list[tuple[str, float]], list[str], bytes]: ...


class Relay:
    """Follows the watched channels of one hub in a shared store.

    Args:
        store: the channel part of the shared store.
        hub: this process's hub (what it watches; where messages go).
        wake: called with (job type, run_at) for each job queued anywhere.
        wakes_wanted: whether anything here waits for a job (a parked lease request).
    """

    def __init__(
        self,
        store: Followable,
        hub: Hub,
        wake: Callable[[str, float], None],
        wakes_wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        self.store = store
        self.hub = hub
        self.wake = wake
        self.wakes_wanted = wakes_wanted
        self._kick = asyncio.Event()
        self.positions: dict[str, int] = {}
        self.marks: dict[str, bytes | None] = {}  # each followed channel's creation mark
        self._starting: dict[str, asyncio.Task[int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._checked = 0.0
        self._stopping = False
        self.resyncs = 0

    async def watch(self, channel: str) -> None:
        """Follow `channel` from its current end (no-op when already followed)."""
        if channel in self.positions:
            return
        lookup = self._starting.get(channel)
        if lookup is None:
            # A task of its own, awaited through a shield: a caller that is cancelled (a
            # client hung up) must not cancel the lookup the other callers wait for.
            lookup = self._starting[channel] = asyncio.ensure_future(self._start(channel))
            lookup.add_done_callback(_retrieve)  # all its callers may have gone
        await asyncio.shield(lookup)

    async def _start(self, channel: str) -> int:
        try:
            ((seq, mark),) = await self.store.channel_marks([channel])
            if channel not in self.positions:
                self.positions[channel] = seq
                self.marks[channel] = mark
                self.kick()
            return seq
        finally:
            del self._starting[channel]

    def kick(self) -> None:
        """Something to follow may have appeared (a watch, a parked lease): look now."""
        self._kick.set()

    def forget(self, channel: str) -> None:
        """Stop following `channel` (it was deleted here): the next watch starts afresh."""
        self.positions.pop(channel, None)
        self.marks.pop(channel, None)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="tidings-relay")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, RETRY_DELAY * 4)

    async def _run(self) -> None:
        wake_from: bytes | None = None
        while not self._stopping:
            try:
                if wake_from is None:
                    wake_from = await self.store.wake_position()
                watched = self.hub.watched()
                for channel in [c for c in self.positions if c not in watched]:
                    self.forget(channel)
                if not self.positions and not self.wakes_wanted():
                    # Nothing to follow: wait for a watch or a parked lease (a kick), and
                    # look again now and then. `wake_from` stays where the last read ended.
                    self._kick.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._kick.wait(), FOLLOW_BLOCK_MS / 1000)
                    continue
                await self._check_recreated()
                batches, wakes, deleted, wake_from = await self.store.follow(
                    dict(self.positions), wake_from, FOLLOW_BLOCK_MS
                )
                for channel in deleted:
                    # First: what this read holds of the channel may be its next life.
                    if channel in self.positions:
                        self.forget(channel)
                        self.resyncs += 1
                        self.hub.close_channel(
                            channel, "the channel was deleted: reconnect with your last id"
                        )
                await self._deliver(batches)
                for type_, run_at in wakes:
                    self.wake(type_, run_at)
            except StoreError as exc:
                log.warning("relay: %s; retrying in %.1f s", exc.message, RETRY_DELAY)
                await asyncio.sleep(RETRY_DELAY)
            except Exception:
                # The relay must outlive anything odd it reads: log, pause, go on.
                log.exception("relay: unexpected error; retrying in %.1f s", RETRY_DELAY)
                await asyncio.sleep(RETRY_DELAY)

    def _resync(self, channel: str, seq: int, reason: str, mark: bytes | None = None) -> None:
        """This node's live view of `channel` has a hole: end its streams and answer its long
        polls, which then resume from their cursors and get the store's explicit reset."""
        self.positions[channel] = seq
        if mark is not None:
            self.marks[channel] = mark
        self.resyncs += 1
        log.info("relay: %s: %s", channel, reason)
        self.hub.close_channel(channel, f"{reason}: reconnect with your last id")

    async def _check_recreated(self) -> None:
        """Once a second: a followed channel whose creation mark changed, or whose newest id
        went back, was deleted (on any node) and perhaps made again: its ids started over,
        so what this node follows from its old position is not what the channel holds."""
        now = time.monotonic()
        if now - self._checked < RECREATE_CHECK or not self.positions:
            return
        self._checked = now
        channels = list(self.positions)
        marks = await self.store.channel_marks(channels)
        for channel, (seq, mark) in zip(channels, marks, strict=True):
            pos = self.positions.get(channel)
            if pos is None:
                continue
            known = self.marks.get(channel)
            if seq < pos or (known is not None and mark != known):
                self._resync(channel, seq, "the channel was deleted", mark)
            elif known is None and mark is not None:
                self.marks[channel] = mark  # followed before its first message

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
            if seq > pos + 1:
                # Retention trimmed messages before this node read them: never skip them
                # silently.
                self._resync(msg.channel, seq, f"messages {pos + 1}-{seq - 1} were trimmed")
                continue
            if previous is not None and msg.channel != previous:
                await asyncio.sleep(0)
            previous = msg.channel
            self.hub.publish(msg, str(pos) if pos else None)
            self.positions[msg.channel] = seq
