"""The SQLite store's jobs: one row each (msgpack body plus the columns its indexes
need), changed by transitions on the writer thread with their channel message."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import msgspec

from tidings.protocol.errors import Conflict, NotFound, TidingsError
from tidings.protocol.jobs import Job, QueueLimits, job_channel
from tidings.server.stores.base import (
    JobChange,
    JobCursor,
    JobPage,
    JobStep,
    JobStore,
    Transition,
    apply_steps,
    check_unique,
    job_event_data,
    settle_mark_due,
    settle_stamp,
)
from tidings.server.stores.common import ServedMarks, decode_job, encode_json, encode_msgpack
from tidings.server.stores.limits import Allowance, LimitCounters
from tidings.server.stores.sqlite.core import ChannelLog, SQLiteCore

__all__ = ["SQLiteJobs"]

_decode_limits = msgspec.msgpack.Decoder(QueueLimits).decode


class SQLiteJobs(JobStore):
    """Every JobStore method; a job's events are appended to its channel through `log`,
    in the transaction that changes the job.

    The queries of the job system's own loops (lease, expiry, next due time, sweep) name
    the partial index each is built for (INDEXED BY): without statistics, SQLite's
    planner would take the listing's index on `status` for them and sort every queued or
    running job instead.
    """

    def __init__(self, core: SQLiteCore, log: ChannelLog) -> None:
        self._core = core
        self._log = log
        # When a worker last asked for each job type (see JobStore.mark_served). In memory:
        # one server holds the file (tidings.server.stores.lockfile), and a restart forgets
        # the marks only until the workers' next lease requests, seconds later.
        self._served = ServedMarks()
        # The queue limits, read from `queue_limits` by the writer thread at its first
        # lease, then kept by set_queue_limits. The rate state (GCRA tat) of each
        # rate-limited type is a row of `queue_rates`, written by the lease that moves it
        # in its own transaction: a restart keeps the bucket as it was.
        self._limits: dict[str, QueueLimits] | None = None
        # Whether `job_parents` may have rows (None: not read yet): while it has none, a
        # job that ends is known to have no dependents without a query. One server holds
        # the file, and rows are added only through `_save_job`.
        self._any_parents: bool | None = None

    def _save_job(
        self,
        conn: sqlite3.Connection,
        job: Job,
        event: str | None,
        now: float,
        old: Job | None,
        index: bool = True,
    ) -> JobChange:
        """Writer thread: store a job (`old`: as it was; None for a new one) and append its
        event to the job's channel; with `index`, file a new job under its parents
        (`_index`: a batch does it once all its jobs are stored)."""
        if old is None:
            conn.execute(
                "INSERT INTO jobs (status, priority, run_at, lease_expires_at, finished_at,"
                " body, id, type, created_at, idempotency_key, unique_key, grp)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.status,
                    job.priority,
                    job.run_at,
                    job.lease_expires_at,
                    job.finished_at,
                    encode_msgpack(job),
                    job.id,
                    job.type,
                    job.created_at,
                    job.idempotency_key,
                    job.unique_key,
                    job.group,
                ),
            )
            # A new job's channel is new too (job.* is written by the job system only, and
            # a job's channel is removed with it): no lookup.
            self._log.new_channel(job_channel(job.id), now)
        else:
            # SQLite rewrites the entries of every index holding a column the UPDATE names,
            # changed or not: `status` is named only when it changes, and the columns no
            # transition changes (type, created_at, idempotency_key, unique_key, grp) never
            # are.
            changing = (
                job.priority,
                job.run_at,
                job.lease_expires_at,
                job.finished_at,
                encode_msgpack(job),
            )
            if job.status != old.status:
                conn.execute(
                    "UPDATE jobs SET priority = ?, run_at = ?, lease_expires_at = ?,"
                    " finished_at = ?, body = ?, status = ? WHERE id = ?",
                    (*changing, job.status, job.id),
                )
            else:
                conn.execute(
                    "UPDATE jobs SET priority = ?, run_at = ?, lease_expires_at = ?,"
                    " finished_at = ?, body = ? WHERE id = ?",
                    (*changing, job.id),
                )
        published = None
        if event is not None:
            data = job_event_data(job)
            published = self._log.append(
                conn, job_channel(job.id), data, encode_json(data), event, now
            )
        dependents = False
        if job.terminal and (old is None or not old.terminal) and self._may_have_parents(conn):
            dependents = (
                conn.execute(
                    "SELECT 1 FROM job_parents WHERE parent = ? LIMIT 1", (job.id,)
                ).fetchone()
                is not None
            )
        change = JobChange(job, published, dependents)
        if dependents:
            change = self._mark(conn, change)
        return self._index(conn, old, change) if index else change

    @staticmethod
    def _mark(conn: sqlite3.Connection, change: JobChange) -> JobChange:
        """Writer thread: write the settle mark of `change`'s job; the change saying so."""
        stamp = settle_stamp(change.job)
        conn.execute(
            "INSERT INTO job_settle (job_id, stamp) VALUES (?, ?)"
            " ON CONFLICT (job_id) DO UPDATE SET stamp = excluded.stamp",
            (change.job.id, stamp),
        )
        return JobChange(change.job, change.published, change.dependents, stamp)

    def _index(self, conn: sqlite3.Connection, old: Job | None, change: JobChange) -> JobChange:
        """Writer thread: a new job goes under each of its parents that exists (in this
        transaction: a parent swept meanwhile gets no row nobody would delete); one made
        waiting while a parent has ended or is gone is marked to be settled."""
        job = change.job
        new_child = old is None and bool(job.after)
        if not new_child and job.status != "waiting":
            return change
        ended: dict[str, bool] = {}
        if job.after:
            rows = conn.execute(
                "SELECT id, status IN ('succeeded', 'failed', 'cancelled') FROM jobs"
                f" WHERE id IN ({', '.join('?' * len(job.after))})",
                job.after,
            ).fetchall()
            ended = {str(parent): bool(done) for parent, done in rows}
        if new_child and ended:
            self._any_parents = True
            conn.executemany(
                "INSERT OR IGNORE INTO job_parents (parent, child) VALUES (?, ?)",
                [(parent, job.id) for parent in ended],
            )
        if settle_mark_due(old, job, ended):
            return self._mark(conn, change)
        return change

    def _may_have_parents(self, conn: sqlite3.Connection) -> bool:
        """Writer thread: False while no job in the file was submitted after others."""
        if self._any_parents is None:
            row = conn.execute("SELECT 1 FROM job_parents LIMIT 1").fetchone()
            self._any_parents = row is not None
        return self._any_parents

    def _apply_all(
        self, conn: sqlite3.Connection, rows: list[tuple[bytes]], now: float, fn: Transition
    ) -> list[JobChange]:
        out = []
        for (body,) in rows:
            job = decode_job(body)
            new, event = fn(job, now)
            self._check_unique(conn, {}, job, new)
            out.append(self._save_job(conn, new, event, now, job))
        return out

    @staticmethod
    def _unique_holder(conn: sqlite3.Connection, job: Job) -> str | None:
        """Writer thread: the id of the waiting, queued or running job holding `job`'s
        unique key."""
        row = conn.execute(
            "SELECT id FROM jobs WHERE type = ? AND unique_key = ?"
            " AND unique_key IS NOT NULL AND status IN ('waiting', 'queued', 'running')",
            (job.type, job.unique_key),
        ).fetchone()
        return None if row is None else str(row[0])

    def _check_unique(
        self,
        conn: sqlite3.Connection,
        claimed: dict[tuple[str, str], str],
        old: Job | None,
        new: Job,
    ) -> None:
        """Writer thread: Conflict, before anything is written, when `new` would take a
        unique key another job holds (or an earlier step of the same batch took:
        `claimed`); the index `jobs_unique_held` would refuse it, rolling back the batch."""
        check_unique(claimed, old, new, lambda job: self._unique_holder(conn, job))

    async def submit_job(self, job: Job, event: str) -> tuple[JobChange, bool]:
        def op(conn: sqlite3.Connection) -> tuple[JobChange, bool]:
            if job.idempotency_key is not None:
                row = conn.execute(
                    "SELECT body FROM jobs WHERE idempotency_key = ?", (job.idempotency_key,)
                ).fetchone()
                if row is not None:
                    return JobChange(decode_job(row[0]), None), False
            if job.unique_key is not None:
                holder = self._unique_holder(conn, job)
                if holder is not None:
                    row = conn.execute("SELECT body FROM jobs WHERE id = ?", (holder,)).fetchone()
                    return JobChange(decode_job(row[0]), None), False
            return self._save_job(conn, job, event, job.created_at, None), True

        return await self._core.write(op)

    async def submit_jobs(self, jobs: list[Job], events: list[str]) -> list[JobChange]:
        def op(conn: sqlite3.Connection) -> list[JobChange]:
            # The checks first, so a refusal costs no write; then the writes inside a
            # savepoint: anything that fails among them (a constraint, such as an id that
            # exists) takes the whole batch back out of the group commit's transaction,
            # which the other writes of the group still commit.
            claimed: dict[tuple[str, str], str] = {}
            for job in jobs:
                self._check_unique(conn, claimed, None, job)
            conn.execute("SAVEPOINT submit_jobs")
            made: list[JobChange] = []
            try:
                for job, event in zip(jobs, events, strict=True):
                    made.append(self._save_job(conn, job, event, job.created_at, None, False))
                out = [self._index(conn, None, change) for change in made]
            except BaseException as exc:
                conn.execute("ROLLBACK TO submit_jobs")
                conn.execute("RELEASE submit_jobs")
                for change in made:  # the states of the channels the savepoint made
                    self._log.forget(job_channel(change.job.id))
                if isinstance(exc, sqlite3.IntegrityError):
                    raise Conflict(
                        f"the batch could not be stored ({exc}): nothing of the batch was made"
                    ) from None
                raise
            conn.execute("RELEASE submit_jobs")
            return out

        return await self._core.write(op)

    async def get_job(self, job_id: str) -> Job | None:
        core = self._core
        point = core.point()
        with core.read_errors:
            row = point.execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else decode_job(row[0])

    async def get_jobs(self, job_ids: list[str]) -> dict[str, Job]:
        ids = list(dict.fromkeys(job_ids))

        def read(conn: sqlite3.Connection) -> dict[str, Job]:
            out: dict[str, Job] = {}
            # One query per 500 ids, under SQLite's bound-parameter limit.
            for at in range(0, len(ids), 500):
                chunk = ids[at : at + 500]
                rows = conn.execute(
                    f"SELECT body FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                ).fetchall()
                for (body,) in rows:
                    job = decode_job(body)
                    out[job.id] = job
            return out

        if not ids:
            return {}
        return await self._core.read(read)

    async def dependents(self, job_id: str) -> list[str]:
        rows = await self._core.read(
            lambda c: c.execute(
                "SELECT child FROM job_parents WHERE parent = ?", (job_id,)
            ).fetchall()
        )
        return [str(r[0]) for r in rows]

    async def settle_marks(self, limit: int) -> list[tuple[str, float]]:
        rows = await self._core.read(
            lambda c: c.execute(
                "SELECT job_id, stamp FROM job_settle ORDER BY stamp, job_id LIMIT ?", (limit,)
            ).fetchall()
        )
        return [(str(job_id), float(stamp)) for job_id, stamp in rows]

    async def clear_settle_marks(self, marks: list[tuple[str, float]]) -> None:
        if not marks:
            return
        await self._core.write(
            lambda c: (
                c.executemany(
                    "DELETE FROM job_settle WHERE job_id = ? AND stamp = ?", marks
                ).rowcount
            ),
            durable=False,
        )

    async def list_jobs(
        self,
        status: str | None,
        type_: str | None,
        limit: int,
        before: JobCursor | None = None,
    ) -> JobPage:
        # Each filter has its index ending in (created_at, id) (see core.SCHEMA): the page
        # is one range of it, read backwards from the cursor. One row past the page says
        # whether another page follows.
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if type_ is not None:
            where.append("type = ?")
            args.append(type_)
        if before is not None:
            where.append("(created_at, id) < (?, ?)")
            args.extend(before.key())
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self._core.read(
            lambda c: c.execute(
                f"SELECT body FROM jobs {clause} ORDER BY created_at DESC, id DESC LIMIT ?",
                (*args, max(0, limit) + 1),
            ).fetchall()
        )
        jobs = [decode_job(r[0]) for r in rows[:limit]]
        return JobPage(jobs, JobCursor.of(jobs[-1]) if jobs and len(rows) > limit else None)

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        rows = await self._core.read(
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

        return await self._core.write(op, durable)

    async def transition_jobs(self, steps: list[JobStep]) -> list[JobChange | TidingsError]:
        if not steps:
            return []
        ids = list(dict.fromkeys(job_id for job_id, _, _ in steps))

        def op(conn: sqlite3.Connection) -> list[JobChange | TidingsError]:
            now = time.time()
            jobs: dict[str, Job] = {}
            # One query per 500 ids, under SQLite's bound-parameter limit.
            for at in range(0, len(ids), 500):
                chunk = ids[at : at + 500]
                rows = conn.execute(
                    f"SELECT body FROM jobs WHERE id IN ({', '.join('?' * len(chunk))})", chunk
                ).fetchall()
                for (body,) in rows:
                    found = decode_job(body)
                    jobs[found.id] = found
            # A refusal is computed before anything is written, so it changes nothing.
            claimed: dict[tuple[str, str], str] = {}
            return [
                r if isinstance(r, TidingsError) else self._save_job(conn, r[1], r[2], now, r[0])
                for r in apply_steps(
                    steps,
                    jobs,
                    now,
                    lambda old, new: self._check_unique(conn, claimed, old, new),
                )
            ]

        return await self._core.write(op, any(durable for _, _, durable in steps))

    async def lease_jobs(
        self, types: list[str] | None, max_jobs: int, now: float, fn: Transition
    ) -> list[JobChange]:
        def op(conn: sqlite3.Connection) -> list[JobChange]:
            limits = self._read_limits(conn)
            limited = [t for t in (limits if types is None else types) if t in limits]
            if not limited:
                return self._apply_all(conn, self._due(conn, types, max_jobs, now), now, fn)
            return self._lease_limited(conn, types, limited, max_jobs, now, fn)

        return await self._core.write(op, durable=False)

    @staticmethod
    def _due(
        conn: sqlite3.Connection, types: list[str] | None, count: int, now: float
    ) -> list[tuple[bytes]]:
        """Writer thread: up to `count` due queued jobs of `types` (None: all), in lease
        order: one range of `jobs_queued` for all types, else one of `jobs_type_queued` per
        type (the queued jobs of other types are never read), merged."""
        if types is None:
            rows: list[tuple[bytes]] = conn.execute(
                "SELECT body FROM jobs INDEXED BY jobs_queued"
                " WHERE status = 'queued' AND run_at <= ?"
                " ORDER BY priority DESC, run_at, id LIMIT ?",
                (now, count),
            ).fetchall()
            return rows
        if len(types) == 1:
            one: list[tuple[bytes]] = conn.execute(
                "SELECT body FROM jobs INDEXED BY jobs_type_queued"
                " WHERE type = ? AND status = 'queued' AND run_at <= ?"
                " ORDER BY priority DESC, run_at, id LIMIT ?",
                (types[0], now, count),
            ).fetchall()
            return one
        found: list[tuple[int, float, str, bytes]] = []
        for type_ in dict.fromkeys(types):
            found += conn.execute(
                "SELECT -priority, run_at, id, body FROM jobs INDEXED BY jobs_type_queued"
                " WHERE type = ? AND status = 'queued' AND run_at <= ?"
                " ORDER BY priority DESC, run_at, id LIMIT ?",
                (type_, now, count),
            ).fetchall()
        found.sort(key=lambda row: row[:3])
        return [(row[3],) for row in found[:count]]

    @staticmethod
    def _queued_types(conn: sqlite3.Connection) -> list[str]:
        """Writer thread: the types with queued jobs, one index lookup per type."""
        rows = conn.execute(
            "WITH RECURSIVE queued(type) AS ("
            " SELECT min(type) FROM jobs INDEXED BY jobs_type_queued WHERE status = 'queued'"
            " UNION ALL SELECT (SELECT min(type) FROM jobs INDEXED BY jobs_type_queued"
            " WHERE status = 'queued' AND type > queued.type)"
            " FROM queued WHERE queued.type IS NOT NULL)"
            " SELECT type FROM queued WHERE type IS NOT NULL"
        ).fetchall()
        return [str(row[0]) for row in rows]

    @staticmethod
    def _full_groups(conn: sqlite3.Connection, type_: str, cap: int) -> set[str]:
        """Writer thread: the groups of `type_` running `cap` jobs or more (read from the
        type's running jobs only, however many are queued)."""
        rows = conn.execute(
            "SELECT grp FROM jobs INDEXED BY jobs_type_status_created"
            " WHERE type = ? AND status = 'running' AND grp IS NOT NULL"
            " GROUP BY grp HAVING count(*) >= ?",
            (type_, cap),
        ).fetchall()
        return {str(row[0]) for row in rows}

    @staticmethod
    def _grouped_due(
        conn: sqlite3.Connection, type_: str, full: set[str], count: int, now: float
    ) -> list[tuple[int, float, str, str | None]]:
        """Writer thread: the (-priority, run_at, id, group) of up to `count` due queued
        jobs of `type_` in lease order, but those of the `full` groups: read from
        `jobs_type_queued` alone (no job row is read for a job passed over)."""
        excluded: list[Any]
        if len(full) <= 500:  # bound parameters, under SQLite's limit
            excluded = sorted(full)
            listed = ", ".join("?" * len(excluded))
        else:
            excluded = [encode_json(sorted(full))]
            listed = "SELECT value FROM json_each(?)"
        rows: list[tuple[int, float, str, str | None]] = conn.execute(
            "SELECT -priority, run_at, id, grp FROM jobs INDEXED BY jobs_type_queued"
            " WHERE type = ? AND status = 'queued' AND run_at <= ?"
            f" AND (grp IS NULL OR grp NOT IN ({listed}))"
            " ORDER BY priority DESC, run_at, id LIMIT ?",
            (type_, now, *excluded, count),
        ).fetchall()
        return rows

    def _lease_limited(
        self,
        conn: sqlite3.Connection,
        types: list[str] | None,
        limited: list[str],
        max_jobs: int,
        now: float,
        fn: Transition,
    ) -> list[JobChange]:
        """Writer thread: a lease among types some of which (`limited`) have limits: the
        due jobs of the others, and of each limited type as many as its allowance may
        take, taken in lease order while allowed. A type with a group_concurrency is read
        without its full groups' jobs; a group that fills during the lease is left out of
        the next read of its type, so no backlog of one group hides another's jobs."""
        limits = self._read_limits(conn)
        free = [
            t for t in (self._queued_types(conn) if types is None else types) if t not in limits
        ]
        # (-priority, run_at, id, type, group, body): bodies only for jobs always taken.
        found: list[tuple[int, float, str, str, str | None, bytes | None]] = [
            (-job.priority, job.run_at, job.id, job.type, job.group, body)
            for (body,) in (self._due(conn, free, max_jobs, now) if free else [])
            for job in (decode_job(body),)
        ]
        allowances: dict[str, Allowance] = {}
        full: dict[str, set[str]] = {}
        tats = self._rate_states(conn, [t for t in limited if limits[t].rate is not None])
        for type_ in limited:
            allowance = self._allowance(conn, type_, limits[type_], tats.get(type_, 0.0), now)
            if allowance.open():
                allowances[type_] = allowance
                cap = limits[type_].group_concurrency
                if cap is not None:
                    full[type_] = self._full_groups(conn, type_, cap)
        reading = list(allowances)
        out: list[JobChange] = []
        while True:
            for type_ in reading:
                keys = self._grouped_due(conn, type_, full.get(type_, set()), max_jobs, now)
                found += ((p, r, i, type_, g, None) for p, r, i, g in keys)
            found.sort(key=lambda row: row[:3])
            filled: set[str] = set()
            for *_, job_id, type_, group, known in found:
                if len(out) >= max_jobs:
                    break
                held = allowances.get(type_)
                if held is not None and not held.take(group):
                    if held.open() and group is not None and type_ in full:
                        full[type_].add(group)  # filled by this lease
                        filled.add(type_)
                    continue
                body = known
                if body is None:
                    (body,) = conn.execute(
                        "SELECT body FROM jobs WHERE id = ?", (job_id,)
                    ).fetchone()
                job = decode_job(body)
                new, event = fn(job, now)
                out.append(self._save_job(conn, new, event, now, job))
            # Taken jobs are running now: a read again finds the rest of a type whose
            # groups filled, without them.
            reading = [] if len(out) >= max_jobs else sorted(filled)
            if not reading:
                break
            found = []
        for type_, allowance in allowances.items():
            if allowance.limits.rate is not None and allowance.tat != tats.get(type_):
                conn.execute(
                    "INSERT INTO queue_rates (type, tat) VALUES (?, ?)"
                    " ON CONFLICT (type) DO UPDATE SET tat = excluded.tat",
                    (type_, allowance.tat),
                )
        return out

    @staticmethod
    def _rate_states(conn: sqlite3.Connection, types: list[str]) -> dict[str, float]:
        """The rate state (GCRA tat) of each of `types` that has one."""
        if not types:
            return {}
        rows = conn.execute(
            f"SELECT type, tat FROM queue_rates WHERE type IN ({', '.join('?' * len(types))})",
            types,
        ).fetchall()
        return {str(type_): float(tat) for type_, tat in rows}

    def _allowance(
        self, conn: sqlite3.Connection, type_: str, limits: QueueLimits, tat: float, now: float
    ) -> Allowance:
        """Writer thread: what a lease may take of a limited type, from its counts."""
        (running,) = conn.execute(
            "SELECT count(*) FROM jobs WHERE type = ? AND status = 'running'", (type_,)
        ).fetchone()

        def group_running(group: str) -> int:
            (count,) = conn.execute(
                "SELECT count(*) FROM jobs INDEXED BY jobs_group WHERE type = ? AND grp = ?"
                " AND grp IS NOT NULL AND status IN ('queued', 'running')"
                " AND status = 'running'",
                (type_, group),
            ).fetchone()
            return int(count)

        return Allowance(limits, int(running), group_running, tat, now)

    def _read_limits(self, conn: sqlite3.Connection) -> dict[str, QueueLimits]:
        """Writer thread: the queue limits, read from the file once."""
        if self._limits is None:
            rows = conn.execute("SELECT type, body FROM queue_limits").fetchall()
            self._limits = {type_: _decode_limits(body) for type_, body in rows}
        return self._limits

    async def set_queue_limits(self, type_: str, limits: QueueLimits | None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            known = self._read_limits(conn)
            if limits is None:
                conn.execute("DELETE FROM queue_limits WHERE type = ?", (type_,))
                known.pop(type_, None)
            else:
                conn.execute(
                    "INSERT INTO queue_limits (type, body) VALUES (?, ?)"
                    " ON CONFLICT (type) DO UPDATE SET body = excluded.body",
                    (type_, encode_msgpack(limits)),
                )
                known[type_] = limits

        await self._core.write(op)

    async def queue_limits(self) -> dict[str, QueueLimits]:
        rows = await self._core.read(
            lambda c: c.execute("SELECT type, body FROM queue_limits").fetchall()
        )
        return {type_: _decode_limits(body) for type_, body in rows}

    async def limit_counters(
        self, limits: dict[str, QueueLimits], now: float
    ) -> dict[str, LimitCounters]:
        def read(conn: sqlite3.Connection) -> dict[str, LimitCounters]:
            out = {}
            tats = self._rate_states(conn, [t for t, lim in limits.items() if lim.rate])
            for type_, limit in limits.items():
                (due,) = conn.execute(
                    "SELECT count(*) FROM jobs WHERE type = ? AND status = 'queued'"
                    " AND run_at <= ?",
                    (type_, now),
                ).fetchone()
                (running,) = conn.execute(
                    "SELECT count(*) FROM jobs WHERE type = ? AND status = 'running'", (type_,)
                ).fetchone()
                full = 0
                cap = limit.group_concurrency
                if cap is not None:
                    (full,) = conn.execute(
                        "SELECT coalesce(sum(queued), 0) FROM (SELECT"
                        " sum(status = 'queued') AS queued, sum(status = 'running') AS running"
                        " FROM jobs INDEXED BY jobs_group WHERE type = ? AND grp IS NOT NULL"
                        " AND status IN ('queued', 'running') GROUP BY grp) WHERE running >= ?",
                        (type_, cap),
                    ).fetchone()
                out[type_] = LimitCounters(int(due), int(running), tats.get(type_, 0.0), int(full))
            return out

        return await self._core.read(read)

    async def expire_jobs(self, now: float, fn: Transition) -> list[JobChange]:
        # A read first: the common answer is "nothing expired", which needs no write.
        any_expired = await self._core.read(
            lambda c: c.execute(
                "SELECT 1 FROM jobs INDEXED BY jobs_running"
                " WHERE status = 'running' AND lease_expires_at < ? LIMIT 1",
                (now,),
            ).fetchone()
        )
        if any_expired is None:
            return []

        def op(conn: sqlite3.Connection) -> list[JobChange]:
            rows = conn.execute(
                "SELECT body FROM jobs INDEXED BY jobs_running"
                " WHERE status = 'running' AND lease_expires_at < ?",
                (now,),
            ).fetchall()
            return self._apply_all(conn, rows, now, fn)

        return await self._core.write(op, durable=False)

    async def next_run_at(self) -> float | None:
        row = await self._core.read(
            lambda c: c.execute(
                "SELECT min(run_at) FROM jobs INDEXED BY jobs_queued WHERE status = 'queued'"
            ).fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    async def sweep_jobs(self, finished_before: float) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM jobs INDEXED BY jobs_done WHERE finished_at < ?",
                    (finished_before,),
                ).fetchall()
            ]
            for job_id in ids:
                channel = job_channel(job_id)
                self._log.forget(channel)
                conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
                conn.execute("DELETE FROM job_parents WHERE parent = ?", (job_id,))
                conn.execute("DELETE FROM job_settle WHERE job_id = ?", (job_id,))
                conn.execute("DELETE FROM channels WHERE name = ?", (channel,))
                conn.execute("DELETE FROM messages WHERE channel = ?", (channel,))
            return ids

        return await self._core.write(op)

    async def mark_served(self, types: list[str], now: float) -> None:
        self._served.mark(types, now)

    async def served_at(self, types: list[str]) -> float | None:
        return self._served.latest(types)
