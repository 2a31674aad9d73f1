"""The worker store contract: every store keeps the workers seen lately the same way.

Each test runs against the memory store, a real SQLite file and the session's private
redis-server. Times are given by the test (a store never reads the clock for them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tidings.protocol.errors import StoreClosed
from tidings.server.constants import MAX_WORKERS, WORKER_WINDOW
from tidings.server.stores import open_store
from tidings.server.stores.base import Retention, Store, WorkerSeen

pytestmark = pytest.mark.timeout(60)

Body = Callable[[Store], Coroutine[Any, Any, None]]
T0 = 1_700_000_000.0
DEFAULT = Retention(max_messages=100, max_age=3600.0)


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


def seen(
    worker_id: str,
    at: float,
    *,
    first: float | None = None,
    name: str = "host:1",
    types: list[str] | None = None,
    concurrency: int | None = 4,
    user: str | None = None,
) -> WorkerSeen:
    return WorkerSeen(
        id=worker_id,
        name=name,
        types=types,
        concurrency=concurrency,
        user=user,
        first_seen=at if first is None else first,
        last_seen=at,
    )


def test_a_recorded_worker_is_listed_as_it_was_described(make_store):
    async def body(store: Store) -> None:
        w = seen("w1", T0, name="box:42", types=["resize", "mail"], concurrency=8, user="ops")
        await store.workers.record_worker(w)
        assert await store.workers.list_workers(T0 - 1) == [w]

    run(make_store, body)


def test_a_refresh_keeps_first_seen_and_takes_the_new_description(make_store):
    async def body(store: Store) -> None:
        await store.workers.record_worker(seen("w1", T0, types=["a"], user="bob"))
        later = seen("w1", T0 + 5, name="box:7", types=["a", "b"], concurrency=None, user="bob")
        await store.workers.record_worker(later)
        [w] = await store.workers.list_workers(T0 - 1)
        assert w.first_seen == T0
        assert w.last_seen == T0 + 5
        assert (w.name, w.types, w.concurrency, w.user) == ("box:7", ["a", "b"], None, "bob")

    run(make_store, body)


def test_another_users_record_of_an_id_in_use_is_ignored_until_the_id_is_forgotten(make_store):
    """Worker ids are no secret (jobs show them): a record by another principal (or by
    anonymous) does not take over an id seen within the window."""

    async def body(store: Store) -> None:
        await store.workers.record_worker(seen("w1", T0, types=["a"], user="alice"))
        for user in ("carol", None):
            await store.workers.record_worker(seen("w1", T0 + 5, types=["b"], user=user))
            [w] = await store.workers.list_workers(T0 - 1)
            assert (w.user, w.types, w.last_seen) == ("alice", ["a"], T0)
        # Once alice's record is older than the window, the id is free again.
        late = T0 + WORKER_WINDOW + 1
        await store.workers.record_worker(seen("w1", late, types=["b"], user="carol"))
        [w] = await store.workers.list_workers(T0 - 1)
        assert (w.user, w.types, w.first_seen, w.last_seen) == ("carol", ["b"], late, late)

    run(make_store, body)


def test_last_seen_never_moves_back(make_store):
    async def body(store: Store) -> None:
        await store.workers.record_worker(seen("w1", T0 + 10, name="new"))
        # An older word (a slow node's) arrives after a newer one: the newer one stays.
        await store.workers.record_worker(seen("w1", T0 + 2, name="old"))
        [w] = await store.workers.list_workers(T0 - 1)
        assert (w.last_seen, w.name) == (T0 + 10, "new")

    run(make_store, body)


def test_the_list_holds_workers_seen_since_the_given_time_most_recent_first(make_store):
    async def body(store: Store) -> None:
        for worker_id, at in (("a", T0), ("b", T0 + 30), ("c", T0 + 10)):
            await store.workers.record_worker(seen(worker_id, at))
        listed = await store.workers.list_workers(T0)
        assert [w.id for w in listed] == ["b", "c", "a"]
        # `since` is inclusive: a worker seen exactly then is listed.
        assert [w.id for w in await store.workers.list_workers(T0 + 10)] == ["b", "c"]
        assert [w.id for w in await store.workers.list_workers(T0 + 31)] == []

    run(make_store, body)


def test_a_worker_silent_for_longer_than_the_window_is_forgotten(make_store):
    async def body(store: Store) -> None:
        await store.workers.record_worker(seen("quiet", T0))
        await store.workers.record_worker(seen("busy", T0 + WORKER_WINDOW + 1))
        assert [w.id for w in await store.workers.list_workers(0.0)] == ["busy"]

    run(make_store, body)


def test_the_store_keeps_at_most_max_workers_forgetting_the_least_recently_seen(make_store):
    async def body(store: Store) -> None:
        # Within the window of each other: only the bound makes a store forget one.
        step = WORKER_WINDOW / (2 * (MAX_WORKERS + 1))
        workers = [seen(f"w{n}", T0 + n * step) for n in range(MAX_WORKERS + 1)]
        for start in range(0, len(workers), 500):
            await asyncio.gather(*(store.workers.record_worker(w) for w in workers[start:][:500]))
        listed = await store.workers.list_workers(0.0)
        assert len(listed) == MAX_WORKERS
        assert listed[0].id == f"w{MAX_WORKERS}"
        assert "w0" not in {w.id for w in listed}

    run(make_store, body)


def test_a_worker_store_refuses_to_work_before_start(make_store):
    async def main() -> None:
        store = make_store()
        with pytest.raises(StoreClosed):
            await store.workers.record_worker(seen("w1", T0))
        with pytest.raises(StoreClosed):
            await store.workers.list_workers(0.0)

    asyncio.run(main())


def test_on_a_shared_redis_every_node_lists_the_workers_another_recorded(redis_url):
    """Redis only: memory and SQLite are served by one process, whose registry is all
    there is; nodes sharing a Redis share its worker list."""

    async def main() -> None:
        one, two = open_store(redis_url, DEFAULT), open_store(redis_url, DEFAULT)
        await one.start()
        await two.start()
        try:
            await one.workers.record_worker(seen("w1", T0, user="ops"))
            await two.workers.record_worker(seen("w1", T0 + 3, user="ops"))
            for store in (one, two):
                [w] = await store.workers.list_workers(T0 - 1)
                assert (w.first_seen, w.last_seen) == (T0, T0 + 3)
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())
