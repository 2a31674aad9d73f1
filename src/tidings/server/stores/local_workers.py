"""The workers seen lately, kept in this process: the WorkerStore of the memory and SQLite
stores.

A memory or SQLite store is served by one server process (a SQLite file is locked by its
server), so every lease request and heartbeat reaches this process: its registry is the
whole truth, and nothing is written to disk on the lease path. A restart forgets the
workers; they are listed again at their next lease request or heartbeat.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from msgspec.structs import replace

from tidings.server.constants import MAX_WORKERS, WORKER_WINDOW
from tidings.server.stores.base import WorkerSeen, WorkerStore

__all__ = ["LocalWorkers"]


class LocalWorkers(WorkerStore):
    """Workers by id, in the order they were last recorded (the least recently seen at
    the front): at most `cap` of them, none last seen more than WORKER_WINDOW seconds
    before the latest record. Bounding costs O(1) amortised per record.

    Args:
        check: called before every operation; raises when the store is not open.
        cap: the most workers kept.
    """

    def __init__(self, check: Callable[[], None], cap: int = MAX_WORKERS) -> None:
        self._check = check
        self.cap = cap
        self._seen: OrderedDict[str, WorkerSeen] = OrderedDict()

    async def record_worker(self, worker: WorkerSeen) -> None:
        self._check()
        seen = self._seen
        known = seen.get(worker.id)
        if known is not None:
            if worker.last_seen < known.last_seen:
                return  # an older word: the record stays as the newer one left it
            if known.last_seen >= worker.last_seen - WORKER_WINDOW:  # a refresh
                if worker.user != known.user:
                    return  # another user's id, still in use: it is not theirs to take
                worker = replace(worker, first_seen=known.first_seen)
        seen[worker.id] = worker
        seen.move_to_end(worker.id)
        while len(seen) > self.cap:
            seen.popitem(last=False)
        gone = worker.last_seen - WORKER_WINDOW
        while seen and next(iter(seen.values())).last_seen < gone:
            seen.popitem(last=False)

    async def list_workers(self, since: float) -> list[WorkerSeen]:
        self._check()
        listed = [w for w in self._seen.values() if w.last_seen >= since]
        listed.sort(key=lambda w: w.last_seen, reverse=True)
        return listed
