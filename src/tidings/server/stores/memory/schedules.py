"""The memory store's schedules: a dictionary by name."""

from __future__ import annotations

from collections.abc import Callable

from tidings.protocol.schedules import Schedule
from tidings.server.constants import MAX_SCHEDULES
from tidings.server.stores.base import ScheduleStore
from tidings.server.stores.common import owner_schedules_full, schedules_full

__all__ = ["MemorySchedules"]


class MemorySchedules(ScheduleStore):
    """Every ScheduleStore method on one dictionary; the due ones are found by a scan
    (at most `cap` schedules, looked at about once a second).

    Args:
        check: called before every operation; raises when the store is not open.
        cap: the most schedules kept.
    """

    def __init__(self, check: Callable[[], None], cap: int = MAX_SCHEDULES) -> None:
        self._check = check
        self.cap = cap
        self._by_name: dict[str, Schedule] = {}

    async def put_schedule(
        self, schedule: Schedule, read: Schedule | None, owner_cap: int | None = None
    ) -> bool:
        self._check()
        stored = self._by_name.get(schedule.name)
        if stored != read:
            return False
        if stored is None and len(self._by_name) >= self.cap:
            raise schedules_full(self.cap)
        owner = schedule.owner
        if (
            owner_cap is not None
            and owner is not None
            and (stored is None or stored.owner != owner)
            and sum(s.owner == owner for s in self._by_name.values()) >= owner_cap
        ):
            raise owner_schedules_full(owner, owner_cap)
        self._by_name[schedule.name] = schedule
        return True

    async def get_schedule(self, name: str) -> Schedule | None:
        self._check()
        return self._by_name.get(name)

    async def list_schedules(self, after: str = "", limit: int = 1000) -> list[Schedule]:
        self._check()
        names = sorted(n for n in self._by_name if n > after)[: max(limit, 0)]
        return [self._by_name[n] for n in names]

    async def delete_schedule(self, name: str) -> bool:
        self._check()
        return self._by_name.pop(name, None) is not None

    async def due_schedules(self, now: float, limit: int) -> list[Schedule]:
        self._check()
        due = [s for s in self._by_name.values() if s.next_run_at <= now]
        due.sort(key=lambda s: (s.next_run_at, s.name))
        return due[: max(limit, 0)]

    async def next_schedule_at(self) -> float | None:
        self._check()
        return min((s.next_run_at for s in self._by_name.values()), default=None)

    async def advance_schedule(self, read: Schedule, new: Schedule) -> bool:
        self._check()
        if self._by_name.get(read.name) != read:
            return False
        self._by_name[read.name] = new
        return True
