"""`sqlite:///path` — the embedded default: WAL, group commit, durable acknowledgements.

`core` holds the connections and the writer thread (see its docstring for the group
commit); `channels`, `jobs`, `auth`, `schedules` and `forwards` hold the SQL of one part
each. The workers seen
lately are kept in the server's process (`stores/local_workers.py`), not in the file: one
server process serves a file, so it sees every worker.
"""

from __future__ import annotations

from tidings.server.stores.base import Retention, Store
from tidings.server.stores.local_workers import LocalWorkers
from tidings.server.stores.lockfile import StoreLocked
from tidings.server.stores.sqlite.auth import SQLiteAuth
from tidings.server.stores.sqlite.channels import SQLiteChannels
from tidings.server.stores.sqlite.core import SQLiteCore
from tidings.server.stores.sqlite.forwards import SQLiteForwards
from tidings.server.stores.sqlite.jobs import SQLiteJobs
from tidings.server.stores.sqlite.schedules import SQLiteSchedules

__all__ = ["SQLiteStore", "StoreLocked"]


class SQLiteStore(Store):
    """Channels, jobs, users, credentials, schedules and forward cursors in one SQLite
    file.

    A server's store is `exclusive`: it holds `<path>.lock` (stores/lockfile.py) from
    `lock()` or `start()` until `close()`, because channel sequences and live subscribers
    live in one process; a second exclusive store on the file raises StoreLocked.

    Args:
        path: the database file (created when missing).
        default_retention: retention of channels without their own.
        synchronous: SQLite `synchronous` pragma: FULL (default) fsyncs the WAL at every
            commit, so an acknowledged publish survives power loss; NORMAL survives a
            process crash only.
        exclusive: take the server lock at `start()` (`open_store` takes it for servers;
            the users and tokens commands open the file without it).
    """

    forwards: SQLiteForwards

    def __init__(
        self,
        path: str,
        default_retention: Retention,
        synchronous: str = "FULL",
        exclusive: bool = False,
    ) -> None:
        self._core = core = SQLiteCore(path, default_retention, synchronous)
        self.path = path
        self.exclusive = exclusive
        self.channels = SQLiteChannels(core, core.log)
        self.jobs = SQLiteJobs(core, core.log)
        self.auth = SQLiteAuth(core)
        self.workers = LocalWorkers(self._check_open)
        self.schedules = SQLiteSchedules(core)
        self.forwards = SQLiteForwards(core)

    @property
    def synchronous(self) -> str:
        """The `synchronous` pragma of durable commits."""
        return self._core.synchronous

    @property
    def commits(self) -> int:
        """Transactions committed."""
        return self._core.commits

    def write_counters(self) -> tuple[int, int]:
        """Transactions and writes committed; several writes share a transaction (group
        commit), which the metrics show as two counters."""
        return self._core.commits, self._core.writes

    def lock(self) -> None:
        """Take the server lock now (StoreLocked names the holder); start() keeps it."""
        if self._core.server_lock is not None:
            self._core.server_lock.acquire()
        self.exclusive = True

    async def start(self) -> None:
        if self.exclusive:
            self.lock()
        try:
            await self._core.open()
            if self.exclusive:
                # This process alone serves the file: a forward lease found in it is one
                # a process that ended (a crash) left behind; taken again at once.
                await self.forwards.clear_leases()
        except BaseException:
            self._release()
            raise

    async def close(self) -> None:
        if self._core.closing:
            return
        try:
            await self._core.close()
        finally:
            # Last: another server may open the file only once nothing here writes to it.
            self._release()

    async def ping(self) -> None:
        await self._core.read(lambda c: c.execute("SELECT 1").fetchone())

    def _check_open(self) -> None:
        """StoreClosed unless the store is open."""
        self._core.point()

    def _release(self) -> None:
        if self._core.server_lock is not None:
            self._core.server_lock.release()
