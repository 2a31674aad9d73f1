"""What the relay needs from the Redis store's channel part: `follow`, `wake_position`,
`channel_marks` — on a real redis-server, two store instances acting as two tidings nodes
sharing it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RedisProcess
from tidings.protocol.errors import StoreClosed, StoreError
from tidings.server.stores import open_store
from tidings.server.stores.base import Retention
from tidings.server.stores.redis import RedisStore

pytestmark = pytest.mark.timeout(30)

DEFAULT = Retention(max_messages=100, max_age=3600.0)

Body = Callable[[RedisStore, RedisStore], Coroutine[Any, Any, None]]


def run(url: str, body: Body) -> None:
    """Start two stores on the same Redis and prefix (node A, node B), run `body`."""

    async def main() -> None:
        a = open_store(url, DEFAULT)
        b = open_store(url, DEFAULT)
        assert isinstance(a, RedisStore) and isinstance(b, RedisStore)
        await a.start()
        await b.start()
        try:
            await body(a, b)
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_follow_returns_a_message_published_on_another_node_while_it_blocks(redis_url):
    """A follow blocked on a channel wakes up with a message node B publishes meanwhile."""

    async def body(a: RedisStore, b: RedisStore) -> None:
        wake = await a.channels.wake_position()
        started = time.monotonic()
        follow = asyncio.create_task(a.channels.follow({"news": 0}, wake, 5000))
        await asyncio.sleep(0.2)
        assert not follow.done(), "follow returned before anything was published"
        ack = await b.channels.publish("news", {"n": 1}, event="hello")
        batches, wakes, deleted, new_wake = await asyncio.wait_for(follow, 3)
        assert time.monotonic() - started < 3, "follow did not return when the message came"
        assert wakes == [] and deleted == [] and new_wake == wake
        assert len(batches) == 1
        channel, messages = batches[0]
        assert channel == "news"
        assert messages == [ack.message]
        assert messages[0].id == "1" and messages[0].event == "hello"

    run(redis_url, body)


def test_follow_resumes_from_positions_in_order(redis_url):
    """Messages come in stream order, after each channel's position; passing the last id
    seen returns only what came later; channels without news are left out."""

    async def body(a: RedisStore, b: RedisStore) -> None:
        for i in range(5):
            await b.channels.publish("a", i)
        await b.channels.publish("b", "x")
        wake = await a.channels.wake_position()
        batches, _, _, wake = await a.channels.follow({"a": 0, "b": 1, "quiet": 0}, wake, 100)
        assert [(ch, [m.id for m in ms]) for ch, ms in batches] == [
            ("a", ["1", "2", "3", "4", "5"])
        ]
        assert [m.data for m in batches[0][1]] == [0, 1, 2, 3, 4]

        batches, _, _, wake = await a.channels.follow({"a": 3}, wake, 100)
        assert [m.id for m in batches[0][1]] == ["4", "5"]

        await b.channels.publish("a", 5)
        await b.channels.publish("a", 6)
        batches, _, _, wake = await a.channels.follow({"a": 5}, wake, 1000)
        assert [(m.id, m.data) for m in batches[0][1]] == [("6", 5), ("7", 6)]

    run(redis_url, body)


def test_follow_returns_at_most_1000_messages_per_channel_then_the_rest(redis_url):
    """A long backlog comes in batches of at most 1000, resumable from the last id."""

    async def body(a: RedisStore, b: RedisStore) -> None:
        await b.channels.set_retention("big", Retention(max_messages=2000, max_age=3600))
        for i in range(1200):
            await b.channels.publish("big", i)
        wake = await a.channels.wake_position()
        batches, _, _, wake = await a.channels.follow({"big": 0}, wake, 100)
        first = batches[0][1]
        assert len(first) == 1000 and first[-1].id == "1000"
        batches, _, _, wake = await a.channels.follow({"big": 1000}, wake, 100)
        assert [m.data for m in batches[0][1]] == list(range(1000, 1200))

    run(redis_url, body)


def test_a_wake_entry_comes_back_as_a_wakeup(redis_url):
    """An entry XADDed to the wake stream (fields type, run_at) is returned as a wakeup,
    with the new wake position; following from there does not return it again."""

    async def body(a: RedisStore, b: RedisStore) -> None:
        assert await a.channels.wake_position() == b"0-0"
        start = await a.channels.wake_position()
        follow = asyncio.create_task(a.channels.follow({}, start, 5000))
        await asyncio.sleep(0.1)
        entry_id = await b.core.client.xadd(
            b.core.key("wake"), {"type": "email", "run_at": "1700000000.5"}
        )
        batches, wakes, _, pos = await asyncio.wait_for(follow, 3)
        assert batches == []
        assert wakes == [("email", 1700000000.5)]
        assert pos == entry_id
        assert await a.channels.wake_position() == entry_id

        await b.core.client.xadd(b.core.key("wake"), {"type": "sms", "run_at": "1.0"})
        await b.channels.publish("c", "m")
        batches, wakes, _, pos2 = await a.channels.follow({"c": 0}, pos, 100)
        assert wakes == [("sms", 1.0)]
        assert pos2 > pos
        assert [m.data for _, ms in batches for m in ms] == ["m"]

    run(redis_url, body)


def test_an_empty_follow_returns_after_about_block_ms(redis_url):
    """With nothing new, follow waits block_ms and returns nothing, the position kept."""

    async def body(a: RedisStore, b: RedisStore) -> None:
        await b.channels.publish("c", 1)
        wake = await a.channels.wake_position()
        started = time.monotonic()
        batches, wakes, _, pos = await a.channels.follow({"c": 1, "none": 0}, wake, 300)
        elapsed = time.monotonic() - started
        assert (batches, wakes, pos) == ([], [], wake)
        assert 0.25 <= elapsed < 2.0, f"follow returned after {elapsed:.3f}s, not ~0.3s"

        started = time.monotonic()
        assert await a.channels.follow({}, wake, 200) == ([], [], [], wake)
        assert 0.15 <= time.monotonic() - started < 2.0

    run(redis_url, body)


def test_channel_marks_follow_publishes_and_deletion(redis_url):
    """channel_marks: last sequence 0 for an unknown channel, the newest id after
    publishes (whatever retention dropped), 0 again after the channel is deleted."""

    async def body(a: RedisStore, b: RedisStore) -> None:
        assert (await a.channels.channel_marks(["c"]))[0][0] == 0
        await b.channels.set_retention("c", Retention(max_messages=2, max_age=3600))
        assert (await a.channels.channel_marks(["c"]))[0][0] == 0
        for i in range(5):
            await b.channels.publish("c", i)
        assert (await a.channels.channel_marks(["c"]))[0][0] == 5
        assert await b.channels.delete("c")
        assert (await a.channels.channel_marks(["c"]))[0][0] == 0

    run(redis_url, body)


def test_idempotency_keys_do_not_survive_the_channel(redis_url):
    """A channel deleted and recreated does not answer the keys of its earlier life; a key
    whose message retention dropped still answers with the earlier id."""

    async def body(a: RedisStore, b: RedisStore) -> None:
        first = await a.channels.publish("c", "x", idempotency_key="k")
        assert (await b.channels.publish("c", "y", idempotency_key="k")).message == first.message
        assert await a.channels.delete("c")
        again = await b.channels.publish("c", "z", idempotency_key="k")
        assert not again.duplicate and again.message.data == "z"

        await a.channels.set_retention("c", Retention(max_messages=1, max_age=3600))
        await a.channels.publish("c", "later")
        dup = await b.channels.publish("c", "z2", idempotency_key="k")
        assert dup.duplicate and dup.message.id == "1" and dup.prev_id is None

    run(redis_url, body)


def test_a_closed_store_refuses_to_follow(redis_url):
    async def main() -> None:
        store = open_store(redis_url, DEFAULT)
        assert isinstance(store, RedisStore)
        await store.start()
        await store.close()
        with pytest.raises(StoreClosed):
            await store.channels.follow({"c": 0}, b"0-0", 100)
        with pytest.raises(StoreClosed):
            await store.channels.channel_marks(["c"])

    asyncio.run(main())


def test_a_lost_redis_is_a_store_error_saying_what_to_do(tmp_path: Path):
    """When Redis goes away, follow, channel_marks and publish raise StoreError (the relay's
    retry signal) naming the address."""
    proc = RedisProcess(tmp_path).start()

    async def main() -> None:
        store = open_store(f"redis://127.0.0.1:{proc.port}/0?prefix=x:", DEFAULT)
        assert isinstance(store, RedisStore)
        await store.start()
        try:
            proc.stop()
            for call in (
                store.channels.follow({"c": 0}, b"0-0", 100),
                store.channels.channel_marks(["c"]),
                store.channels.publish("c", 1),
            ):
                with pytest.raises(StoreError) as caught:
                    await call
                assert f"127.0.0.1:{proc.port}" in caught.value.message
                assert "check that it is running" in caught.value.message
        finally:
            await store.close()

    try:
        asyncio.run(main())
    finally:
        proc.stop()


def test_a_channel_deleted_on_one_node_is_announced_to_every_follower(redis_url):
    """delete() leaves a notice in the wake stream: a follow on another node returns the
    channel as deleted (its relay then drops its position: a new life starts at id 1)."""

    async def body(a: RedisStore, b: RedisStore) -> None:
        await b.channels.publish("doomed", 1)
        wake = await a.channels.wake_position()
        assert await b.channels.delete("doomed") is True
        batches, wakes, deleted, new_wake = await a.channels.follow({"doomed": 1}, wake, 500)
        assert deleted == ["doomed"]
        assert batches == [] and wakes == []
        assert new_wake != wake
        assert await b.channels.delete("doomed") is False  # nothing to delete: announced anyway
        _, _, again, _ = await a.channels.follow({}, new_wake, 100)
        assert again == ["doomed"]

    run(redis_url, body)


# -- the relay (tidings.server.relay) on top of follow ------------------------------------------


def test_the_relay_never_skips_messages_trimmed_before_it_read_them(redis_url):
    """B follows `g` from id 0; A publishes 20 into a retention of 5 before B's relay
    reads: the relay finds the hole and ends B's live view of `g` (its long polls are
    answered, to re-read and get the store's reset) instead of jumping to id 16."""
    from tidings.server.hub import Hub
    from tidings.server.relay import Relay

    async def body(a: RedisStore, b: RedisStore) -> None:
        hub = Hub(b.channels.cursor_key, remember=False)
        relay = Relay(b.channels, hub, lambda _t, _r: None)
        waiter = hub.waiter("g")  # B watches g (a parked long poll)
        await relay.watch("g")
        await a.channels.set_retention("g", Retention(5, 3600.0))
        for i in range(20):
            await a.channels.publish("g", i)
        relay.start()
        try:
            await asyncio.wait_for(waiter, 3)
            assert relay.resyncs == 1
            res = await b.channels.read("g", "0", 100)
            assert [m.id for m in res.messages] == [str(i) for i in range(16, 21)]
        finally:
            await relay.stop()

    run(redis_url, body)


def test_a_cancelled_watch_does_not_cancel_the_others_waiting_for_the_same_lookup(redis_url):
    """Two streams start on one channel while Redis is slow; the first one's client hangs
    up (its task is cancelled): the second still gets its watch, and so does last_id."""
    from tidings.server.channels import ChannelService
    from tidings.server.hub import Hub
    from tidings.server.relay import Relay

    async def body(a: RedisStore, _b: RedisStore) -> None:
        hub = Hub(a.channels.cursor_key, remember=False)
        relay = Relay(a.channels, hub, lambda _t, _r: None)
        svc = ChannelService(a, hub, 30.0)
        for call in (relay.watch, svc.last_id):
            await a.core.client.execute_command("CLIENT", "PAUSE", 300, "ALL")
            first = asyncio.create_task(call("slow"))
            await asyncio.sleep(0.05)
            second = asyncio.create_task(call("slow"))
            await asyncio.sleep(0.05)
            first.cancel()
            await asyncio.wait_for(asyncio.gather(second), 3)  # no CancelledError here
            assert first.cancelled()
            assert not second.cancelled()

    run(redis_url, body)


def test_the_relay_reads_wake_ups_only_while_a_lease_waits_and_loses_none(redis_url):
    """With no watched channel and no parked lease, B's relay reads nothing (A's queued
    jobs cost B no read each); once a lease parks (a kick), it reads from where it
    stopped: the wake-ups that came meanwhile arrive, none twice."""
    from tidings.server.hub import Hub
    from tidings.server.relay import Relay

    async def body(a: RedisStore, b: RedisStore) -> None:
        woken: list[tuple[str, float]] = []
        parked = False
        relay = Relay(
            b.channels,
            Hub(b.channels.cursor_key, remember=False),
            lambda t, r: woken.append((t, r)),
        )
        relay.wakes_wanted = lambda: parked
        follows = 0
        real_follow = b.channels.follow

        async def counting_follow(*args: Any) -> Any:
            nonlocal follows
            follows += 1
            return await real_follow(*args)

        b.channels.follow = counting_follow  # type: ignore[method-assign]
        relay.start()
        try:
            await asyncio.sleep(0.3)  # the relay starts, finds nothing to follow
            for n in range(3):
                await a.core.client.xadd(a.core.key("wake"), {"type": "t", "run_at": f"{n}.0"})
            await asyncio.sleep(0.3)
            assert (follows, woken) == (0, [])
            parked = True
            relay.kick()
            deadline = time.monotonic() + 3
            while len(woken) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert woken == [("t", 0.0), ("t", 1.0), ("t", 2.0)]
            await a.core.client.xadd(a.core.key("wake"), {"type": "t", "run_at": "3.0"})
            deadline = time.monotonic() + 3
            while len(woken) < 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert woken == [("t", 0.0), ("t", 1.0), ("t", 2.0), ("t", 3.0)]
        finally:
            await relay.stop()

    run(redis_url, body)
