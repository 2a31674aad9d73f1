"""The hub's fan-out: direct writes, hand-off to a drainer, bounded backlogs, catch-up."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from tidings.protocol.messages import Message
from tidings.server.hub import Hub, Subscriber
from tidings.server.stores.common import parse_seq
from tidings.server.transports.kind import StreamKind

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


_PARKED: set[asyncio.Task[None]] = set()


async def live(hub: Hub, send: GatedSend, limit: int = 10_000) -> Subscriber:
    """A live subscriber owned by its own parked task, as a stream handler's would be."""
    made: asyncio.Future[Subscriber] = asyncio.get_running_loop().create_future()

    async def stream() -> None:
        sub = Subscriber(hub, StreamKind.SSE, send, {"c": "0"}, limit)
        sub.catching_up = False
        hub.add(sub)
        made.set_result(sub)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    task = asyncio.get_running_loop().create_task(stream())
    _PARKED.add(task)  # a strong reference, as a server keeps its connections' tasks
    task.add_done_callback(_PARKED.discard)
    return await made


async def fan_out() -> None:
    """Let the hub's scheduled fan-out passes run."""
    for _ in range(3):
        await asyncio.sleep(0)


def test_a_writable_subscriber_is_written_without_a_task():
    async def main() -> None:
        hub = Hub(parse_seq)
        send = GatedSend()
        sub = await live(hub, send)
        tasks = len(asyncio.all_tasks())
        hub.publish(msg(1), None)
        await fan_out()
        assert send.frames == [b"id: 1\ndata: m1\n\n"]
        assert sub.drainer is None
        assert len(asyncio.all_tasks()) == tasks, "no task per subscriber"
        assert hub.delivered == 1

    asyncio.run(main())


def test_messages_published_back_to_back_reach_a_subscriber_in_one_write():
    async def main() -> None:
        hub = Hub(parse_seq)
        send = GatedSend()
        await live(hub, send)
        for i in range(1, 4):
            hub.publish(msg(i), str(i - 1) if i > 1 else None)
        await fan_out()
        assert send.frames == [b"id: 1\ndata: m1\n\nid: 2\ndata: m2\n\nid: 3\ndata: m3\n\n"]
        assert hub.delivered == 3

    asyncio.run(main())


def test_a_pass_over_many_subscribers_lets_later_messages_join_and_misses_none(monkeypatch):
    """Fan-out runs in chunks; a message published between chunks reaches everyone once."""
    import tidings.server.hub

    monkeypatch.setattr(tidings.server.hub, "FANOUT_CHUNK", 2)

    async def main() -> None:
        hub = Hub(parse_seq)
        sends = [GatedSend() for _ in range(5)]
        for send in sends:
            await live(hub, send)
        hub.publish(msg(1), None)
        await asyncio.sleep(0)  # the first chunk only
        hub.publish(msg(2), "1")
        await fan_out()
        await fan_out()
        for send in sends:
            ids = [line for f in send.frames for line in f.split(b"\n") if line.startswith(b"id")]
            assert ids == [b"id: 1", b"id: 2"]

    asyncio.run(main())


def test_a_blocked_subscriber_does_not_stall_the_others_and_catches_up_in_order():
    async def main() -> None:
        hub = Hub(parse_seq)
        slow, fast = GatedSend(), GatedSend()
        slow.open.clear()
        s = await live(hub, slow)
        await live(hub, fast)
        for i in range(1, 6):
            hub.publish(msg(i), None)
            await fan_out()
        assert len(fast.frames) == 5
        assert slow.frames == []
        assert s.drainer is not None
        assert len(s.backlog) == 4
        slow.open.set()
        await asyncio.wait_for(s.drainer, 2)
        assert [f.split(b"\n")[0] for f in slow.frames] == [b"id: %d" % i for i in range(1, 6)]
        assert s.drainer is None and not s.backlog
        hub.publish(msg(6), "5")
        await fan_out()
        assert len(slow.frames) == 6, "back to direct writes once drained"

    asyncio.run(main())


def test_a_subscriber_over_its_buffer_is_cut_and_unregistered():
    async def main() -> None:
        hub = Hub(parse_seq)
        stuck = GatedSend()
        stuck.open.clear()
        sub = await live(hub, stuck, limit=100)
        for i in range(1, 20):
            hub.publish(msg(i), None)
            await fan_out()
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
        sub = Subscriber(hub, StreamKind.SSE, send, {"c": "0"}, 10_000)
        hub.add(sub)
        for i in range(1, 4):
            hub.publish(msg(i), None)
        await fan_out()
        sub.park([msg(3)])  # a batch can be handed over twice
        assert send.frames == []
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
    import tidings.server.hub

    monkeypatch.setattr(tidings.server.hub, "RECENT_CHANNELS", 3)
    hub = Hub(parse_seq)

    async def main() -> None:
        for name in ["a", "b", "c", "d"]:
            hub.publish(msg(1, name), None)
        hub.publish(msg(2, "b"), "1")  # b becomes the most recent
        hub.publish(msg(1, "e"), None)
        assert [hub.last_id(ch)[0] for ch in "abcde"] == [False, True, False, True, True]

    asyncio.run(main())


def test_a_long_poll_answer_that_cannot_be_built_wakes_every_poll_and_the_streams():
    """A failing direct answer leaves its polls to their tasks; every parked poll still
    wakes and the live streams still get the message."""
    from tidings.server.hub import DirectPoll

    async def main() -> None:
        hub = Hub(parse_seq)
        send = GatedSend()
        await live(hub, send)
        hub.publish(msg(1), None)
        await fan_out()

        def broken(_msgs: list[Message]) -> Any:
            raise ValueError("cannot encode")

        sent: list[dict[str, Any]] = []

        async def poll_send(message: dict[str, Any]) -> None:
            sent.append(message)

        futs = [hub.waiter("c") for _ in range(3)]
        polls = [DirectPoll("1", 10, "json", broken, {"type": "http"}, poll_send) for _ in futs]
        for fut, poll in zip(futs, polls, strict=True):
            hub.answer_directly(fut, poll)
        hub.publish(msg(2), "1")
        assert all(f.done() for f in futs)
        assert not any(p.answered for p in polls) and sent == []
        assert hub.answered_directly == 0
        await fan_out()
        assert send.frames[-1] == b"id: 2\ndata: m2\n\n"

    asyncio.run(main())


def test_every_whole_answer_is_written_before_any_request_is_completed():
    """A publish writes all the parked polls' answers, then completes their requests (one
    failing to complete stops neither the others nor the wake-ups); a poll whose
    connection cannot take the whole write goes through its `send`."""
    from tidings.server.hub import DirectPoll

    async def main() -> None:
        hub = Hub(parse_seq)
        hub.publish(msg(1), None)
        events: list[str] = []

        class Whole:
            def __init__(self, name: str, takes: bool = True, breaks: bool = False) -> None:
                self.name, self.takes, self.breaks = name, takes, breaks

            def write(self, answer: Any) -> bool:
                events.append(f"write {self.name}")
                return self.takes

            def finish(self) -> None:
                events.append(f"finish {self.name}")
                if self.breaks:
                    raise RuntimeError("broken")

        sent: list[dict[str, Any]] = []

        async def poll_send(message: dict[str, Any]) -> None:
            sent.append(message)

        async def answer(scope: Any, receive: Any, send: Any) -> None:
            await send({"type": "http.response.start", "status": 200, "headers": []})

        wholes = [Whole("a"), Whole("b", breaks=True), Whole("c", takes=False), Whole("d")]
        futs = [hub.waiter("c") for _ in wholes]
        polls = [
            DirectPoll("1", 10, "json", lambda _m: answer, {"type": "http"}, poll_send, w)
            for w in wholes
        ]
        for fut, poll in zip(futs, polls, strict=True):
            hub.answer_directly(fut, poll)
        hub.publish(msg(2), "1")
        writes = [e for e in events if e.startswith("write")]
        assert sorted(writes) == ["write a", "write b", "write c", "write d"]
        assert events[:4] == writes, "a request completed before every answer was written"
        assert sorted(events[4:]) == ["finish a", "finish b", "finish d"]
        assert len(sent) == 1  # c went through its send
        assert all(f.done() for f in futs)
        assert hub.answered_directly == 4

    asyncio.run(main())


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_websocket_text_frames_use_the_right_length_form(size: int) -> None:
    from tidings.server.transports.kind import ws_text_frame

    frame = ws_text_frame("x" * size)
    assert frame[0] == 0x81  # FIN, text
    if size < 126:
        assert frame[1] == size and len(frame) == 2 + size
    elif size < 65536:
        assert frame[1] == 126 and int.from_bytes(frame[2:4], "big") == size
        assert len(frame) == 4 + size
    else:
        assert frame[1] == 127 and int.from_bytes(frame[2:10], "big") == size
        assert len(frame) == 10 + size


def test_the_switch_interval_is_short_only_while_a_fan_out_runs():
    """With `switch` set (as `tidings serve` sets it), a publish to a channel with
    subscribers shortens the GIL switch interval until its fan-out is done; a publish
    to a channel without any leaves it alone."""
    import sys

    async def main() -> None:
        hub = Hub(parse_seq)
        hub.switch = (0.0007, 0.004)
        sys.setswitchinterval(0.004)
        send = GatedSend()
        await live(hub, send)
        hub.publish(msg(1, "nobody"), None)
        assert sys.getswitchinterval() == pytest.approx(0.004)
        hub.publish(msg(1), None)
        assert sys.getswitchinterval() == pytest.approx(0.0007)
        await fan_out()
        assert send.frames == [b"id: 1\ndata: m1\n\n"]
        assert sys.getswitchinterval() == pytest.approx(0.004)

    before = sys.getswitchinterval()
    try:
        asyncio.run(main())
    finally:
        sys.setswitchinterval(before)
