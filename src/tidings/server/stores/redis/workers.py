"""The workers seen lately, in the Redis store: every node sharing the Redis lists them.

    {p}workers       sorted set: worker ids by when each was last seen
    {p}workerfirst   sorted set: worker ids by when each was first seen
    {p}workerinfo    hash: worker id -> msgpack description (name, types, concurrency, user)

A record is one script call (lua/worker_record.lua): it refuses a word older than the one
stored (last_seen never moves back), keeps the first `first_seen` (ZADD NX), and forgets
the workers last seen more than WORKER_WINDOW before it and, past MAX_WORKERS, the least
recently seen — so the three keys stay bounded without a sweep. A listing is one script
call too (lua/worker_list.lua), so it reads the three keys at one point in time.
"""

from __future__ import annotations

import msgspec
from redis.commands.core import AsyncScript

from tidings.server.constants import MAX_WORKERS, WORKER_WINDOW
from tidings.server.stores.base import WorkerSeen, WorkerStore
from tidings.server.stores.common import encode_msgpack
from tidings.server.stores.redis.core import RedisCore, lua

__all__ = ["RedisWorkers"]

_RECORD = lua("worker_record.lua")
_LIST = lua("worker_list.lua")


class _Description(msgspec.Struct, array_like=True, frozen=True):
    """What `{p}workerinfo` holds of a worker: all but its times."""

    name: str
    types: list[str] | None
    concurrency: int | None
    user: str | None


_decode_description = msgspec.msgpack.Decoder(_Description).decode


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisWorkers(WorkerStore):
    """Every WorkerStore method on two sorted sets and a hash.

    Args:
        core: the store's connections and key names.
        cap: the most workers kept.
    """

    _record: AsyncScript
    _list: AsyncScript

    def __init__(self, core: RedisCore, cap: int = MAX_WORKERS) -> None:
        self._core = core
        self._errors = core.errors
        self.cap = cap
        self._keys = [core.key("workers"), core.key("workerfirst"), core.key("workerinfo")]

    def register_scripts(self) -> None:
        """Register this part's Lua scripts (once the core is open)."""
        self._record = self._core.script(_RECORD)
        self._list = self._core.script(_LIST)

    async def record_worker(self, worker: WorkerSeen) -> None:
        description = _Description(worker.name, worker.types, worker.concurrency, worker.user)
        args: list[str | bytes | int] = [
            worker.id,
            repr(worker.first_seen),
            repr(worker.last_seen),
            encode_msgpack(description),
            repr(worker.last_seen - WORKER_WINDOW),
            self.cap,
            worker.user or "",
        ]
        client = self._core.client  # StoreClosed before start
        with self._errors:
            await self._record(keys=self._keys, args=args, client=client)

    async def list_workers(self, since: float) -> list[WorkerSeen]:
        client = self._core.client  # StoreClosed before start
        with self._errors:
            reply = await self._list(keys=self._keys, args=[repr(since)], client=client)
        out: list[WorkerSeen] = []
        for i in range(0, len(reply), 4):
            worker_id, last, first, body = reply[i : i + 4]
            if body is None:  # its description was removed by hand: nothing to list
                continue
            d = _decode_description(body)
            last_seen = float(last)
            out.append(
                WorkerSeen(
                    id=_text(worker_id),
                    name=d.name,
                    types=d.types,
                    concurrency=d.concurrency,
                    user=d.user,
                    first_seen=last_seen if first is None else float(first),
                    last_seen=last_seen,
                )
            )
        return out
