"""The request pool: at most `max_connections` connections to Redis, without redis-py's
BlockingConnectionPool costs.

redis-py's BlockingConnectionPool bounds a node's connections by making a request wait
for a free one — what a burst of thousands of concurrent requests needs. But it pays on
every command, waiting or not: an asyncio.Condition, an `asyncio.timeout` (a timer), an
async context manager per checkout and a notify per release — one of the largest parts
of a Redis-backed request's CPU (docs/decisions/0015). This pool is redis-py's plain
ConnectionPool (which fails past its limit instead of waiting) behind a semaphore of the
same size: a checkout while connections are free is one uncontended semaphore step; only
a checkout that must wait sets a timer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import ConnectionPool
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["BoundedPool"]


class BoundedPool(ConnectionPool):
    """A ConnectionPool whose checkouts wait (up to `timeout` seconds) for one of its
    `max_connections` connections instead of failing with "Too many connections"."""

    def __init__(self, *, max_connections: int, timeout: float, **kwargs: Any) -> None:
        super().__init__(max_connections=max_connections, **kwargs)
        self.timeout = timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._lent: set[Any] = set()  # connections checked out through a slot

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        if self._slots.locked():
            try:
                async with asyncio.timeout(self.timeout):
                    await self._slots.acquire()
            except TimeoutError:
                raise RedisConnectionError("No connection available.") from None
        else:
            await self._slots.acquire()
        try:
            # A failed checkout releases its connection itself (not yet in _lent): its slot
            # is given back here.
            connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException:
            self._slots.release()
            raise
        self._lent.add(connection)
        return connection

    async def release(self, connection: Any) -> None:
        try:
            await super().release(connection)
        finally:
            if connection in self._lent:
                self._lent.discard(connection)
                self._slots.release()
