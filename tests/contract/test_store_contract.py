"""The channel contract: every store behaves the same — memory, SQLite (a real file) and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tidings.protocol.errors import InvalidCursor, StoreClosed
from tidings.server.stores import open_store
from tidings.server.stores.base import Retention, Store

pytestmark = pytest.mark.timeout(30)

DEFAULT = Retention(max_messages=100, max_age=3600.0)


def run(
    make_store: Callable[..., Store],
    body: Callable[[Store], Coroutine[Any, Any, None]],
    retention: Retention = DEFAULT,
) -> None:
    async def main() -> None:
        store = make_store(retention)
        await store.start()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def test_ids_increase_and_reads_resume(make_store):
    """Ids start at 1 and increase; after=ID returns what follows, in order, up to limit."""

    async def body(store: Store) -> None:
        acks = [
            await store.channels.publish("c", f"m{i}", "e" if i == 1 else None) for i in range(5)
        ]
        assert [a.message.id for a in acks] == ["1", "2", "3", "4", "5"]
        assert acks[0].prev_id is None
        assert acks[1].prev_id == "1"
        res = await store.channels.read("c", "0", 100)
        assert [m.data for m in res.messages] == ["m0", "m1", "m2", "m3", "m4"]
        assert res.messages[1].event == "e"
        assert not res.reset
        res = await store.channels.read("c", "2", 2)
        assert [m.id for m in res.messages] == ["3", "4"]
        res = await store.channels.read("c", "5", 10)
        assert res.messages == []
        assert not res.reset
        assert res.last_id == "5"

    run(make_store, body)


def test_json_values_round_trip(make_store):
    """Text stays text and JSON values keep their types."""
    values = ["text", "123", 123, 1.5, None, True, [1, "a"], {"k": {"n": [None]}}]

    async def body(store: Store) -> None:
        for v in values:
            await store.channels.publish("types", v)
        res = await store.channels.read("types", "0", 100)
        assert [m.data for m in res.messages] == values

    run(make_store, body)


def test_channels_are_independent(make_store):
    async def body(store: Store) -> None:
        await store.channels.publish("a", 1)
        await store.channels.publish("b", 2)
        await store.channels.publish("a", 3)
        assert [m.data for m in (await store.channels.read("a", "0", 10)).messages] == [1, 3]
        assert [m.id for m in (await store.channels.read("b", "0", 10)).messages] == ["1"]

    run(make_store, body)


def test_idempotency_key_returns_the_first_message(make_store):
    async def body(store: Store) -> None:
        first = await store.channels.publish("c", "x", idempotency_key="k1")
        again = await store.channels.publish("c", "y", idempotency_key="k1")
        other = await store.channels.publish("d", "z", idempotency_key="k1")
        assert again.duplicate and not first.duplicate
        assert again.message.id == first.message.id
        assert again.message.data == "x"
        assert not other.duplicate
        assert len((await store.channels.read("c", "0", 10)).messages) == 1

    run(make_store, body)


def test_retention_by_count_and_reset(make_store):
    """A cursor older than the retained history gets a reset and the oldest retained on."""

    async def body(store: Store) -> None:
        for i in range(5):
            await store.channels.publish("c", i)
        res = await store.channels.read("c", "0", 10)
        assert [m.id for m in res.messages] == ["3", "4", "5"]
        assert not res.reset, "after=0 asks for the oldest retained: not a gap"
        res = await store.channels.read("c", "1", 10)
        assert res.reset
        assert [m.id for m in res.messages] == ["3", "4", "5"]
        assert res.first_id == "3"
        res = await store.channels.read("c", "2", 10)
        assert not res.reset, "2 is right before the oldest retained: nothing missed"
        assert [m.id for m in res.messages] == ["3", "4", "5"]

    run(make_store, body, Retention(max_messages=3, max_age=3600))


def test_cursor_past_the_end_is_a_reset(make_store):
    """A cursor from another life of the channel (deleted, recreated) is a gap too."""

    async def body(store: Store) -> None:
        for i in range(3):
            await store.channels.publish("c", i)
        assert await store.channels.delete("c")
        assert not await store.channels.delete("c")
        res = await store.channels.read("c", "3", 10)
        assert res.reset
        assert res.messages == []
        await store.channels.publish("c", "new")
        res = await store.channels.read("c", "3", 10)
        assert res.reset
        assert [m.data for m in res.messages] == ["new"]

    run(make_store, body)


def test_retention_by_age(make_store):
    async def body(store: Store) -> None:
        await store.channels.publish("old", 1)
        await store.channels.publish("old", 2)
        last = (await store.channels.publish("old", 3)).message
        trimmed = await store.channels.sweep(last.time + 61)
        assert trimmed == ["old"]
        res = await store.channels.read("old", "3", 10)
        assert not res.reset and res.messages == []
        res = await store.channels.read("old", "1", 10)
        assert res.reset and res.messages == []
        info = await store.channels.info("old")
        assert info is not None and info.messages == 0 and info.last_id == "3"
        assert (await store.channels.publish("old", 4)).message.id == "4"

    run(make_store, body, Retention(max_messages=100, max_age=60))


def test_per_channel_retention(make_store):
    async def body(store: Store) -> None:
        info = await store.channels.set_retention("small", Retention(max_messages=2, max_age=10))
        assert info.custom_retention
        for i in range(4):
            await store.channels.publish("small", i)
            await store.channels.publish("big", i)
        assert [m.data for m in (await store.channels.read("small", "0", 10)).messages] == [2, 3]
        assert len((await store.channels.read("big", "0", 10)).messages) == 4
        info = await store.channels.set_retention("small", None)
        assert not info.custom_retention
        assert info.retention == DEFAULT

    run(make_store, body)


def test_info_and_listing(make_store):
    async def body(store: Store) -> None:
        assert await store.channels.info("none") is None
        for name in ["news.a", "news.b", "other"]:
            await store.channels.publish(name, "x")
        await store.channels.publish("news.a", "y")
        info = await store.channels.info("news.a")
        assert info is not None
        assert (info.first_id, info.last_id, info.messages) == ("1", "2", 2)
        names = [i.name for i in await store.channels.list_channels("news.")]
        assert names == ["news.a", "news.b"]
        assert len(await store.channels.list_channels()) == 3

    run(make_store, body)


def test_listing_pages_by_name_after_the_last_name_of_the_page_before(make_store):
    """`after` continues a listing: with a prefix, every channel comes once, in name order,
    whatever the page size; names outside the prefix never come."""

    async def body(store: Store) -> None:
        inside = [f"p.{i:03d}" for i in range(23)] + ["p.", "p.~", "p.a:b", "p.a-b"]
        outside = ["p", "o.zz", "p-", "p/", "q", "p0"]
        await asyncio.gather(*(store.channels.publish(n, n) for n in inside + outside))
        for limit in (1, 4, 27, 100):
            seen: list[str] = []
            after = ""
            while True:
                page = await store.channels.list_channels("p.", limit, after)
                assert len(page) <= limit
                seen += [i.name for i in page]
                if len(page) < limit:
                    break
                after = page[-1].name
            assert seen == sorted(inside), limit
        everything = sorted(inside + outside)
        assert [i.name for i in await store.channels.list_channels("", 100)] == everything
        # `after` is any name, listed or not, inside the prefix or before it.
        names = [i.name for i in await store.channels.list_channels("p.", 3, "p.0105")]
        assert names == ["p.011", "p.012", "p.013"]
        names = [i.name for i in await store.channels.list_channels("p.", 2, "o")]
        assert names == ["p.", "p.000"]
        assert await store.channels.list_channels("p.", 5, "p.~") == []
        assert await store.channels.list_channels("p.", 5, "q") == []
        names = [i.name for i in await store.channels.list_channels("", 3, "p.~")]
        assert names == ["p/", "p0", "q"]
        page = await store.channels.list_channels("p.0", 1, "p.021")
        assert [(i.name, i.messages, i.last_id) for i in page] == [("p.022", 1, "1")]

    run(make_store, body)


def test_info_counts_exactly_the_retained_messages(make_store):
    """What info and the listing say a channel holds agrees with what a read returns,
    after retention by count and by age took some."""

    async def body(store: Store) -> None:
        first = (await store.channels.publish("by-age", 1)).message
        await asyncio.sleep(0.02)
        second = (await store.channels.publish("by-age", 2)).message
        assert second.time > first.time
        for i in range(5):
            await store.channels.publish("by-count", i)
        await store.channels.sweep((first.time + second.time) / 2 + 60)
        for name, first_id, count in [("by-count", "3", 3), ("by-age", "2", 1)]:
            info = await store.channels.info(name)
            assert info is not None
            assert (info.first_id, info.messages) == (first_id, count)
            assert len((await store.channels.read(name, "0", 10)).messages) == count
            assert await store.channels.list_channels(name, 1) == [info]

    run(make_store, body, Retention(max_messages=3, max_age=60))


def test_concurrent_publishes_get_distinct_contiguous_ids(make_store):
    async def body(store: Store) -> None:
        acks = await asyncio.gather(*(store.channels.publish("c", i) for i in range(200)))
        ids = sorted(int(a.message.id) for a in acks)
        assert ids == list(range(1, 201))
        res = await store.channels.read("c", "0", 1000)
        assert [m.id for m in res.messages] == [str(i) for i in range(1, 201)]

    run(make_store, body, Retention(max_messages=1000, max_age=3600))


def test_malformed_cursor_is_refused(make_store):
    async def body(store: Store) -> None:
        for bad in ["abc", "-1", "1.5", "", "9" * 30]:
            with pytest.raises(InvalidCursor):
                await store.channels.read("c", bad, 10)

    run(make_store, body)


def test_a_closed_store_says_so(make_store):
    async def main() -> None:
        store = make_store()
        await store.start()
        await store.close()
        with pytest.raises(StoreClosed):
            await store.channels.publish("c", 1)

    asyncio.run(main())


def test_sqlite_history_survives_reopen_and_ids_continue(tmp_path):
    url = f"sqlite:///{tmp_path / 'reopen.db'}"

    async def main() -> None:
        store = open_store(url, DEFAULT)
        await store.start()
        for i in range(3):
            await store.channels.publish("c", i, idempotency_key=f"k{i}")
        await store.close()
        store = open_store(url, DEFAULT)
        await store.start()
        assert (await store.channels.publish("c", 3)).message.id == "4"
        again = await store.channels.publish("c", "dup", idempotency_key="k1")
        assert again.duplicate and again.message.id == "2"
        res = await store.channels.read("c", "0", 10)
        assert [m.data for m in res.messages] == [0, 1, 2, 3]
        await store.close()

    asyncio.run(main())


def test_sqlite_group_commit_shares_transactions(tmp_path):
    """Concurrent publishes are committed together: far fewer commits than publishes."""
    from tidings.server.stores.sqlite import SQLiteStore

    async def main() -> None:
        store = open_store(f"sqlite:///{tmp_path / 'group.db'}", DEFAULT)
        assert isinstance(store, SQLiteStore)
        await store.start()
        before = store.commits
        await asyncio.gather(*(store.channels.publish(f"c{i % 4}", i) for i in range(200)))
        commits = store.commits - before
        await store.close()
        assert 1 <= commits < 50, f"{commits} commits for 200 concurrent publishes"

    asyncio.run(main())
