"""What the parts of the SQLite store share: the connections, the writer thread with its
group commit, the schema, the translation of SQLite's errors, and the writer thread's
memory of channels (`ChannelLog`: both channels and jobs append to channels).

Writes go through one writer thread. Every write that arrives while a transaction is
committing waits in the queue; when the commit returns, the thread takes all of them into
the next single transaction (group commit), so N concurrent publishes cost one fsync, not
N. The thread takes its next batch itself, without a round trip through the event loop
(decision 0010); a write's future resolves only after its transaction has committed.

Reads use a second connection on a second thread; WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from tidings.protocol.errors import StoreClosed, StoreError
from tidings.protocol.messages import Message
from tidings.server.stores.base import Published, Retention
from tidings.server.stores.common import store_errors
from tidings.server.stores.lockfile import ServerLock

__all__ = ["SCHEMA", "ChannelLog", "SQLiteCore"]

T = TypeVar("T")

# Channel states the writer keeps in memory (each job has a channel: keep this bounded).
STATE_CACHE_MAX = 10_000

NOT_OPEN = "store is not open: call `await store.start()` first"

# Columns of `jobs` a file written by an older tidings lacks: added (NULL in every row)
# before JOB_INDEXES, which index them, is run.
JOB_COLUMNS = {"unique_key": "TEXT", "grp": "TEXT"}
# At most one waiting, queued or running job of a type holds each unique key; the queued
# and running jobs of each group (a job's `group`) are counted by their own index; the
# queued jobs of each type in lease order, with their group, are a range of
# `jobs_type_queued` (a lease of some types reads only theirs; one of a type with a
# group_concurrency passes over the full groups' jobs in the index alone: `status` in it
# makes it covering); each job type's limits are a row of `queue_limits` (a msgpack
# QueueLimits), the rate state of a rate-limited type (its GCRA tat) a row of
# `queue_rates`; `job_parents` has a row per parent of each job submitted `after` others,
# written with the job when the parent exists and deleted with the parent (what
# `dependents` reads); `job_settle` holds the settle marks (JobStore.settle_marks), only
# those not yet cleared: a few rows, read whole in stamp order without an index.
JOB_INDEXES = """
DROP INDEX IF EXISTS jobs_unique;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_unique_held ON jobs (type, unique_key)
    WHERE unique_key IS NOT NULL AND status IN ('waiting', 'queued', 'running');
CREATE TABLE IF NOT EXISTS job_parents (
    parent TEXT NOT NULL,
    child TEXT NOT NULL,
    PRIMARY KEY (parent, child)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS jobs_group ON jobs (type, grp, status)
    WHERE grp IS NOT NULL AND status IN ('queued', 'running');
CREATE INDEX IF NOT EXISTS jobs_type_queued
    ON jobs (type, priority DESC, run_at, id, grp, status)
    WHERE status = 'queued';
CREATE TABLE IF NOT EXISTS job_settle (
    job_id TEXT PRIMARY KEY,
    stamp REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_limits (
    type TEXT PRIMARY KEY,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS queue_rates (
    type TEXT PRIMARY KEY,
    tat REAL NOT NULL
) WITHOUT ROWID;
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS channels (
    name TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    created REAL NOT NULL,
    max_messages INTEGER,
    max_age REAL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    channel TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    event TEXT,
    data BLOB NOT NULL,
    PRIMARY KEY (channel, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    priority INTEGER NOT NULL,
    run_at REAL NOT NULL,
    lease_expires_at REAL,
    finished_at REAL,
    created_at REAL NOT NULL,
    idempotency_key TEXT,
    body BLOB NOT NULL,
    unique_key TEXT,
    grp TEXT
);
-- Partial indexes: a job is in the index of its state only, so a change touches the
-- pages of the indexes it leaves and enters.
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (lease_expires_at) WHERE status = 'running';
-- The listing, newest first, after a (created_at, id) cursor: one index range per filter
-- (none, status, type, both); the last also answers the counts per type and status
-- without reading a row. An update names `status` only when it changes and never names
-- `type` (which no transition changes), so a heartbeat leaves these alone.
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_status_created ON jobs (status, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_type_created ON jobs (type, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_type_status_created ON jobs (type, status, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_done ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idem ON jobs (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS idempotency (
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    time REAL NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (channel, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials (
    key TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    expires REAL,
    created REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS credentials_user ON credentials (user);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    next_run_at REAL NOT NULL,
    owner TEXT,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_run_at);
CREATE INDEX IF NOT EXISTS schedules_owner ON schedules (owner);
CREATE TABLE IF NOT EXISTS forward_leases (
    bridge TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forward_cursors (
    bridge TEXT NOT NULL,
    channel TEXT NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (bridge, channel)
) WITHOUT ROWID;
"""


def _advice(exc: BaseException) -> str:
    """What to do about a failed SQLite call, by its result code."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_FULL"):
        return "the disk holding the database is full: free space on it"
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM")):
        return (
            "the database cannot be written: check that its file, its directory and "
            "their filesystem are writable by the server"
        )
    if name.startswith("SQLITE_IOERR"):
        return "the disk holding the database failed to read or write: check it"
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return "another program holds the database locked: find it and let it finish"
    return "the request may be retried"


@dataclass
class _Op:
    """One write waiting for the next group commit (`durable`: it needs the fsync)."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    durable: bool = True


@dataclass
class _ChannelState:
    """What the writer thread remembers of a channel between transactions."""

    last_seq: int
    retention: Retention | None
    created: float
    dirty: bool = False


class ChannelLog:
    """The writer thread's memory of channels: their last sequence numbers and retention,
    loaded once and saved at each commit, and the append channels and jobs both use.

    Every method runs on the writer thread, inside the open transaction.
    """

    def __init__(self, default_retention: Retention) -> None:
        self.default_retention = default_retention
        # Cached channel states (bounded, oldest evicted once clean) and the names changed
        # in the open transaction.
        self._state: dict[str, _ChannelState] = {}
        self._dirty: set[str] = set()

    def channel(self, conn: sqlite3.Connection, name: str) -> _ChannelState:
        """A channel's cached state, loaded (or made, for a new channel) on first use."""
        st = self._state.get(name)
        if st is not None:
            return st
        row = conn.execute(
            "SELECT last_seq, created, max_messages, max_age FROM channels WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return self.new_channel(name, time.time())
        ret = Retention(row[2], row[3]) if row[2] is not None else None
        st = self._state[name] = _ChannelState(last_seq=row[0], retention=ret, created=row[1])
        return st

    def new_channel(self, name: str, now: float) -> _ChannelState:
        """Cache the state of a channel known not to exist yet (saved at the commit)."""
        st = self._state[name] = _ChannelState(last_seq=0, retention=None, created=now, dirty=True)
        self._dirty.add(name)
        return st

    def set_retention(self, conn: sqlite3.Connection, name: str, ret: Retention | None) -> None:
        """Give a channel (made if missing) its own retention, saved at the commit."""
        st = self.channel(conn, name)
        st.retention = ret
        st.dirty = True
        self._dirty.add(name)

    def keep(self, st: _ChannelState) -> int:
        """How many messages a channel retains."""
        return (st.retention or self.default_retention).max_messages

    def forget(self, name: str) -> None:
        """Drop a deleted channel's state."""
        self._state.pop(name, None)

    def append(
        self,
        conn: sqlite3.Connection,
        channel: str,
        data: Any,
        blob: bytes,
        event: str | None,
        now: float,
    ) -> Published:
        """Append one message (`data`, stored as `blob`) to a channel."""
        st = self.channel(conn, channel)
        prev = st.last_seq
        seq = prev + 1
        conn.execute(
            "INSERT INTO messages (channel, seq, time, event, data) VALUES (?, ?, ?, ?, ?)",
            (channel, seq, now, event, blob),
        )
        st.last_seq = seq
        st.dirty = True
        self._dirty.add(channel)
        msg = Message(id=str(seq), channel=channel, data=data, event=event, time=now)
        keep = (st.retention or self.default_retention).max_messages
        return Published(msg, str(prev) if prev else None, keep)

    def flush(self, conn: sqlite3.Connection) -> None:
        """Save the changed channel states and trim them to their retention by count."""
        for name in self._dirty:
            st = self._state.get(name)
            if st is None or not st.dirty:
                continue
            ret = st.retention
            conn.execute(
                "INSERT INTO channels (name, last_seq, created, max_messages, max_age)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " last_seq = excluded.last_seq, max_messages = excluded.max_messages,"
                " max_age = excluded.max_age",
                (
                    name,
                    st.last_seq,
                    st.created,
                    ret.max_messages if ret else None,
                    ret.max_age if ret else None,
                ),
            )
            keep = (ret or self.default_retention).max_messages
            if st.last_seq > keep:  # else there is nothing beyond the bound to trim
                conn.execute(
                    "DELETE FROM messages WHERE channel = ? AND seq <= ?",
                    (name, st.last_seq - keep),
                )
            st.dirty = False
        self._dirty.clear()
        # Every state is clean now: forget the least recently loaded beyond the bound.
        excess = len(self._state) - STATE_CACHE_MAX
        if excess > 0:
            for name in list(itertools.islice(self._state, excess)):
                del self._state[name]

    def clear(self) -> None:
        """Forget everything: a rolled-back transaction may have left uncommitted states."""
        self._state.clear()
        self._dirty.clear()


class SQLiteCore:
    """The connections, the writer thread and the life cycle of one SQLite file.

    Args:
        path: the database file (created when missing).
        default_retention: retention of channels without their own.
        synchronous: SQLite `synchronous` pragma (FULL, NORMAL, EXTRA or OFF).
    """

    def __init__(self, path: str, default_retention: Retention, synchronous: str) -> None:
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous={synchronous!r}: use FULL, NORMAL, EXTRA or OFF")
        self.path = path
        self.synchronous = synchronous.upper()
        self.log = ChannelLog(default_retention)
        # An in-memory database is private to its connection: nothing to share or lock.
        # The lock lies beside the real file, so a path through a symlink finds it too.
        in_memory = path in ("", ":memory:")
        self.server_lock = None if in_memory else ServerLock(f"{os.path.realpath(path)}.lock", path)
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._point: sqlite3.Connection | None = None  # point reads, on the event loop
        self._rexec = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-r")
        # Writes waiting for the writer thread, and the flag that wakes it.
        self._queue: deque[_Op] = deque()
        self._work = threading.Event()
        self._writer_thread: threading.Thread | None = None
        self.closing = False
        # Transactions committed, and the writes they held (group commit: writes >= commits).
        self.commits = 0
        self.writes = 0
        self._level = self.synchronous  # the writer connection's current synchronous
        # SQLite's errors as StoreError (StoreClosed for a closed connection).
        self.read_errors = store_errors(sqlite3.Error, self._read_error)

    # -- errors -------------------------------------------------------------------------

    def _read_error(self, exc: BaseException) -> StoreError:
        if isinstance(exc, sqlite3.ProgrammingError) and self.closing:
            return StoreClosed(NOT_OPEN)
        return StoreError(f"SQLite read of {self.path!r} failed ({exc}): {_advice(exc)}")

    def _write_error(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"SQLite write to {self.path!r} failed, nothing was written ({exc}): "
            f"{_advice(exc)}; reads still work"
        )

    # -- life cycle ---------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    async def open(self) -> None:
        """Connect, create the schema and start the writer thread."""
        loop = asyncio.get_running_loop()
        try:
            self._writer = await asyncio.to_thread(self._connect)
            await asyncio.to_thread(self._writer.executescript, SCHEMA)
            await asyncio.to_thread(self._upgrade, self._writer)
            self._reader = await loop.run_in_executor(self._rexec, self._connect)
            self._point = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store at {self.path!r}: {exc}") from exc
        self._writer_thread = threading.Thread(
            target=self._writer_loop, args=(loop,), name="tidings-sqlite-writer", daemon=True
        )
        self._writer_thread.start()

    @staticmethod
    def _upgrade(conn: sqlite3.Connection) -> None:
        """Add the job columns a file written by an older tidings lacks, then their indexes."""
        have = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        for name, kind in JOB_COLUMNS.items():
            if name not in have:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
        conn.executescript(JOB_INDEXES)

    async def close(self) -> None:
        """Commit what is queued, stop the writer thread and close every connection."""
        self.closing = True
        self._work.set()
        if self._writer_thread is not None:
            # It commits what was queued before it stops; the answers arrive as callbacks.
            await asyncio.to_thread(self._writer_thread.join)
        loop = asyncio.get_running_loop()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
        if self._reader is not None:
            await loop.run_in_executor(self._rexec, self._reader.close)
        if self._point is not None:
            self._point.close()
        self._rexec.shutdown(wait=True)

    # -- reads and writes ---------------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        """Run `fn` on the writer thread in the next group commit; its result once committed.

        `fn` that refuses (raises anything but a SQLite error) must do so before it
        writes: its error goes to its caller alone and the rest of the batch commits.
        """
        if self.closing or self._writer_thread is None:
            raise StoreClosed(NOT_OPEN)
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Op(fn, fut, durable))
        self._work.set()
        return await fut

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` on the reader thread's connection."""
        reader = self._reader
        if reader is None or self.closing:
            raise StoreClosed(NOT_OPEN)
        with self.read_errors:
            return await asyncio.get_running_loop().run_in_executor(self._rexec, fn, reader)

    def point(self) -> sqlite3.Connection:
        """The event loop's own connection, for primary-key lookups: a few microseconds of
        SQLite cost less than a hand-off to the reader thread (decision 0010)."""
        point = self._point
        if point is None or self.closing:
            raise StoreClosed(NOT_OPEN)
        return point

    # -- the writer thread --------------------------------------------------------------

    def _writer_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Writer thread: commit whatever is queued, batch after batch, until closed."""
        queue = self._queue
        while True:
            self._work.wait()
            self._work.clear()
            while queue:
                batch = []
                while queue:
                    batch.append(queue.popleft())
                try:
                    results: list[tuple[bool, Any]] | StoreError = self._apply(batch)
                except Exception as exc:  # the thread lives on: the next batch may work
                    results = self._write_error(exc)
                try:
                    loop.call_soon_threadsafe(self._settle, batch, results)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return
            if self.closing:
                return

    @staticmethod
    def _settle(batch: list[_Op], results: list[tuple[bool, Any]] | StoreError) -> None:
        """Event loop: answer a committed (or failed) batch's writers."""
        if isinstance(results, StoreError):
            for op in batch:
                if not op.future.done():
                    op.future.set_exception(results)
            return
        for op, (ok, value) in zip(batch, results, strict=True):
            if op.future.done():
                continue
            if ok:
                op.future.set_result(value)
            else:
                op.future.set_exception(value)

    def _apply(self, batch: list[_Op]) -> list[tuple[bool, Any]]:
        """Writer thread: run a batch of writes in one transaction.

        A SQLite error anywhere (a full disk, a read-only file) rolls the whole batch back
        and raises; an op's own refusal is returned to its caller alone.
        """
        conn = self._writer
        assert conn is not None  # noqa: S101 - set in open(), before the writer thread runs
        if conn.in_transaction:  # a failed commit whose rollback failed too
            conn.execute("ROLLBACK")
        # A batch of soft writes only (leases, heartbeats, expiries) commits without the
        # fsync; the next durable commit flushes the WAL, and them with it (decision 0004).
        level = self.synchronous if any(op.durable for op in batch) else "NORMAL"
        if level != self._level and self.synchronous in ("FULL", "EXTRA"):
            conn.execute(f"PRAGMA synchronous={level}")
            self._level = level
        conn.execute("BEGIN IMMEDIATE")
        results: list[tuple[bool, Any]] = []
        try:
            for op in batch:
                try:
                    results.append((True, op.fn(conn)))
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    results.append((False, exc))
            self.log.flush(conn)
            conn.execute("COMMIT")
            self.commits += 1
            self.writes += len(batch)
        except BaseException:
            self.log.clear()  # it may hold uncommitted sequence numbers
            if conn.in_transaction:
                # A failed rollback leaves the transaction to the next batch to roll back;
                # the first error says more.
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return results
