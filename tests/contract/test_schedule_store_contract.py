"""The schedule store contract: every store keeps schedules, finds the due ones and
advances each slot once, the same way.

Each test runs against the memory store, a real SQLite file and the session's private
redis-server. Times are given by the test (a store never reads the clock for them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from msgspec.structs import replace

from tidings.protocol.errors import Conflict, StoreClosed
from tidings.protocol.schedules import Schedule
from tidings.server.stores.base import Store

pytestmark = pytest.mark.timeout(60)

Body = Callable[[Store], Coroutine[Any, Any, None]]
T0 = 1_700_000_000.0


def run(make_store: Callable[[], Store], body: Body) -> None:
    """Start a store, run `body`, close it."""

    async def main() -> None:
        store = make_store()
        await store.start()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def sched(name: str, next_run_at: float = T0, **fields: Any) -> Schedule:
    base: dict[str, Any] = {
        "type": "report",
        "payload": {"n": 1},
        "every": 60,
        "created_at": T0 - 100,
        "updated_at": T0 - 100,
    }
    return Schedule(name=name, next_run_at=next_run_at, **{**base, **fields})


def test_a_put_schedule_is_read_back_as_it_was_put_and_a_second_put_replaces_it(make_store):
    async def body(store: Store) -> None:
        s = sched("nightly", cron="0 3 * * *", every=None, timezone="Europe/Paris", priority=5)
        assert await store.schedules.put_schedule(s, None) is True
        assert await store.schedules.get_schedule("nightly") == s
        s2 = replace(s, payload=[1, 2], next_run_at=T0 + 5)
        assert await store.schedules.put_schedule(s2, s) is True
        assert await store.schedules.get_schedule("nightly") == s2
        assert await store.schedules.get_schedule("other") is None

    run(make_store, body)


def test_schedules_are_listed_by_name_in_pages_after_a_name(make_store):
    async def body(store: Store) -> None:
        for name in ["c", "a:b", "b.x", "a"]:
            await store.schedules.put_schedule(sched(name), None)
        listed = await store.schedules.list_schedules()
        assert [s.name for s in listed] == ["a", "a:b", "b.x", "c"]
        page = await store.schedules.list_schedules(after="a:b", limit=1)
        assert [s.name for s in page] == ["b.x"]
        assert await store.schedules.list_schedules(after="c") == []
        assert await store.schedules.list_schedules(limit=0) == []

    run(make_store, body)


def test_a_deleted_schedule_is_gone_from_reads_listings_and_the_due_ones(make_store):
    async def body(store: Store) -> None:
        await store.schedules.put_schedule(sched("a"), None)
        assert await store.schedules.delete_schedule("a") is True
        assert await store.schedules.delete_schedule("a") is False
        assert await store.schedules.get_schedule("a") is None
        assert await store.schedules.list_schedules() == []
        assert await store.schedules.due_schedules(T0 + 1000, 10) == []
        assert await store.schedules.next_schedule_at() is None

    run(make_store, body)


def test_the_due_schedules_are_those_whose_slot_has_come_earliest_first(make_store):
    async def body(store: Store) -> None:
        await store.schedules.put_schedule(sched("late", T0 + 30), None)
        await store.schedules.put_schedule(sched("early", T0 + 10), None)
        await store.schedules.put_schedule(sched("future", T0 + 100), None)
        assert await store.schedules.next_schedule_at() == T0 + 10
        due = await store.schedules.due_schedules(T0 + 30, 10)
        assert [s.name for s in due] == ["early", "late"]
        assert [s.name for s in await store.schedules.due_schedules(T0 + 30, 1)] == ["early"]
        assert await store.schedules.due_schedules(T0 + 9.5, 10) == []

    run(make_store, body)


def test_an_advance_applies_only_to_the_schedule_as_it_was_read(make_store):
    async def body(store: Store) -> None:
        read = sched("a", T0)
        await store.schedules.put_schedule(read, None)
        fired = replace(read, next_run_at=T0 + 60, last_run_at=T0, last_job_id="sched:a:x")
        assert await store.schedules.advance_schedule(read, fired) is True
        # A second node that read the same slot finds it advanced: it changes nothing.
        again = replace(read, next_run_at=T0 + 60, last_run_at=T0, last_job_id="other")
        assert await store.schedules.advance_schedule(read, again) is False
        assert await store.schedules.get_schedule("a") == fired
        assert await store.schedules.next_schedule_at() == T0 + 60
        assert await store.schedules.due_schedules(T0 + 59, 10) == []

    run(make_store, body)


def test_an_advance_of_a_schedule_replaced_or_deleted_since_it_was_read_changes_nothing(
    make_store,
):
    async def body(store: Store) -> None:
        read = sched("a", T0)
        await store.schedules.put_schedule(read, None)
        replaced = replace(read, every=5, updated_at=T0 + 1, next_run_at=T0 + 6)
        assert await store.schedules.put_schedule(replaced, read)
        assert not await store.schedules.advance_schedule(read, replace(read, next_run_at=T0 + 60))
        assert await store.schedules.get_schedule("a") == replaced
        await store.schedules.delete_schedule("a")
        assert not await store.schedules.advance_schedule(
            replaced, replace(replaced, next_run_at=T0 + 11)
        )
        assert await store.schedules.get_schedule("a") is None

    run(make_store, body)


def test_a_schedule_put_with_whole_number_times_is_advanced_as_read_back(make_store):
    async def body(store: Store) -> None:
        put = sched("a", int(T0))  # type: ignore[arg-type]
        await store.schedules.put_schedule(put, None)
        [read] = await store.schedules.due_schedules(T0, 10)
        assert await store.schedules.advance_schedule(read, replace(read, next_run_at=T0 + 60))
        assert await store.schedules.next_schedule_at() == T0 + 60

    run(make_store, body)


def test_of_several_advances_of_one_slot_at_once_exactly_one_wins(make_store):
    """As nodes firing one slot do: each read the schedule, each tries to advance it."""

    async def body(store: Store) -> None:
        read = sched("a", T0)
        await store.schedules.put_schedule(read, None)
        news = [replace(read, next_run_at=T0 + 60, last_job_id=f"n{i}") for i in range(3)]
        wins = await asyncio.gather(*(store.schedules.advance_schedule(read, n) for n in news))
        assert sorted(wins) == [False, False, True]
        stored = await store.schedules.get_schedule("a")
        assert stored == news[wins.index(True)]

    run(make_store, body)


def test_a_new_schedule_past_the_cap_is_refused_and_a_replacement_is_not(make_store):
    async def body(store: Store) -> None:
        store.schedules.cap = 2
        await store.schedules.put_schedule(sched("a"), None)
        await store.schedules.put_schedule(sched("b"), None)
        with pytest.raises(Conflict, match="2 schedules"):
            await store.schedules.put_schedule(sched("c"), None)
        assert await store.schedules.get_schedule("c") is None
        assert await store.schedules.put_schedule(sched("a", T0 + 1), sched("a")) is True
        await store.schedules.delete_schedule("b")
        assert await store.schedules.put_schedule(sched("c"), None) is True

    run(make_store, body)


def test_a_put_writes_only_over_the_schedule_as_it_was_read(make_store):
    async def body(store: Store) -> None:
        first = sched("a", owner="ann")
        assert await store.schedules.put_schedule(first, None) is True
        # A create of a name taken since it was read as absent writes nothing.
        assert await store.schedules.put_schedule(sched("a", owner="bob"), None) is False
        # A replacement of a schedule changed since it was read writes nothing.
        moved = replace(first, next_run_at=T0 + 60, last_run_at=T0)
        assert await store.schedules.advance_schedule(first, moved)
        assert await store.schedules.put_schedule(replace(first, owner="bob"), first) is False
        assert await store.schedules.get_schedule("a") == moved
        # Nor of one deleted since.
        await store.schedules.delete_schedule("a")
        assert await store.schedules.put_schedule(replace(moved, priority=1), moved) is False
        assert await store.schedules.get_schedule("a") is None

    run(make_store, body)


def test_of_several_creates_of_one_name_at_once_exactly_one_writes(make_store):
    """As two PUTs of a new name that both read it as absent."""

    async def body(store: Store) -> None:
        puts = [sched("a", owner=f"user{i}") for i in range(3)]
        wins = await asyncio.gather(*(store.schedules.put_schedule(p, None) for p in puts))
        assert sorted(wins) == [False, False, True]
        assert await store.schedules.get_schedule("a") == puts[wins.index(True)]

    run(make_store, body)


def test_a_schedule_new_to_an_owner_past_the_owners_cap_is_refused(make_store):
    async def body(store: Store) -> None:
        put = store.schedules.put_schedule
        for name in ("a1", "a2"):
            assert await put(sched(name, owner="ann"), None, 2) is True
        with pytest.raises(Conflict, match="ann has 2 schedules"):
            await put(sched("a3", owner="ann"), None, 2)
        assert await store.schedules.get_schedule("a3") is None
        # Taking over another owner's schedule counts as a new one to ann.
        assert await put(sched("b1", owner="bob"), None, 2) is True
        with pytest.raises(Conflict, match="ann has 2"):
            await put(sched("b1", owner="ann"), sched("b1", owner="bob"), 2)
        # Replacing one of hers does not; other owners, no cap, or no owner are not held.
        assert await put(sched("a1", T0 + 5, owner="ann"), sched("a1", owner="ann"), 2)
        assert await put(sched("b2", owner="bob"), None, 2) is True
        assert await put(sched("a3", owner="ann"), None) is True
        assert await put(sched("n1"), None, 2) is True
        assert await put(sched("n2"), None, 2) is True
        assert await put(sched("n3"), None, 2) is True
        # Deleted ones free their places.
        await store.schedules.delete_schedule("a3")
        await store.schedules.delete_schedule("a2")
        assert await put(sched("a4", owner="ann"), None, 2) is True

    run(make_store, body)


def test_a_closed_store_refuses_schedules(make_store):
    async def body(store: Store) -> None:
        await store.close()
        with pytest.raises(StoreClosed):
            await store.schedules.get_schedule("a")

    run(make_store, body)
