"""The hub's isolation: one failing subscriber or message never stops a channel's fan-out."""

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


class Recorder:
    """An ASGI send that records what it is given and completes at once."""

    def __init__(self) -> None:
        self.frames: list[Any] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.frames.append(message.get("body") or message.get("text"))


class Broken:
    """An ASGI send that raises, as a connection whose server-side send fails."""

    calls = 0

    async def __call__(self, message: dict[str, Any]) -> None:
        self.calls += 1
        raise RuntimeError("the connection's send is broken")


class Unencodable:
    """Message data msgspec cannot encode (as a value stored before values were checked)."""


_PARKED: set[asyncio.Task[None]] = set()


async def live(
    hub: Hub, send: Any, kind: StreamKind = StreamKind.SSE, cursor: str = "0"
) -> Subscriber:
    """A live subscriber owned by its own parked task, as a stream handler's would be."""
    made: asyncio.Future[Subscriber] = asyncio.get_running_loop().create_future()

    async def stream() -> None:
        sub = Subscriber(hub, kind, send, {"c": cursor}, 1 << 20)
        sub.catching_up = False
        hub.add(sub)
        made.set_result(sub)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()

    task = asyncio.get_running_loop().create_task(stream())
    _PARKED.add(task)
    task.add_done_callback(_PARKED.discard)
    return await made


async def fan_out() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def msg(i: int, data: Any = None) -> Message:
    return Message(id=str(i), channel="c", data=f"m{i}" if data is None else data)


def test_a_subscriber_whose_send_raises_is_cut_and_the_others_get_every_message() -> None:
    async def main() -> None:
        hub = Hub(parse_seq)
        before, after = Recorder(), Recorder()
        first = await live(hub, before)
        broken = await live(hub, Broken())
        last = await live(hub, after)
        hub.publish(msg(1), None)
        await fan_out()
        assert broken.close_reason is not None
        assert "send failed" in broken.close_reason
        assert hub.subscribers("c")[StreamKind.SSE] == 2
        for i in range(2, 5):  # later publishes still fan out: the pass was cleared
            hub.publish(msg(i), str(i - 1))
            await fan_out()
        want = [f"id: {i}\ndata: m{i}\n\n".encode() for i in range(1, 5)]
        assert b"".join(before.frames) == b"".join(want)
        assert b"".join(after.frames) == b"".join(want)
        assert first.close_reason is None
        assert last.close_reason is None
        assert not hub._passes

    asyncio.run(main())


def test_a_subscriber_whose_delivery_raises_is_cut_and_the_pass_is_cleared() -> None:
    """Whatever fails inside one subscriber's delivery (not only its send; here its cursor
    does not parse) cuts it alone."""

    async def main() -> None:
        hub = Hub(parse_seq)
        good = Recorder()
        bad = await live(hub, Recorder(), cursor="garbage")
        await live(hub, good)
        hub.publish(msg(1), None)
        await fan_out()
        assert bad.close_reason is not None
        assert "InvalidCursor" in bad.close_reason
        assert not hub._passes, "the failed pass must not stay behind"
        hub.publish(msg(2), "1")
        await fan_out()
        assert b"".join(good.frames) == b"id: 1\ndata: m1\n\nid: 2\ndata: m2\n\n"

    asyncio.run(main())


def test_a_message_that_cannot_be_encoded_is_skipped_with_a_note_and_delivery_goes_on() -> None:
    async def main() -> None:
        hub = Hub(parse_seq)
        sse, ws = Recorder(), Recorder()
        s1 = await live(hub, sse)
        s2 = await live(hub, ws, StreamKind.WS)
        hub.publish(msg(1, Unencodable()), None)
        hub.publish(msg(2), "1")
        await fan_out()
        hub.publish(msg(3), "2")
        await fan_out()
        body = b"".join(sse.frames)
        assert body.startswith(b": message 1 of c cannot be encoded: skipped\n\n")
        assert body.endswith(b"id: 2\ndata: m2\n\nid: 3\ndata: m3\n\n")
        assert '"code":"unencodable"' in ws.frames[0]
        assert [f for f in ws.frames[1:] if '"data":"m' in f] == ws.frames[1:]
        assert len(ws.frames) == 3
        assert s1.close_reason is None
        assert s2.close_reason is None
        assert s1.cursors == {"c": "3"}

    asyncio.run(main())


def test_a_pass_that_fails_outside_any_subscriber_is_cleared_and_its_streams_cut_to_resume() -> (
    None
):
    """Should the batch itself fail (here: an id the store's order cannot parse), the
    channel's streams are cut so they resume from their cursors, and the channel's next
    publish fans out again."""

    async def main() -> None:
        hub = Hub(parse_seq)
        old = await live(hub, Recorder())
        hub.publish(Message(id="not-a-seq", channel="c", data="x"), None)
        await fan_out()
        assert old.close_reason is not None
        assert "resume" in old.close_reason
        assert not hub._passes
        fresh = Recorder()
        await live(hub, fresh)
        hub.publish(msg(5), None)
        await fan_out()
        assert fresh.frames == [b"id: 5\ndata: m5\n\n"]

    asyncio.run(main())
