"""The hub's fan-out: direct writes, hand-off to a drainer, bounded backlogs, catch-up."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tidings.hub import KIND_SSE, Hub, Subscriber
from tidings.stores.memory import parse_seq
from tidings.wire import Message

pytestmark = pytest.mark.timeout(10)


class GatedSend:
    """An ASGI send that completes at once while open and waits (like a full socket) when shut."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.frames: list[bytes] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        await self.open.wait()
        self.frames.append(message["body"])


def msg(i: int, channel: str = "c") -> Message:
    return Message(id=str(i), channel=channel, data=f"m{i}")


def live(hub: Hub, send: GatedSend, limit: int = 10_000) -> Subscriber:
    sub = Subscriber(hub, KIND_SSE, send, {"c": "0"}, limit)
    sub.catching_up = False
    hub.add(sub)
    return sub


def test_a_writable_subscriber_is_written_without_a_task():
    async def main() -> None:
        hub = Hub(parse_seq)
        send = GatedSend()
        sub = live(hub, send)
        tasks = len(asyncio.all_tasks())
        for i in range(1, 4):
            hub.publish(msg(i), str(i - 1) if i > 1 else None)
        assert len(send.frames) == 3, "frames are written synchronously during publish"
        assert sub.drainer is None
        assert len(asyncio.all_tasks()) == tasks
        assert send.frames[0] == b"id: 1\ndata: m1\n\n"
        assert hub.delivered == 3

    asyncio.run(main())


def test_a_blocked_subscriber_does_not_stall_the_others_and_catches_up_in_order():
    async def main() -> None:
        hub = Hub(parse_seq)
        slow, fast = GatedSend(), GatedSend()
        slow.open.clear()
        s = live(hub, slow)
        live(hub, fast)
        for i in range(1, 6):
            hub.publish(msg(i), None)
        assert len(fast.frames) == 5
        assert slow.frames == []
        assert s.drainer is not None
        assert len(s.backlog) == 4
        slow.open.set()
        await asyncio.wait_for(s.drainer, 2)
        assert [f.split(b"\n")[0] for f in slow.frames] == [b"id: %d" % i for i in range(1, 6)]
        assert s.drainer is None and not s.backlog
        hub.publish(msg(6), "5")
        assert len(slow.frames) == 6, "back to direct writes once drained"

    asyncio.run(main())


def test_a_subscriber_over_its_buffer_is_cut_and_unregistered():
    async def main() -> None:
        hub = Hub(parse_seq)
        stuck = GatedSend()
        stuck.open.clear()
        sub = live(hub, stuck, limit=100)
        for i in range(1, 20):
            hub.publish(msg(i), None)
        assert sub.close_reason is not None and "slow consumer" in sub.close_reason
        assert hub.cut == 1
        assert not sub.backlog and sub.backlog_bytes == 0
        assert hub.subscribers("c")["sse"] == 0
        await asyncio.sleep(0)
        assert sub.drainer is None or sub.drainer.cancelled() or sub.drainer.done()

    asyncio.run(main())


def test_catching_up_parks_live_messages_and_skips_what_the_replay_sent():
    async def main() -> None:
        hub = Hub(parse_seq)
        send = GatedSend()
        sub = Subscriber(hub, KIND_SSE, send, {"c": "0"}, 10_000)
        hub.add(sub)
        for i in range(1, 4):
            hub.publish(msg(i), None)
        assert send.frames == [] and len(sub.pending) == 3
        sub.cursors["c"] = "2"  # the replay already sent 1 and 2
        assert [m.id for m in sub.take_pending()] == ["3"]

    asyncio.run(main())


def test_recent_tail_answers_reads_only_when_it_covers_the_cursor():
    hub = Hub(parse_seq)

    async def main() -> None:
        for i in range(1, 101):
            hub.publish(msg(i), str(i - 1) if i > 1 else None, keep=1000)
        assert [m.id for m in hub.recent_after("c", "98", 10) or []] == ["99", "100"]
        assert hub.recent_after("c", "100", 10) == []
        assert hub.recent_after("c", "5", 10) is None, "older than the tail: ask the store"
        assert hub.recent_after("c", "0", 10) is None
        assert hub.recent_after("c", "101", 10) is None, "ahead of the tail: ask the store"
        hub.publish(msg(200), "150", keep=1000)  # a gap: another writer
        assert hub.recent_after("c", "99", 10) is None

    asyncio.run(main())


def test_long_poll_waiters_are_woken_by_a_publish_and_by_shutdown():
    async def main() -> None:
        hub = Hub(parse_seq)
        a = hub.waiter("c")
        b = hub.waiter("other")
        hub.publish(msg(1), None)
        assert a.done() and not b.done()
        hub.close_all("bye")
        assert b.done()

    asyncio.run(main())


def test_recent_tails_are_kept_for_a_bounded_number_of_channels(monkeypatch):
    """Every job has a channel: the hub forgets the least recently published first."""
    import tidings.hub

    monkeypatch.setattr(tidings.hub, "RECENT_CHANNELS", 3)
    hub = Hub(parse_seq)

    async def main() -> None:
        for name in ["a", "b", "c", "d"]:
            hub.publish(msg(1, name), None)
        hub.publish(msg(2, "b"), "1")  # b becomes the most recent
        hub.publish(msg(1, "e"), None)
        assert [hub.last_id(ch)[0] for ch in "abcde"] == [False, True, False, True, True]

    asyncio.run(main())
