"""Jobs in Redis: msgpack bodies, sorted-set indexes, optimistic transactions.

Keys (see tidings.stores.redis.base): `{p}job:{id}` holds the msgpack body; the id sits
in exactly one of `{p}queued:{type}` (by run_at), `{p}running` (by lease_expires_at) or
`{p}finished` (by finished_at) according to its status, and in `{p}jobs` (by created_at);
`{p}jobcounts` counts jobs per type and status; `{p}jobidem:{key}` maps an idempotency key
to its job; `{p}wake` announces every job that becomes queued to the relays of all nodes.

Why every change is applied once, whichever node attempts it
------------------------------------------------------------

A transition is Python (`fn(job, now)`, tidings.jobs), so it cannot run inside Redis as
Lua. Each change is therefore an optimistic transaction:

1. WATCH the job key(s), then GET the body(ies) — the state the change is computed from;
2. apply `fn` in Python (a refusal raises before anything is queued: nothing changes);
3. MULTI: SET the new body, move the id between the index sets by status, HINCRBY the
   counts (-1 old status, +1 new), append the event to the job's channel (the channel
   part's Lua script, `queue_append`), XADD `{p}wake` when the job is now queued; EXEC.

EXEC runs all of step 3 or, when any watched key was written since its WATCH, none of it
(WatchError). The body is the only input of a transition and every change writes it, so
a transaction commits only if the body it computed from is still the current one: two
changes of one job are serialised, and each commits against the state it saw. On a
WatchError the attempt starts again from step 1 with the fresh body and re-checks its
precondition, so a change whose reason went away is skipped rather than applied twice:

* lease_jobs: a job handed out by another node is no longer queued at the re-check, so
  it is skipped — no job goes to two callers;
* expire_jobs: an expired lease that another node already took back is no longer running
  with an expired lease, so it is skipped — it is requeued (its attempt counted, its
  event published) once;
* transition_job(s): a complete/fail after a concurrent change sees the new state and
  its transition decides again (a spent lease token is a Conflict).

The indexes, counts and channel message are written in the same MULTI as the body, so
every reader sees them agree with the bodies. Retries are bounded (MAX_RETRIES, with a
little random back-off); past that the call fails with StoreError and its last attempt
changed nothing (a lease that already committed some jobs returns those instead; expiry
and sweep commit BATCH jobs per transaction).
Within one process, lease_jobs and expire_jobs calls take turns (an asyncio lock), so
WATCH conflicts arise only between nodes, not between the requests of one node.

Limits, stated:

* Durability is Redis's own (its `appendonly`/`appendfsync`): `durable=False` changes
  nothing here. A connection lost during EXEC surfaces as a retry that may find its own
  change already applied; lease and expiry then skip the job (the lease ends unheld and
  is taken back later: at-least-once), a complete answers Conflict.
* Times come from the clock of the node making the change (as `now` did before Redis):
  skewed clocks move when a lease counts as expired, never how often it is taken back.
* lease_jobs reads, per type, the oldest due jobs (4x what it asks for, at least
  LEASE_MIN_SCAN) plus every queued job with a non-zero priority (`{p}qprio:{type}`, up
  to LEASE_SCAN, highest first): positive priorities are always served first; a job with
  a negative priority is ordered exactly only among the jobs read. Priorities (which no
  transition of tidings.jobs changes) are cached per process, so a lease reads ids, not
  bodies.
* list_jobs with a filter scans at most LIST_SCAN jobs newest first, so it may return
  fewer matches than exist when they are older than that.
* Redis does not roll back a MULTI whose command fails at run time (as opposed to a
  refused WATCH); the commands queued here fail only on a wrong key type, which this
  layout never creates, or on a SCRIPT FLUSH between the pipeline's check that the
  append script is loaded and its EXEC (NOSCRIPT: the job changes without its event).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from tidings.errors import NotFound, StoreError, TidingsError
from tidings.stores.base import (
    JobChange,
    JobStep,
    Published,
    Transition,
    apply_steps,
    job_event_data,
)
from tidings.stores.redis.base import RedisBase
from tidings.stores.redis.channels import redis_errors
from tidings.wire import Job, job_channel

__all__ = ["RedisJobs"]

T = TypeVar("T")

# Attempts of one optimistic transaction before giving up with StoreError.
MAX_RETRIES = 50
# Upper bound of the random pause after the n-th WatchError: n * RETRY_JITTER seconds.
RETRY_JITTER = 0.002
# Due jobs per type a lease considers (oldest run_at first) when ordering by priority.
LEASE_SCAN = 1000
# A lease reads at least this many of the oldest due jobs of a type (4x what it asks for).
LEASE_MIN_SCAN = 64
# Jobs per transaction in expire_jobs and sweep_jobs.
BATCH = 100
# Jobs a filtered list_jobs examines at most, and per round trip.
LIST_SCAN = 10_000
LIST_PAGE = 500
# Approximate length the wake stream is trimmed to.
WAKE_MAXLEN = 10_000
# Job priorities remembered per process (cleared when full).
PRIORITY_CACHE_MAX = 200_000

_encode_job = msgspec.msgpack.Encoder().encode
_decode_job = msgspec.msgpack.Decoder(Job).decode
_encode_json = msgspec.json.Encoder().encode


class _Head(msgspec.Struct):
    """The part of a job body a lease orders by (decoding skips the rest)."""

    priority: int = 0


_decode_head = msgspec.msgpack.Decoder(_Head).decode


@dataclass(frozen=True)
class _Pending:
    """A job change queued on a MULTI; `reply` indexes its channel append in EXEC's answer."""

    job: Job
    event: str | None
    data: dict[str, Any] | None
    now: float
    reply: int | None


class RedisJobs(RedisBase):
    """The JobStore part of the Redis store (see the module docstring for the argument)."""

    if TYPE_CHECKING:
        # Provided by RedisChannels (tidings.stores.redis.channels), which RedisStore mixes
        # in: queue a channel append on a MULTI pipeline (its reply in EXEC's answer is
        # [seq, prev_seq, keep]), turn that reply into a Published, queue a channel's removal.
        def queue_append(
            self, pipe: Any, channel: str, data_json: bytes, event: str | None, now: float
        ) -> None: ...

        def appended(
            self, channel: str, data: Any, event: str | None, now: float, reply: list[int]
        ) -> Published: ...

        def queue_delete(self, pipe: Any, channel: str) -> None: ...

    # Created on first use: the parts of RedisStore share RedisBase's constructor.
    _job_locks: dict[str, asyncio.Lock] | None = None
    _priorities: dict[str, int] | None = None

    # -- helpers ------------------------------------------------------------------------

    def _job_lock(self, name: str) -> asyncio.Lock:
        if self._job_locks is None:
            self._job_locks = {}
        lock = self._job_locks.get(name)
        if lock is None:
            lock = self._job_locks[name] = asyncio.Lock()
        return lock

    def _priority_cache(self) -> dict[str, int]:
        if self._priorities is None or len(self._priorities) > PRIORITY_CACHE_MAX:
            self._priorities = {}
        return self._priorities

    def _mapped(self) -> AbstractContextManager[None]:
        """Translate redis-py errors into StoreError (as the channel part does)."""
        return redis_errors(self.url)

    def _change(self, pending: _Pending, replies: list[Any]) -> JobChange:
        """The JobChange of a committed change, from EXEC's answer."""
        if pending.reply is None:
            return JobChange(pending.job, None)
        published = self.appended(
            job_channel(pending.job.id),
            pending.data,
            pending.event,
            pending.now,
            replies[pending.reply],
        )
        return JobChange(pending.job, published)

    def _jk(self, job_id: str) -> str:
        return self.k("job", job_id)

    @staticmethod
    def _count_field(job: Job) -> str:
        return f"{job.type}\x00{job.status}"

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run an optimistic transaction until it commits (or has no write to make)."""
        from redis.exceptions import WatchError

        for n in range(MAX_RETRIES):
            try:
                return await attempt()
            except WatchError:
                await asyncio.sleep(random.uniform(0, RETRY_JITTER * (n + 1)))  # noqa: S311
        raise StoreError(
            f"{what}: the jobs changed under it {MAX_RETRIES} times in a row (other nodes "
            "are writing the same jobs); try again"
        )

    async def _watch_bodies(self, pipe: Any, ids: list[str]) -> list[Job | None]:
        """WATCH the bodies of `ids` and read them (pipe in immediate mode)."""
        keys = [self._jk(i) for i in ids]
        await pipe.watch(*keys)
        bodies = await pipe.mget(keys)
        return [None if b is None else _decode_job(b) for b in bodies]

    def _queue_save(
        self, pipe: Any, old: Job | None, new: Job, event: str | None, now: float
    ) -> _Pending:
        """Queue on a MULTI pipeline everything one job change writes."""
        job_id = new.id
        pipe.set(self._jk(job_id), _encode_job(new))
        if old is None:
            pipe.zadd(self.k("jobs"), {job_id: new.created_at})
            pipe.sadd(self.k("jobtypes"), new.type)
        else:
            # Out of every index it could be in, whatever its old state claims.
            pipe.zrem(self.k("queued", old.type), job_id)
            pipe.zrem(self.k("qprio", old.type), job_id)
            pipe.zrem(self.k("running"), job_id)
            pipe.zrem(self.k("finished"), job_id)
            if new.type != old.type:
                pipe.zrem(self.k("queued", new.type), job_id)
        if new.status == "queued":
            pipe.zadd(self.k("queued", new.type), {job_id: new.run_at})
            if new.priority:
                pipe.zadd(self.k("qprio", new.type), {job_id: -new.priority})
        elif new.status == "running":
            expires = new.lease_expires_at
            pipe.zadd(self.k("running"), {job_id: math.inf if expires is None else expires})
        if new.finished_at is not None:
            pipe.zadd(self.k("finished"), {job_id: new.finished_at})
        if old is None or self._count_field(old) != self._count_field(new):
            if old is not None:
                pipe.hincrby(self.k("jobcounts"), self._count_field(old), -1)
            pipe.hincrby(self.k("jobcounts"), self._count_field(new), 1)
        data = None
        reply = None
        if event is not None:
            data = job_event_data(new)
            self.queue_append(pipe, job_channel(job_id), _encode_json(data), event, now)
            reply = len(pipe.command_stack) - 1
        if new.status == "queued":
            pipe.xadd(
                self.k("wake"),
                {"type": new.type, "run_at": repr(new.run_at)},
                maxlen=WAKE_MAXLEN,
                approximate=True,
            )
        self._priority_cache()[job_id] = new.priority
        return _Pending(new, event, data, now, reply)

    # -- JobStore -----------------------------------------------------------------------

    async def submit_job(self, job: Job, event: str) -> tuple[JobChange, bool]:
        key = job.idempotency_key
        idem = None if key is None else self.k("jobidem", key)

        async def attempt() -> tuple[JobChange, bool]:
            async with self.r.pipeline(transaction=True) as pipe:
                # A new job's id is random and unseen: only an idempotency key can conflict,
                # so without one the MULTI needs no WATCH (one round trip, not two).
                if idem is not None:
                    await pipe.watch(self._jk(job.id), idem)
                    known = await pipe.get(idem)
                    if known is not None:
                        body = await pipe.get(self._jk(known.decode()))
                        if body is not None:
                            return JobChange(_decode_job(body), None), False
                        # A key left by a job that is gone: this job takes it over.
                pipe.multi()
                pending = self._queue_save(pipe, None, job, event, job.created_at)
                if idem is not None:
                    pipe.set(idem, job.id)
                return self._change(pending, await pipe.execute()), True

        with self._mapped():
            return await self._retrying("submit", attempt)

    async def get_job(self, job_id: str) -> Job | None:
        with self._mapped():
            body = await self.r.get(self._jk(job_id))
        return None if body is None else _decode_job(body)

    async def list_jobs(self, status: str | None, type_: str | None, limit: int) -> list[Job]:
        if limit <= 0:
            return []
        out: list[Job] = []
        filtered = status is not None or type_ is not None
        page = LIST_PAGE if filtered else limit
        scanned = 0
        with self._mapped():
            while len(out) < limit and scanned < (LIST_SCAN if filtered else limit):
                ids = await self.r.zrevrange(self.k("jobs"), scanned, scanned + page - 1)
                if not ids:
                    break
                scanned += len(ids)
                bodies = await self.r.mget([self._jk(i.decode()) for i in ids])
                for body in bodies:
                    if body is None:
                        continue
                    job = _decode_job(body)
                    if (status is None or job.status == status) and (
                        type_ is None or job.type == type_
                    ):
                        out.append(job)
                if len(ids) < page:
                    break
        return out[:limit]

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        with self._mapped():
            raw = await self.r.hgetall(self.k("jobcounts"))
        out: dict[str, dict[str, int]] = {}
        for field, value in raw.items():
            count = int(value)
            if count <= 0:
                continue
            type_, _, status = field.decode().partition("\x00")
            out.setdefault(type_, {})[status] = count
        return out

    async def transition_job(self, job_id: str, fn: Transition, durable: bool = True) -> JobChange:
        async def attempt() -> JobChange:
            async with self.r.pipeline(transaction=True) as pipe:
                [job] = await self._watch_bodies(pipe, [job_id])
                if job is None:
                    raise NotFound(f"no job {job_id!r}")
                now = time.time()
                new, event = fn(job, now)
                pipe.multi()
                pending = self._queue_save(pipe, job, new, event, now)
                return self._change(pending, await pipe.execute())

        with self._mapped():
            return await self._retrying("job transition", attempt)

    async def transition_jobs(self, steps: list[JobStep]) -> list[JobChange | TidingsError]:
        if not steps:
            return []
        ids = list(dict.fromkeys(job_id for job_id, _, _ in steps))

        async def attempt() -> list[JobChange | TidingsError]:
            async with self.r.pipeline(transaction=True) as pipe:
                found = await self._watch_bodies(pipe, ids)
                jobs = {i: j for i, j in zip(ids, found, strict=True) if j is not None}
                now = time.time()
                # Steps are computed before anything is queued: a refusal changes nothing.
                answers = apply_steps(steps, jobs, now)
                if all(isinstance(a, TidingsError) for a in answers):
                    return [a for a in answers if isinstance(a, TidingsError)]
                pipe.multi()
                queued: list[_Pending | TidingsError] = [
                    a if isinstance(a, TidingsError) else self._queue_save(pipe, *a, now)
                    for a in answers
                ]
                replies = await pipe.execute()
                return [
                    q if isinstance(q, TidingsError) else self._change(q, replies) for q in queued
                ]

        with self._mapped():
            return await self._retrying("job transitions", attempt)

    async def lease_jobs(
        self, types: list[str] | None, max_jobs: int, now: float, fn: Transition
    ) -> list[JobChange]:
        from redis.exceptions import WatchError

        wanted = None if types is None else set(types)
        out: list[JobChange] = []
        passed: set[str] = set()  # ids found taken at their re-check: not candidates again
        with self._mapped():
            async with self._job_lock("lease"):
                # Waiting for the lock took time: a lease runs from when it is granted.
                now = max(now, time.time())
                for n in range(MAX_RETRIES):
                    picks = await self._lease_candidates(types, max_jobs - len(out), now, passed)
                    if not picks:
                        return out
                    try:
                        changes, skipped = await self._lease_round(picks, wanted, now, fn)
                    except WatchError:
                        await asyncio.sleep(random.uniform(0, RETRY_JITTER * (n + 1)))  # noqa: S311
                        continue
                    out.extend(changes)
                    passed.update(skipped)
                    if not skipped or len(out) >= max_jobs:
                        return out
        if out:
            return out  # leased and committed: they must reach the caller
        raise StoreError(
            f"lease: the queued jobs changed under it {MAX_RETRIES} times in a row (other "
            "nodes are leasing the same jobs); try again"
        )

    async def _lease_candidates(
        self, types: list[str] | None, count: int, now: float, passed: set[str]
    ) -> list[str]:
        """Ids of up to `count` due queued jobs, by priority then run_at (no guarantee:
        `_lease_round` re-checks each inside the transaction)."""
        if types is None:
            types = sorted(t.decode() for t in await self.r.smembers(self.k("jobtypes")))
        if not types:
            return []
        # The oldest due jobs of each type (enough for this lease), and every queued job
        # with a priority (few, usually none), so a high priority is never missed.
        scan = min(LEASE_SCAN, max(LEASE_MIN_SCAN, 4 * count + len(passed)))
        async with self.r.pipeline(transaction=False) as pipe:
            for type_ in types:
                pipe.zrangebyscore(
                    self.k("queued", type_), "-inf", repr(now), 0, scan, withscores=True
                )
                pipe.zrange(self.k("qprio", type_), 0, LEASE_SCAN - 1)
            replies = await pipe.execute()
        due_by_id = {m.decode(): float(s) for rows in replies[0::2] for m, s in rows}
        ranked = [m.decode() for rows in replies[1::2] for m in rows]
        if ranked:
            async with self.r.pipeline(transaction=False) as pipe:
                for type_, rows in zip(types, replies[1::2], strict=True):
                    if rows:
                        pipe.zmscore(self.k("queued", type_), rows)
                run_ats = [a for part in await pipe.execute() for a in part]
            for job_id, run_at in zip(ranked, run_ats, strict=True):
                if run_at is not None and float(run_at) <= now:
                    due_by_id[job_id] = float(run_at)
        due = [(i, s) for i, s in due_by_id.items() if i not in passed]
        if not due:
            return []
        priorities = self._priority_cache()
        unknown = [i for i, _ in due if i not in priorities]
        for at in range(0, len(unknown), LIST_PAGE):
            chunk = unknown[at : at + LIST_PAGE]
            bodies = await self.r.mget([self._jk(i) for i in chunk])
            for job_id, body in zip(chunk, bodies, strict=True):
                if body is not None:
                    priorities[job_id] = _decode_head(body).priority
        due.sort(key=lambda d: (-priorities.get(d[0], 0), d[1], d[0]))
        return [i for i, _ in due[:count]]

    async def _lease_round(
        self, picks: list[str], wanted: set[str] | None, now: float, fn: Transition
    ) -> tuple[list[JobChange], list[str]]:
        """One transaction: lease those of `picks` still queued and due. Returns the
        changes and the ids skipped; WatchError when another node wrote one of them."""
        async with self.r.pipeline(transaction=True) as pipe:
            found = await self._watch_bodies(pipe, picks)
            fresh = [
                j
                for j in found
                if j is not None
                and j.status == "queued"
                and j.run_at <= now
                and (wanted is None or j.type in wanted)
            ]
            taken = {j.id for j in fresh}
            skipped = [i for i in picks if i not in taken]
            if not fresh:
                return [], skipped
            fresh.sort(key=lambda j: (-j.priority, j.run_at, j.id))
            changes = [(j, *fn(j, now)) for j in fresh]
            pipe.multi()
            pending = [self._queue_save(pipe, old, new, event, now) for old, new, event in changes]
            replies = await pipe.execute()
            return [self._change(p, replies) for p in pending], skipped

    async def expire_jobs(self, now: float, fn: Transition) -> list[JobChange]:
        out: list[JobChange] = []
        with self._mapped():
            async with self._job_lock("expire"):
                now = max(now, time.time())
                raw = await self.r.zrangebyscore(self.k("running"), "-inf", f"({now!r}")
                ids = [i.decode() for i in raw]
                for at in range(0, len(ids), BATCH):
                    chunk = ids[at : at + BATCH]
                    out.extend(await self._retrying("lease expiry", self._expiry(chunk, now, fn)))
        return out

    def _expiry(
        self, ids: list[str], now: float, fn: Transition
    ) -> Callable[[], Awaitable[list[JobChange]]]:
        async def attempt() -> list[JobChange]:
            async with self.r.pipeline(transaction=True) as pipe:
                found = await self._watch_bodies(pipe, ids)
                # The re-check: a lease another node took back (or its worker renewed)
                # since the index was read is no longer running with an expired lease.
                expired = [
                    j
                    for j in found
                    if j is not None
                    and j.status == "running"
                    and j.lease_expires_at is not None
                    and j.lease_expires_at < now
                ]
                if not expired:
                    return []
                changes = [(j, *fn(j, now)) for j in expired]
                pipe.multi()
                pending = [self._queue_save(pipe, old, new, ev, now) for old, new, ev in changes]
                replies = await pipe.execute()
                return [self._change(p, replies) for p in pending]

        return attempt

    async def next_run_at(self) -> float | None:
        with self._mapped():
            types = await self.r.smembers(self.k("jobtypes"))
            if not types:
                return None
            async with self.r.pipeline(transaction=False) as pipe:
                for type_ in types:
                    pipe.zrange(self.k("queued", type_.decode()), 0, 0, withscores=True)
                firsts = await pipe.execute()
        scores = [float(rows[0][1]) for rows in firsts if rows]
        return min(scores, default=None)

    async def sweep_jobs(self, finished_before: float) -> list[str]:
        out: list[str] = []
        with self._mapped():
            raw = await self.r.zrangebyscore(self.k("finished"), "-inf", f"({finished_before!r}")
            ids = [i.decode() for i in raw]
            for at in range(0, len(ids), BATCH):
                chunk = ids[at : at + BATCH]
                out.extend(
                    await self._retrying("job sweep", self._sweeping(chunk, finished_before))
                )
        return out

    def _sweeping(
        self, ids: list[str], finished_before: float
    ) -> Callable[[], Awaitable[list[str]]]:
        async def attempt() -> list[str]:
            async with self.r.pipeline(transaction=True) as pipe:
                found = await self._watch_bodies(pipe, ids)
                # Re-check: a job retried since the index was read is no longer finished.
                gone = [
                    j
                    for j in found
                    if j is not None
                    and j.finished_at is not None
                    and j.finished_at < finished_before
                ]
                missing = [i for i, j in zip(ids, found, strict=True) if j is None]
                idem = [self.k("jobidem", j.idempotency_key) for j in gone if j.idempotency_key]
                owners: list[bytes | None] = []
                if idem:
                    await pipe.watch(*idem)
                    owners = await pipe.mget(idem)
                if not gone and not missing:
                    return []
                pipe.multi()
                for job_id in missing:  # an index entry without a body: drop it
                    pipe.zrem(self.k("finished"), job_id)
                for job in gone:
                    pipe.delete(self._jk(job.id))
                    self.queue_delete(pipe, job_channel(job.id))
                    for index in ("jobs", "finished", "running"):
                        pipe.zrem(self.k(index), job.id)
                    pipe.zrem(self.k("queued", job.type), job.id)
                    pipe.hincrby(self.k("jobcounts"), self._count_field(job), -1)
                gone_ids = {j.id for j in gone}
                for key, owner in zip(idem, owners, strict=True):
                    if owner is not None and owner.decode() in gone_ids:
                        pipe.delete(key)  # still this job's key (not yet reused)
                await pipe.execute()
                cache = self._priority_cache()
                for job in gone:
                    cache.pop(job.id, None)
                return [j.id for j in gone]

        return attempt
