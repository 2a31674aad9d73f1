"""Schedules in the Redis store: every node sharing the Redis sees and fires them.

    {p}sched        hash: schedule name -> msgpack body
    {p}scheddue     sorted set: names by next_run_at (which are due, and the earliest)
    {p}schednames   sorted set: names, all scores 0 (the listing, by name)
    {p}schedowner   hash: schedule name -> owner (those that have one: an owner's count)

A put is one script call (lua/schedule_put.lua), and so is an advance
(lua/schedule_advance.lua): each writes only when the stored body's SHA-1 is that of the
body the caller read (a put of a new name: only when there is none), so of two requests
putting one name, or several nodes firing one slot, exactly one writes. A put refuses a
new schedule past the cap, and one new to its owner past the owner's cap (counting the
owner hash's values: at most MAX_SCHEDULES, at a put). A delete is one MULTI/EXEC.
"""

from __future__ import annotations

import hashlib

from redis.commands.core import AsyncScript

from tidings.protocol.schedules import Schedule
from tidings.server.constants import MAX_SCHEDULES
from tidings.server.stores.base import ScheduleStore
from tidings.server.stores.common import (
    decode_schedule,
    encode_schedule,
    owner_schedules_full,
    schedules_full,
)
from tidings.server.stores.redis.core import RedisCore, lua

__all__ = ["RedisSchedules"]

_PUT = lua("schedule_put.lua")
_ADVANCE = lua("schedule_advance.lua")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _digest(schedule: Schedule) -> str:
    """The SHA-1 (hex) of a schedule's stored body: what the scripts compare."""
    return hashlib.sha1(encode_schedule(schedule), usedforsecurity=False).hexdigest()


class RedisSchedules(ScheduleStore):
    """Every ScheduleStore method on a hash and two sorted sets.

    Args:
        core: the store's connections and key names.
        cap: the most schedules kept.
    """

    _put: AsyncScript
    _advance: AsyncScript

    def __init__(self, core: RedisCore, cap: int = MAX_SCHEDULES) -> None:
        self._core = core
        self._errors = core.errors
        self.cap = cap
        self._bodies = core.key("sched")
        self._due = core.key("scheddue")
        self._names = core.key("schednames")
        self._owners = core.key("schedowner")

    def register_scripts(self) -> None:
        """Register this part's Lua scripts (once the core is open)."""
        self._put = self._core.script(_PUT)
        self._advance = self._core.script(_ADVANCE)

    async def _bodies_of(self, names: list[bytes | str]) -> list[Schedule]:
        """The schedules of `names` in order, leaving out any deleted meanwhile."""
        if not names:
            return []
        bodies = await self._core.client.hmget(self._bodies, names)
        return [decode_schedule(b) for b in bodies if b is not None]

    async def put_schedule(
        self, schedule: Schedule, read: Schedule | None, owner_cap: int | None = None
    ) -> bool:
        client = self._core.client  # StoreClosed before start
        keys = [self._bodies, self._due, self._names, self._owners]
        args: list[str | bytes | int] = [
            schedule.name,
            encode_schedule(schedule),
            repr(schedule.next_run_at),
            self.cap,
            "" if read is None else _digest(read),
            schedule.owner or "",
            "" if owner_cap is None else owner_cap,
        ]
        with self._errors:
            reply = await self._put(keys=keys, args=args, client=client)
        if reply == -1:
            raise schedules_full(self.cap)
        if reply == -2:
            raise owner_schedules_full(schedule.owner or "", owner_cap or 0)
        return bool(reply == 1)

    async def get_schedule(self, name: str) -> Schedule | None:
        client = self._core.client
        with self._errors:
            body = await client.hget(self._bodies, name)
        return None if body is None else decode_schedule(body)

    async def list_schedules(self, after: str = "", limit: int = 1000) -> list[Schedule]:
        if limit <= 0:
            return []
        client = self._core.client
        low = f"({after}" if after else "-"
        with self._errors:
            names = await client.zrangebylex(self._names, low, "+", start=0, num=limit)
            return await self._bodies_of(names)

    async def delete_schedule(self, name: str) -> bool:
        client = self._core.client
        with self._errors:
            async with client.pipeline(transaction=True) as pipe:
                pipe.hdel(self._bodies, name)
                pipe.zrem(self._due, name)
                pipe.zrem(self._names, name)
                pipe.hdel(self._owners, name)
                removed, _, _, _ = await pipe.execute()
        return bool(removed)

    async def due_schedules(self, now: float, limit: int) -> list[Schedule]:
        if limit <= 0:
            return []
        client = self._core.client
        with self._errors:
            names = await client.zrangebyscore(self._due, "-inf", repr(now), start=0, num=limit)
            return await self._bodies_of(names)

    async def next_schedule_at(self) -> float | None:
        client = self._core.client
        with self._errors:
            first = await client.zrange(self._due, 0, 0, withscores=True)
        return float(first[0][1]) if first else None

    async def advance_schedule(self, read: Schedule, new: Schedule) -> bool:
        client = self._core.client
        args: list[str | bytes] = [
            read.name,
            _digest(read),
            encode_schedule(new),
            repr(new.next_run_at),
        ]
        with self._errors:
            reply = await self._advance(keys=[self._bodies, self._due], args=args, client=client)
        return bool(reply == 1)
