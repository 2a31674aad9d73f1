"""The forward store contract (bridges' outbound side): every store gives a bridge's
lease to one holder at a time, lets only that holder move the bridge's cursors, and
bounds them, the same way.

Each test runs against the memory store, a real SQLite file and the session's private
redis-server. Leases expire on the store's clock: the tests that wait for an expiry give
the lease a fraction of a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tidings.protocol.errors import Conflict, StoreClosed
from tidings.server.stores.base import Store

pytestmark = pytest.mark.timeout(60)

Body = Callable[[Store], Coroutine[Any, Any, None]]


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


def test_one_holder_at_a_time_takes_a_lease_and_its_holder_renews_it(make_store):
    async def body(store: Store) -> None:
        f = store.forwards
        assert await f.hold_lease("b1", "node-a", 30) is True
        assert await f.hold_lease("b1", "node-b", 30) is False
        assert await f.hold_lease("b1", "node-a", 30) is True  # a renewal
        # Leases are per bridge.
        assert await f.hold_lease("b2", "node-b", 30) is True

    run(make_store, body)


def test_an_expired_lease_goes_to_the_next_node_that_asks(make_store):
    async def body(store: Store) -> None:
        f = store.forwards
        assert await f.hold_lease("b", "node-a", 0.3) is True
        assert await f.hold_lease("b", "node-b", 30) is False
        await asyncio.sleep(0.5)
        assert await f.hold_lease("b", "node-b", 30) is True
        assert await f.hold_lease("b", "node-a", 30) is False

    run(make_store, body)


def test_a_released_lease_is_free_at_once_and_only_its_holder_releases_it(make_store):
    async def body(store: Store) -> None:
        f = store.forwards
        assert await f.hold_lease("b", "node-a", 30) is True
        await f.release_lease("b", "node-b")  # not the holder: nothing happens
        assert await f.hold_lease("b", "node-b", 30) is False
        await f.release_lease("b", "node-a")
        assert await f.hold_lease("b", "node-b", 30) is True

    run(make_store, body)


def test_only_the_lease_holder_moves_a_cursor(make_store):
    async def body(store: Store) -> None:
        f = store.forwards
        # Nobody holds the lease: nothing is written.
        assert await f.set_cursor("b", "node-a", "orders", "3") is False
        assert await f.get_cursors("b") == {}
        assert await f.hold_lease("b", "node-a", 30) is True
        assert await f.set_cursor("b", "node-a", "orders", "3") is True
        assert await f.set_cursor("b", "node-a", "orders.eu", "17") is True
        assert await f.set_cursor("b", "node-b", "orders", "9") is False
        assert await f.set_cursor("b", "node-a", "orders", "4") is True
        assert await f.get_cursors("b") == {"orders": "4", "orders.eu": "17"}
        assert await f.get_cursors("other") == {}

    run(make_store, body)


def test_a_holder_whose_lease_expired_or_was_taken_cannot_move_a_cursor(make_store):
    async def body(store: Store) -> None:
        f = store.forwards
        assert await f.hold_lease("b", "node-a", 0.3) is True
        assert await f.set_cursor("b", "node-a", "c", "1") is True
        await asyncio.sleep(0.5)
        # Expired, not taken yet: still refused.
        assert await f.set_cursor("b", "node-a", "c", "2") is False
        assert await f.hold_lease("b", "node-b", 30) is True
        assert await f.set_cursor("b", "node-a", "c", "3") is False
        assert await f.set_cursor("b", "node-b", "c", "4") is True
        assert await f.get_cursors("b") == {"c": "4"}

    run(make_store, body)


# The stores whose data outlives the store object: a memory store is its own process's,
# so a second one (a restart, another node) never sees the first one's cursors or leases.
LASTING = pytest.mark.parametrize("make_store", ["sqlite", "redis"], indirect=True)


@LASTING
def test_cursors_are_seen_by_a_second_store_on_the_same_data(make_store):

    async def main() -> None:
        first = make_store()
        await first.start()
        try:
            assert await first.forwards.hold_lease("b", "node-a", 30) is True
            assert await first.forwards.set_cursor("b", "node-a", "c", "12") is True
        finally:
            await first.close()
        second = make_store()  # a restart, or another node of a shared store
        await second.start()
        try:
            assert await second.forwards.get_cursors("b") == {"c": "12"}
        finally:
            await second.close()

    asyncio.run(main())


@LASTING
def test_a_server_store_of_its_own_frees_the_leases_a_dead_process_left(make_store):
    """A server's SQLite file is its alone (the lock): a lease found when it starts was
    left by a process that died, and is free at once. A shared store (Redis) keeps it
    until it expires: the holder may be another node, alive."""

    async def main() -> None:
        first = make_store()
        await first.start()
        try:
            assert await first.forwards.hold_lease("b", "dead-node", 60) is True
        finally:
            await first.close()
        second = make_store()
        await second.start()
        try:
            taken = await second.forwards.hold_lease("b", "new-node", 60)
            assert taken is (make_store.kind == "sqlite")
        finally:
            await second.close()

    asyncio.run(main())


def test_dropped_cursors_are_forgotten_some_or_all(make_store):
    async def body(store: Store) -> None:
        f = store.forwards
        assert await f.hold_lease("b", "h", 30) is True
        for channel in ("a", "b", "c"):
            assert await f.set_cursor("b", "h", channel, "1") is True
        await f.drop_cursors("b", ["a", "missing"])
        assert await f.get_cursors("b") == {"b": "1", "c": "1"}
        await f.drop_cursors("b", [])
        assert await f.get_cursors("b") == {"b": "1", "c": "1"}
        await f.drop_cursors("b")
        assert await f.get_cursors("b") == {}

    run(make_store, body)


def test_a_bridge_keeps_at_most_cap_cursors_but_moves_the_ones_it_has(make_store):
    async def body(store: Store) -> None:
        f = store.forwards
        f.cap = 3
        assert await f.hold_lease("b", "h", 30) is True
        for channel in ("a", "b", "c"):
            assert await f.set_cursor("b", "h", channel, "1") is True
        with pytest.raises(Conflict, match="forwards 3 channels"):
            await f.set_cursor("b", "h", "d", "1")
        assert await f.set_cursor("b", "h", "a", "2") is True
        # Another bridge has its own cap.
        assert await f.hold_lease("other", "h", 30) is True
        assert await f.set_cursor("other", "h", "d", "1") is True
        assert await f.get_cursors("b") == {"a": "2", "b": "1", "c": "1"}

    run(make_store, body)


def test_a_store_not_started_refuses(make_store):
    async def main() -> None:
        store = make_store()
        with pytest.raises(StoreClosed):
            await store.forwards.get_cursors("b")

    asyncio.run(main())
