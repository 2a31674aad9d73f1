"""`memory://` — volatile channels, jobs, principals, workers, schedules and forward
cursors in this process, for tests and throwaway runs; the same semantics as the SQLite
store, no durability."""

from __future__ import annotations

from tidings.server.stores.base import Retention, Store
from tidings.server.stores.local_workers import LocalWorkers
from tidings.server.stores.memory.auth import MemoryAuth
from tidings.server.stores.memory.channels import MemoryChannels
from tidings.server.stores.memory.core import MemoryCore
from tidings.server.stores.memory.forwards import MemoryForwards
from tidings.server.stores.memory.jobs import MemoryJobs
from tidings.server.stores.memory.schedules import MemorySchedules

__all__ = ["MemoryStore"]


class MemoryStore(Store):
    """Channels, jobs, users, credentials, the workers seen lately and schedules in
    dictionaries."""

    def __init__(self, default_retention: Retention) -> None:
        self._core = core = MemoryCore(default_retention)
        self.channels = MemoryChannels(core, core.log)
        self.jobs = MemoryJobs(core, core.log)
        self.auth = MemoryAuth(core)
        self.workers = LocalWorkers(core.check)
        self.schedules = MemorySchedules(core.check)
        self.forwards = MemoryForwards(core.check)

    async def start(self) -> None:
        self._core.open = True

    async def close(self) -> None:
        self._core.open = False
