"""BoundedPool against the session's private redis-server: a burst waits for one of its
connections instead of failing, a checkout that must wait gives up after its timeout, and
every checkout — failed ones too — gives its slot back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import RedisProcess, free_port
from tidings.server.stores.redis.pool import BoundedPool

pytestmark = pytest.mark.timeout(30)


def run(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(body())


def pool(url: str, size: int, timeout: float = 5.0) -> BoundedPool:
    return BoundedPool.from_url(url, max_connections=size, timeout=timeout, socket_timeout=None)


def test_a_burst_larger_than_the_pool_waits_for_its_connections(redis_proc: RedisProcess) -> None:
    async def body() -> None:
        bounded = pool(redis_proc.url, 3)
        client = aioredis.Redis.from_pool(bounded)
        try:
            await client.set("pool:k", b"v")
            got = await asyncio.gather(*[client.get("pool:k") for _ in range(300)])
            assert got == [b"v"] * 300
            assert len(bounded._available_connections) + len(bounded._in_use_connections) <= 3
            assert bounded._slots._value == 3 and not bounded._lent  # every slot is back
        finally:
            await client.aclose()

    run(body)


def test_a_checkout_that_must_wait_gives_up_after_the_timeout(redis_proc: RedisProcess) -> None:
    async def body() -> None:
        bounded = pool(redis_proc.url, 2, timeout=0.3)
        held = [await bounded.get_connection(), await bounded.get_connection()]
        try:
            started = time.monotonic()
            with pytest.raises(RedisConnectionError, match="No connection available"):
                await bounded.get_connection()
            assert 0.25 < time.monotonic() - started < 2.0
            await bounded.release(held.pop())  # a slot frees: the next checkout gets it at once
            held.append(await bounded.get_connection())
        finally:
            for connection in held:
                await bounded.release(connection)
            assert bounded._slots._value == 2
            await bounded.aclose()

    run(body)


def test_a_waiting_checkout_gets_the_connection_released_meanwhile(
    redis_proc: RedisProcess,
) -> None:
    async def body() -> None:
        bounded = pool(redis_proc.url, 1)
        first = await bounded.get_connection()
        waiting = asyncio.ensure_future(bounded.get_connection())
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await bounded.release(first)
        second = await asyncio.wait_for(waiting, 2)
        assert second is first  # the one connection, handed on
        await bounded.release(second)
        assert bounded._slots._value == 1
        await bounded.aclose()

    run(body)


def test_failed_checkouts_give_their_slots_back() -> None:
    async def body() -> None:
        bounded = pool(f"redis://127.0.0.1:{free_port()}/0", 1, timeout=0.5)  # nothing listens
        for _ in range(3):  # with the slot lost, the 2nd try would wait and time out
            with pytest.raises(RedisConnectionError) as caught:
                await bounded.get_connection()
            assert "No connection available" not in str(caught.value)
        assert bounded._slots._value == 1 and not bounded._lent
        await bounded.aclose()

    run(body)
