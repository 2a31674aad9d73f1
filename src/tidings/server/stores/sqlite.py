"""`sqlite:///path` — the embedded default: WAL, group commit, durable acknowledgements.

Writes go through one writer thread. Every write that arrives while a transaction is
committing waits in the queue; when the commit returns, the thread takes all of them into
the next single transaction (group commit), so N concurrent publishes cost one fsync, not
N. The thread takes its next batch itself, without a round trip through the event loop
(decision 0010); a write's future resolves only after its transaction has committed.

Reads use a second connection on a second thread; WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
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

import msgspec

from tidings.protocol.errors import NotFound, StoreClosed, StoreError, TidingsError
from tidings.protocol.jobs import Job, job_channel
from tidings.protocol.messages import Message
from tidings.server.constants import IDEMPOTENCY_TTL
from tidings.server.principals import Credential, User
from tidings.server.stores.base import (
    AuthStore,
    ChannelInfo,
    ChannelStore,
    JobChange,
    JobStep,
    JobStore,
    Published,
    ReadResult,
    Retention,
    Store,
    Transition,
    apply_steps,
    is_reset,
    job_event_data,
)
from tidings.server.stores.common import parse_seq
from tidings.server.stores.lockfile import ServerLock, StoreLocked

__all__ = ["SQLiteStore", "StoreLocked"]

T = TypeVar("T")

# Channel states the writer keeps in memory (each job has a channel: keep this bounded).
STATE_CACHE_MAX = 10_000

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
    body BLOB NOT NULL
);
-- Partial indexes: a job is in the index of its state only, so a change touches the
-- pages of the indexes it leaves and enters (the indexes these replace held every job).
DROP INDEX IF EXISTS jobs_ready;
DROP INDEX IF EXISTS jobs_lease;
DROP INDEX IF EXISTS jobs_finished;
CREATE INDEX IF NOT EXISTS jobs_queued ON jobs (priority DESC, run_at, id)
    WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created_at, id);
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
"""

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_encode_job = msgspec.msgpack.Encoder().encode
_decode_job = msgspec.msgpack.Decoder(Job).decode
_encode_struct = msgspec.msgpack.Encoder().encode
_decode_user = msgspec.msgpack.Decoder(User).decode
_decode_credential = msgspec.msgpack.Decoder(Credential).decode


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


class SQLiteStore(Store, ChannelStore, JobStore, AuthStore):
    """Channels, jobs, users and credentials in one SQLite file.

    Users and credentials are never cached: `tidings users` and `tidings tokens` write
    them from another process into the same file while a server has it open.

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

    def __init__(
        self,
        path: str,
        default_retention: Retention,
        synchronous: str = "FULL",
        exclusive: bool = False,
    ) -> None:
        super().__init__(default_retention)
        self.channels = self.jobs = self.auth = self  # one object holds all three parts
        if synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError(f"synchronous={synchronous!r}: use FULL, NORMAL, EXTRA or OFF")
        self.path = path
        self.synchronous = synchronous.upper()
        self.exclusive = exclusive
        # An in-memory database is private to its connection: nothing to share or lock.
        # The lock lies beside the real file, so a path through a symlink finds it too.
        in_memory = path in ("", ":memory:")
        self._lock = None if in_memory else ServerLock(f"{os.path.realpath(path)}.lock", path)
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._point: sqlite3.Connection | None = None  # point reads, on the event loop
        self._rexec = ThreadPoolExecutor(1, thread_name_prefix="tidings-sqlite-r")
        # Writes waiting for the writer thread, and the flag that wakes it.
        self._queue: deque[_Op] = deque()
        self._work = threading.Event()
        self._writer_thread: threading.Thread | None = None
        self._closing = False
        # Owned by the writer thread only: cached channel states (bounded, oldest evicted
        # once clean) and the names changed in the open transaction.
        self._state: dict[str, _ChannelState] = {}
        self._dirty: set[str] = set()
        # Transactions committed, and the writes they held (group commit: writes >= commits).
        self.commits = 0
        self.writes = 0
        self._level = self.synchronous  # the writer connection's current synchronous

    # -- life cycle -------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def lock(self) -> None:
        """Take the server lock now (StoreLocked names the holder); start() keeps it."""
        if self._lock is not None:
            self._lock.acquire()
        self.exclusive = True

    async def start(self) -> None:
        if self.exclusive:
            self.lock()
        try:
            await self._open()
        except BaseException:
            if self._lock is not None:
                self._lock.release()
            raise

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._writer = await asyncio.to_thread(self._connect)
            await asyncio.to_thread(self._writer.executescript, SCHEMA)
            self._reader = await loop.run_in_executor(self._rexec, self._connect)
            self._point = self._connect()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store at {self.path!r}: {exc}") from exc
        self._writer_thread = threading.Thread(
            target=self._writer_loop, args=(loop,), name="tidings-sqlite-writer", daemon=True
        )
        self._writer_thread.start()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            await self._close_connections()
        finally:
            # Last: another server may open the file only once nothing here writes to it.
            if self._lock is not None:
                self._lock.release()

    async def _close_connections(self) -> None:
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

    def cursor_key(self, message_id: str) -> int:
        return parse_seq(message_id)

    async def ping(self) -> None:
        await self._read(lambda c: c.execute("SELECT 1").fetchone())

    # -- plumbing ---------------------------------------------------------------------

    async def _write(self, fn: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        if self._closing or self._writer_thread is None:
            raise StoreClosed("store is not open: call `await store.start()` first")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Op(fn, fut, durable))
        self._work.set()
        return await fut

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        reader = self._reader
        if reader is None or self._closing:
            raise StoreClosed("store is not open: call `await store.start()` first")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._rexec, fn, reader)
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}") from exc

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
                except Exception as exc:  # the thread must live on: the next batch may work
                    results = StoreError(f"SQLite write failed, nothing was written: {exc}")
                try:
                    loop.call_soon_threadsafe(self._settle, batch, results)
                except RuntimeError:  # the loop is closed: nobody is waiting any more
                    return
            if self._closing:
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

        An op that refuses (raises a non-SQLite error) must do so before it writes: its
        error is returned to its caller alone and the rest of the batch still commits.
        """
        conn = self._writer
        assert conn is not None  # noqa: S101 - set in start(), before the writer task runs
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
            self._flush_channels(conn)
            conn.execute("COMMIT")
            self.commits += 1
            self.writes += len(batch)
        except BaseException:
            conn.execute("ROLLBACK")
            self._state.clear()  # the cache may hold uncommitted sequence numbers
            self._dirty.clear()
            raise
        return results

    # -- writer-thread helpers --------------------------------------------------------

    def _channel(self, conn: sqlite3.Connection, name: str) -> _ChannelState:
        """A channel's cached state, loaded (or made, for a new channel) on first use."""
        st = self._state.get(name)
        if st is not None:
            return st
        row = conn.execute(
            "SELECT last_seq, created, max_messages, max_age FROM channels WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            return self._new_channel(name, time.time())
        ret = Retention(row[2], row[3]) if row[2] is not None else None
        st = self._state[name] = _ChannelState(last_seq=row[0], retention=ret, created=row[1])
        return st

    def _new_channel(self, name: str, now: float) -> _ChannelState:
        """Cache the state of a channel known not to exist yet (saved at the commit)."""
        st = self._state[name] = _ChannelState(last_seq=0, retention=None, created=now, dirty=True)
        self._dirty.add(name)
        return st

    def _flush_channels(self, conn: sqlite3.Connection) -> None:
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

    # -- channel operations -----------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> Published:
        blob = _encode(data)

        def op(conn: sqlite3.Connection) -> Published:
            now = time.time()
            row = None
            if idempotency_key is not None:
                row = conn.execute(
                    "SELECT i.seq, i.time, m.data, m.event FROM idempotency i"
                    " LEFT JOIN messages m ON m.channel = i.channel AND m.seq = i.seq"
                    " WHERE i.channel = ? AND i.key = ? AND i.expires > ?",
                    (channel, idempotency_key, now),
                ).fetchone()
            st = self._channel(conn, channel)
            keep = (st.retention or self.default_retention).max_messages
            if idempotency_key is not None and row is not None:
                seq, ts, old_blob, old_event = row
                first = Message(
                    id=str(seq),
                    channel=channel,
                    data=_decode(old_blob) if old_blob is not None else data,
                    event=old_event if old_blob is not None else event,
                    time=ts,
                )
                return Published(first, str(seq - 1) if seq > 1 else None, keep, duplicate=True)
            published = self._append(conn, channel, data, blob, event, now)
            if idempotency_key is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency (channel, key, seq, time, expires)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (channel, idempotency_key, st.last_seq, now, now + IDEMPOTENCY_TTL),
                )
            return published

        return await self._write(op)

    def _append(
        self,
        conn: sqlite3.Connection,
        channel: str,
        data: Any,
        blob: bytes,
        event: str | None,
        now: float,
    ) -> Published:
        """Writer thread: append one message to a channel inside the open transaction."""
        st = self._channel(conn, channel)
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

    async def read(self, channel: str, after: str, limit: int) -> ReadResult:
        after_seq = parse_seq(after)

        def op(conn: sqlite3.Connection) -> ReadResult:
            conn.execute("BEGIN")
            try:
                row = conn.execute(
                    "SELECT last_seq FROM channels WHERE name = ?", (channel,)
                ).fetchone()
                if row is None:
                    return ReadResult([], reset=after_seq != 0, first_id=None, last_id=None)
                last = row[0]
                low = conn.execute(
                    "SELECT min(seq) FROM messages WHERE channel = ?", (channel,)
                ).fetchone()[0]
                first = low if low is not None else last + 1
                reset = is_reset(after_seq, first, last)
                rows = conn.execute(
                    "SELECT seq, time, event, data FROM messages"
                    " WHERE channel = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (channel, 0 if reset else after_seq, limit),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            msgs = [
                Message(id=str(s), channel=channel, data=_decode(d), event=e, time=t)
                for s, t, e, d in rows
            ]
            return ReadResult(
                msgs,
                reset=reset,
                first_id=str(low) if low is not None else None,
                last_id=str(last) if last else None,
            )

        return await self._read(op)

    def _info_rows(
        self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]
    ) -> list[ChannelInfo]:
        rows = conn.execute(
            "SELECT c.name, c.last_seq, c.created, c.max_messages, c.max_age,"
            " (SELECT min(seq) FROM messages m WHERE m.channel = c.name),"
            " (SELECT count(*) FROM messages m WHERE m.channel = c.name)"
            f" FROM channels c {where}",
            args,
        ).fetchall()
        out = []
        for name, last, created, max_messages, max_age, low, count in rows:
            custom = max_messages is not None
            out.append(
                ChannelInfo(
                    name=name,
                    first_id=str(low) if low is not None else None,
                    last_id=str(last) if last else None,
                    messages=count,
                    created=created,
                    retention=Retention(max_messages, max_age)
                    if custom
                    else self.default_retention,
                    custom_retention=custom,
                )
            )
        return out

    async def info(self, channel: str) -> ChannelInfo | None:
        rows = await self._read(lambda c: self._info_rows(c, "WHERE c.name = ?", (channel,)))
        return rows[0] if rows else None

    async def list_channels(self, prefix: str = "", limit: int = 1000) -> list[ChannelInfo]:
        # Range scan on the primary key: names >= prefix and < prefix + U+10FFFF.
        return await self._read(
            lambda c: self._info_rows(
                c,
                "WHERE c.name >= ? AND c.name < ? ORDER BY c.name LIMIT ?",
                (prefix, prefix + "\U0010ffff", limit),
            )
        )

    async def delete(self, channel: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            self._state.pop(channel, None)
            cur = conn.execute("DELETE FROM channels WHERE name = ?", (channel,))
            conn.execute("DELETE FROM messages WHERE channel = ?", (channel,))
            conn.execute("DELETE FROM idempotency WHERE channel = ?", (channel,))
            return cur.rowcount > 0

        return await self._write(op)

    async def set_retention(self, channel: str, retention: Retention | None) -> ChannelInfo:
        def op(conn: sqlite3.Connection) -> None:
            st = self._channel(conn, channel)
            st.retention = retention
            st.dirty = True
            self._dirty.add(channel)

        await self._write(op)
        info = await self.info(channel)
        assert info is not None  # noqa: S101 - the write above created it
        return info

    async def sweep(self, now: float) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            trimmed = []
            rows = conn.execute(
                "SELECT c.name, coalesce(c.max_age, ?),"
                " (SELECT time FROM messages m WHERE m.channel = c.name ORDER BY seq LIMIT 1)"
                " FROM channels c WHERE c.name < 'job.' OR c.name >= 'job/'",  # not job.*
                (self.default_retention.max_age,),
            ).fetchall()
            for name, max_age, oldest in rows:
                if oldest is not None and oldest < now - max_age:
                    conn.execute(
                        "DELETE FROM messages WHERE channel = ? AND time < ?",
                        (name, now - max_age),
                    )
                    trimmed.append(name)
            conn.execute("DELETE FROM idempotency WHERE expires <= ?", (now,))
            return trimmed

        return await self._write(op)

    # -- jobs -------------------------------------------------------------------------

    def _save_job(
        self, conn: sqlite3.Connection, job: Job, event: str | None, now: float, insert: bool
    ) -> JobChange:
        """Writer thread: store a job and append its event to the job's channel."""
        # The columns a transition may change, in the order both statements name them.
        changing = (
            job.type,
            job.status,
            job.priority,
            job.run_at,
            job.lease_expires_at,
            job.finished_at,
            _encode_job(job),
        )
        if insert:
            conn.execute(
                "INSERT INTO jobs (type, status, priority, run_at, lease_expires_at,"
                " finished_at, body, id, created_at, idempotency_key)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*changing, job.id, job.created_at, job.idempotency_key),
            )
            # A new job's channel is new too (job.* is written by the job system only, and
            # a job's channel is removed with it): no lookup.
            self._new_channel(job_channel(job.id), now)
        else:
            # A job's creation time and idempotency key never change: an UPDATE of the
            # other columns leaves their indexes alone, where REPLACE rewrote every index.
            conn.execute(
                "UPDATE jobs SET type = ?, status = ?, priority = ?, run_at = ?,"
                " lease_expires_at = ?, finished_at = ?, body = ? WHERE id = ?",
                (*changing, job.id),
            )
        published = None
        if event is not None:
            data = job_event_data(job)
            published = self._append(conn, job_channel(job.id), data, _encode(data), event, now)
        return JobChange(job, published)

    def _apply_all(
        self, conn: sqlite3.Connection, rows: list[tuple[bytes]], now: float, fn: Transition
    ) -> list[JobChange]:
        out = []
        for (body,) in rows:
            new, event = fn(_decode_job(body), now)
            out.append(self._save_job(conn, new, event, now, insert=False))
        return out

    async def submit_job(self, job: Job, event: str) -> tuple[JobChange, bool]:
        def op(conn: sqlite3.Connection) -> tuple[JobChange, bool]:
            if job.idempotency_key is not None:
                row = conn.execute(
                    "SELECT body FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)
                ).fetchone()
                if row is not None:
                    return JobChange(_decode_job(row[0]), None), False
            return self._save_job(conn, job, event, job.created_at, insert=True), True

        return await self._write(op)

    async def get_job(self, job_id: str) -> Job | None:
        # A primary-key lookup is a few microseconds of SQLite: it runs on the event loop's
        # own connection, cheaper than a hand-off to the reader thread (decision 0010).
        point = self._point
        if point is None or self._closing:
            raise StoreClosed("store is not open: call `await store.start()` first")
        try:
            row = point.execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
        except sqlite3.Error as exc:
            raise StoreError(f"SQLite read failed: {exc}") from exc
        return None if row is None else _decode_job(row[0])

    async def list_jobs(self, status: str | None, type_: str | None, limit: int) -> list[Job]:
        where, args = [], []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if type_ is not None:
            where.append("type = ?")
            args.append(type_)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT body FROM jobs {clause} ORDER BY created_at DESC, id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        )
        return [_decode_job(r[0]) for r in rows]

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT type, status, count(*) FROM jobs GROUP BY type, status"
            ).fetchall()
        )
        out: dict[str, dict[str, int]] = {}
        for type_, status, count in rows:
            out.setdefault(type_, {})[status] = count
        return out

    async def transition_job(self, job_id: str, fn: Transition, durable: bool = True) -> JobChange:
        def op(conn: sqlite3.Connection) -> JobChange:
            row = conn.execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"no job {job_id!r}")
            return self._apply_all(conn, [row], time.time(), fn)[0]

        return await self._write(op, durable)

    async def transition_jobs(self, steps: list[JobStep]) -> list[JobChange | TidingsError]:
        if not steps:
            return []
        ids = list(dict.fromkeys(job_id for job_id, _, _ in steps))

        def op(conn: sqlite3.Connection) -> list[JobChange | TidingsError]:
            now = time.time()
            jobs: dict[str, Job] = {}
            # One query for the batch (SQLite allows 32,766 parameters; batches hold <= 100).
            for at in range(0, len(ids), 500):
                chunk = ids[at : at + 500]
                rows = conn.execute(
                    f"SELECT body FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                ).fetchall()
                for (body,) in rows:
                    found = _decode_job(body)
                    jobs[found.id] = found
            # A refusal is computed before anything is written, so it changes nothing.
            return [
                r if isinstance(r, TidingsError) else self._save_job(conn, r[1], r[2], now, False)
                for r in apply_steps(steps, jobs, now)
            ]

        return await self._write(op, any(durable for _, _, durable in steps))

    async def lease_jobs(
        self, types: list[str] | None, max_jobs: int, now: float, fn: Transition
    ) -> list[JobChange]:
        def op(conn: sqlite3.Connection) -> list[JobChange]:
            type_clause = ""
            args: list[Any] = [now]
            if types is not None:
                type_clause = f" AND type IN ({', '.join('?' * len(types))})"
                args.extend(types)
            rows = conn.execute(
                "SELECT body FROM jobs WHERE status = 'queued' AND run_at <= ?"
                f"{type_clause} ORDER BY priority DESC, run_at, id LIMIT ?",
                (*args, max_jobs),
            ).fetchall()
            return self._apply_all(conn, rows, now, fn)

        return await self._write(op, durable=False)

    async def expire_jobs(self, now: float, fn: Transition) -> list[JobChange]:
        # A read first: the common answer is "nothing expired", which needs no write.
        any_expired = await self._read(
            lambda c: c.execute(
                "SELECT 1 FROM jobs WHERE status = 'running' AND lease_expires_at < ? LIMIT 1",
                (now,),
            ).fetchone()
        )
        if any_expired is None:
            return []

        def op(conn: sqlite3.Connection) -> list[JobChange]:
            rows = conn.execute(
                "SELECT body FROM jobs WHERE status = 'running' AND lease_expires_at < ?", (now,)
            ).fetchall()
            return self._apply_all(conn, rows, now, fn)

        return await self._write(op, durable=False)

    async def next_run_at(self) -> float | None:
        row = await self._read(
            lambda c: c.execute("SELECT min(run_at) FROM jobs WHERE status = 'queued'").fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    async def sweep_jobs(self, finished_before: float) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM jobs WHERE finished_at < ?", (finished_before,)
                ).fetchall()
            ]
            for job_id in ids:
                channel = job_channel(job_id)
                self._state.pop(channel, None)
                conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                conn.execute("DELETE FROM channels WHERE name = ?", (channel,))
                conn.execute("DELETE FROM messages WHERE channel = ?", (channel,))
            return ids

        return await self._write(op)

    # -- principals -------------------------------------------------------------------
    # Read on every call, never cached: another process (the CLI) may change them.

    async def put_user(self, user: User) -> None:
        body = _encode_struct(user)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO users (name, body) VALUES (?, ?)", (user.name, body)
            )

        await self._write(op)

    async def get_user(self, name: str) -> User | None:
        row = await self._read(
            lambda c: c.execute("SELECT body FROM users WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else _decode_user(row[0])

    async def list_users(self) -> list[User]:
        rows = await self._read(
            lambda c: c.execute("SELECT body FROM users ORDER BY name").fetchall()
        )
        return [_decode_user(r[0]) for r in rows]

    async def delete_user(self, name: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM users WHERE name = ?", (name,))
            conn.execute("DELETE FROM credentials WHERE user = ?", (name,))
            return cur.rowcount > 0

        return await self._write(op)

    async def put_credential(self, cred: Credential) -> None:
        body = _encode_struct(cred)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO credentials (key, user, expires, created, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (cred.key, cred.user, cred.expires, cred.created, body),
            )

        await self._write(op)

    async def get_credential(self, key: str) -> Credential | None:
        now = time.time()
        row = await self._read(
            lambda c: c.execute(
                "SELECT body FROM credentials WHERE key = ? AND (expires IS NULL OR expires > ?)",
                (key, now),
            ).fetchone()
        )
        return None if row is None else _decode_credential(row[0])

    async def list_credentials(self, user: str | None = None) -> list[Credential]:
        now = time.time()
        where = "(expires IS NULL OR expires > ?)"
        args: list[Any] = [now]
        if user is not None:
            where += " AND user = ?"
            args.append(user)
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT body FROM credentials WHERE {where} ORDER BY created, key", args
            ).fetchall()
        )
        return [_decode_credential(r[0]) for r in rows]

    async def delete_credential(self, key: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM credentials WHERE key = ?", (key,)).rowcount > 0

        return await self._write(op)

    async def live_credentials(self, keys: list[str], now: float) -> set[str]:
        def op(conn: sqlite3.Connection) -> set[str]:
            live: set[str] = set()
            for i in range(0, len(keys), 500):  # under SQLite's bound-parameter limit
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                live.update(
                    row[0]
                    for row in conn.execute(
                        f"SELECT key FROM credentials WHERE key IN ({marks})"
                        " AND (expires IS NULL OR expires > ?)",
                        (*chunk, now),
                    )
                )
            return live

        return await self._read(op) if keys else set()

    async def sweep_credentials(self, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM credentials WHERE expires <= ?", (now,)).rowcount

        # Forgetting what already expired acknowledges nothing: no fsync needed.
        return await self._write(op, durable=False)
