"""Jobs in Redis: msgpack bodies, sorted-set indexes, compare-and-set Lua scripts.

Keys (see tidings.server.stores.redis.core): `{p}job:{id}` holds the msgpack body; the id
sits in exactly one of `{p}waiting` (by created_at), `{p}queued:{type}` (by run_at),
`{p}running` (by lease_expires_at) or `{p}finished` (by finished_at) according to its
status, and in `{p}jobs` (by created_at); `{p}jobkids:{id}` is the set of the jobs
submitted after a job (added by the script that writes the child, only while the parent
exists; deleted when the parent is swept; the write script reports a change that ends a
job with such a set); `{p}jobsettle` holds the settle marks (JobStore.settle_marks: job
id by stamp), written by the write script in the step that ends a job with such a set
or makes a job waiting while a parent has ended or is gone;
`{p}jobcounts` counts jobs per type and status; `{p}jobidem:{key}` maps an idempotency key
to its job; `{p}jobuniq:{type}|{unique_key}` names the queued or running job holding a
unique key (set by the write that makes the job queued or running, deleted by the one that
ends that); `{p}qlimits` holds each job type's limits (a hash: type -> "concurrency|group
concurrency|rate limit|rate per"), `{p}qrate` each rate-limited type's GCRA state (type ->
tat), `{p}grun:{type}` and `{p}gq:{type}` the running and queued jobs of each group of a
type (group -> count, a group gone at 0), all kept by the write script; `{p}wake`
announces to the relays of all nodes every job that becomes queued, and every running job
of a type with limits that stops running (it may let a held job go); `{p}served` is a
sorted set of job types by when a worker last asked for them (the served marks, written
by each node at most once per type every few seconds, so every node answers `served`
alike).

Why every change is applied once, whichever node attempts it
------------------------------------------------------------

A transition is Python (`fn(job, now)`, tidings.server.transitions), so it cannot run inside
Redis as Lua. Each change (or batch of changes) is therefore a compare-and-set:

1. MGET the bodies — the state the change is computed from — and keep a fingerprint of
   each (the SHA-1 of the bytes as read, not of a re-encoding, which could differ for a
   body another version of tidings wrote);
2. apply `fn` in Python (a refusal raises before anything is sent: nothing changes);
3. one EVALSHA of the write script (lua/job_write.lua), which first compares, for every
   job of the batch, the body stored now with the fingerprint it was computed from (a new
   job: no body at all) and, on any difference, writes nothing and answers which job
   differed; otherwise it writes everything: the new body, the id moved between the index
   sets by status, the counts (-1 old status, +1 new), the event appended to the job's
   channel (the `append` function of lua/append.lua, the same Lua as a publish), an XADD
   to `{p}wake` when the job is now queued.

Redis runs a script atomically: no other command runs between its comparisons and its
writes. The body is the only input of a transition and every change writes it, so a
change commits only against the body it was computed from: two changes of one job are
serialised, and each commits against the state it saw. A batch commits whole or not at
all. When the script answers a difference, the attempt starts again from step 1 with the
fresh body and re-checks its precondition, so a change whose reason went away is skipped
rather than applied twice:

* lease_jobs: a job handed out by another node is no longer queued at the re-check, so
  it is skipped — no job goes to two callers. A lease of a type with limits is picked
  within them from the counters as read, and the script checks them again against the
  counters it holds (running jobs per type and group, the rate's tat) before it writes:
  when another node's lease used them up meanwhile, it writes nothing and the lease
  picks again — so leases never pass a limit, whichever nodes take them;
* expire_jobs: an expired lease that another node already took back is no longer running
  with an expired lease, so it is skipped — it is requeued (its attempt counted, its
  event published) once;
* transition_job(s): a complete/fail after a concurrent change sees the new state and
  its transition decides again (a spent lease token is a Conflict).

A fingerprint, not a version: the Job body has no version field, and sending the whole
old body back would double the traffic of large payloads, while 40 hex digits compare in
constant size (Lua computes them with `redis.sha1hex`). Equal fingerprints of different
bodies would need a SHA-1 collision between two bodies that carry server-chosen times and
random lease tokens: not a practical risk. A body changed and then changed back to the
very same bytes passes the comparison, which is still right: the change is then applied
to exactly the state it was computed from. Two changes of one job in one batch
(transition_jobs) are compared in order, the second against the body the first writes.

Redis does not roll back a script that fails midway, so the script does every check
first — the argument count, each fingerprint, each number it will hand to ZADD, the
idempotency key, the unique keys — and writes only after all passed. What remains that could fail at
run time is a wrong key type or an out-of-order XADD id, which this layout never creates
(only a foreign writer under the same prefix could), or the memory limit, which Redis
checks at a script's first write.

The indexes, counts and channel message are written by the same script as the body, so
every reader sees them agree with the bodies. Retries are bounded (MAX_RETRIES, with a
little random back-off); past that the call fails with StoreError and its last attempt
changed nothing (a lease that already committed some jobs returns those instead; expiry
and sweep commit BATCH jobs per script call or transaction). Within one process, the
lease_jobs calls take turns, and so do the expire_jobs calls (an asyncio lock each), so
their conflicts arise only between nodes, not between the requests of one node.

A node remembers the bodies of the unfinished jobs it wrote last (`_read_known`), and a
lease or a report of those jobs is computed from them without an MGET: the comparison in
the script makes that as safe as a read (a body changed elsewhere makes the call write
nothing; the copies are dropped and the retry reads Redis). What no write would check is
never decided on a copy: a refused step or a skipped lease candidate is decided again on
the bodies read from Redis.

A submit needs no read: a new job's id is random and unseen, so its script call expects
no body under that id; with an idempotency key, the script itself answers the job the
key already names (when that job still exists) instead of writing. sweep_jobs, off the
hot path, is an optimistic transaction (WATCH, MGET, MULTI/EXEC); WATCH sees the
writes of scripts too, and a script comparing against a swept body finds none.

Limits, stated:

* Durability is Redis's own (its `appendonly`/`appendfsync`): `durable=False` changes
  nothing here. A connection lost during a script call surfaces as a StoreError, or
  (redis-py sends the call again) as a comparison that finds its own change already
  applied: lease and expiry then skip the job (the lease ends unheld and is taken back
  later: at-least-once), a complete answers Conflict, a submit finds its own body and
  answers it as created.
* Times come from the clock of the node making the change: skewed clocks move when a
  lease counts as expired, never how often it is taken back. A queue's rate is the
  exception: it is checked by Redis's clock (TIME, in the write script, and read with the
  counters a lease picks by), so a node whose clock runs ahead gets no extra burst.
* lease_jobs reads, per type, the oldest due jobs (4x what it asks for, at least
  LEASE_MIN_SCAN) plus every queued job with a non-zero priority (`{p}qprio:{type}`, up
  to LEASE_SCAN, highest first): positive priorities are always served first; a job with
  a negative priority is ordered exactly only among the jobs read. Priorities (which no
  transition of tidings.server.transitions changes) are cached per process, so a lease reads
  ids, not bodies.
* list_jobs pages newest first through `{p}jobs` after a (created_at, id) cursor. With a
  filter it first reads `{p}jobcounts` (no match anywhere: an empty last page at once);
  queued or running jobs are then read from their state's index when that holds at most
  JOB_LIST_SCAN jobs (an exact page); otherwise it examines at most JOB_LIST_SCAN jobs
  (their type and status only) and may answer a short page, even an empty one, with a
  `next` cursor where it stopped.
* The write script declares in KEYS the keys every call writes (indexes, counts, wake
  stream), and names the keys of each job (body, queue of its type, channel) from the
  store's prefix, as the auth part's prune script does. Like the store's multi-key
  transactions, this assumes one Redis, not a Cluster.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from redis.commands.core import AsyncScript
from redis.exceptions import WatchError

from tidings.protocol.errors import Conflict, NotFound, StoreError, TidingsError
from tidings.protocol.jobs import Job, QueueLimits, RateLimit, job_channel
from tidings.server.stores.base import (
    JobChange,
    JobCursor,
    JobPage,
    JobStep,
    JobStore,
    Transition,
    apply_steps,
    claims_unique,
    job_event_data,
    releases_unique,
    settle_stamp,
    unique_held,
)
from tidings.server.stores.common import (
    JOB_LIST_SCAN,
    SERVED_MARK_TTL,
    SERVED_MARKS,
    decode_job,
    encode_json,
    encode_msgpack,
)
from tidings.server.stores.limits import Allowance, LimitCounters
from tidings.server.stores.redis.channels import RedisChannels
from tidings.server.stores.redis.core import RedisCore, lua

__all__ = ["RedisJobs"]

T = TypeVar("T")

# Attempts of one compare-and-set (or transaction) before giving up with StoreError.
MAX_RETRIES = 50
# Upper bound of the random pause after the n-th conflict: n * RETRY_JITTER seconds.
RETRY_JITTER = 0.002
# Due jobs per type a lease considers (oldest run_at first) when ordering by priority.
LEASE_SCAN = 1000
# A lease reads at least this many of the oldest due jobs of a type (4x what it asks for).
LEASE_MIN_SCAN = 64
# Jobs per script call (or transaction) in expire_jobs and sweep_jobs.
BATCH = 100
# Jobs a filtered list_jobs reads per round trip (it examines at most JOB_LIST_SCAN).
LIST_PAGE = 500
# Approximate length the wake stream is trimmed to.
WAKE_MAXLEN = 10_000
# Job priorities remembered per process (cleared when full).
PRIORITY_CACHE_MAX = 200_000
# Seconds a node keeps its copy of the queue limits for picking leases (the write script
# checks the limits Redis holds).
LIMITS_CACHE = 1.0
# Bodies of unfinished jobs this process wrote last, remembered so a lease or a report can
# skip reading them (cleared when full; see `_read_known`).
BODY_CACHE_MAX = 100_000

# The first element of the write script's reply.
_DIFFERS, _WRITTEN, _KNOWN, _HELD, _LIMITED = 0, 1, 2, 3, 4

# The compare-and-set write of a batch of job changes (KEYS, ARGV and reply described in
# lua/job_write.lua); it starts with the channel part's append function (lua/append.lua),
# so a job's event is appended by the same Lua as a publish.
_WRITE = lua("append.lua", "job_write.lua")
# Clears settle marks whose stamp is still the one given.
_SETTLE_CLEAR = lua("settle_clear.lua")


class _Head(msgspec.Struct):
    """The part of a job body a lease orders and limits by (decoding skips the rest)."""

    priority: int = 0
    group: str | None = None


_decode_head = msgspec.msgpack.Decoder(_Head).decode


class _ListHead(msgspec.Struct):
    """The part of a job body a filtered listing looks at."""

    type: str = ""
    status: str = ""


_decode_list_head = msgspec.msgpack.Decoder(_ListHead).decode

# A job change to write: (job before, None for a new one; job after; event or None).
_Change = tuple[Job | None, Job, str | None]


def _fingerprint(body: bytes) -> str:
    """What the write script compares a stored body with (it computes `redis.sha1hex`)."""
    return hashlib.sha1(body, usedforsecurity=False).hexdigest()


def _num(value: float | None) -> str:
    """A score or time as the script takes it ("" for none); repr keeps every digit."""
    return "" if value is None else repr(value)


class _Differs(Exception):
    """The write script found a job's body changed since it was read: it wrote nothing."""


class _Limited(_Differs):
    """The write script found that a lease would pass a limit of its type (other nodes
    leased meanwhile): it wrote nothing, and the lease picks again."""


def _count_of(counts: dict[str, int], name: str) -> int:
    return counts.get(name, 0)


def _pack_limits(limits: QueueLimits) -> str:
    """A type's limits as `{p}qlimits` holds them (the write script unpacks them)."""
    rate = limits.rate
    return "|".join(
        "" if value is None else repr(value)
        for value in (
            limits.concurrency,
            limits.group_concurrency,
            None if rate is None else rate.limit,
            None if rate is None else float(rate.per),
        )
    )


def _unpack_limits(packed: str) -> QueueLimits:
    concurrency, group, limit, per = (part or None for part in packed.split("|"))
    return QueueLimits(
        RateLimit(int(limit), float(per)) if limit is not None and per is not None else None,
        None if concurrency is None else int(concurrency),
        None if group is None else int(group),
    )


class _Held(Exception):
    """The write script found that a change would take a unique key another job holds:
    it wrote nothing. `index` is the change's place in the call, `holder` that job."""

    def __init__(self, index: int, holder: Job) -> None:
        super().__init__(f"unique key held by job {holder.id}")
        self.index = index
        self.holder = holder


@dataclass(frozen=True)
class _Written:
    """A job change sent to the write script, kept to build its JobChange from the reply."""

    job: Job
    body: bytes
    event: str | None
    data: dict[str, Any] | None


class RedisJobs(JobStore):
    """The JobStore part of the Redis store (see the module docstring for the argument).

    Args:
        core: the connections and key names shared with the other parts.
        channels: the channel part, whose `appended` makes the Published of a job event
            the write script appended, and whose `queue_delete` removes a job's channel
            when the job is swept.
    """

    _write_script: AsyncScript
    _clear_script: AsyncScript

    def __init__(self, core: RedisCore, channels: RedisChannels) -> None:
        self._core = core
        self._key = core.key
        self._errors = core.errors
        self._appended = channels.appended
        self._queue_channel_delete = channels.queue_delete
        self._default_keep = core.default_retention.max_messages
        # The lease_jobs calls of this process take turns, and so do its expire_jobs calls.
        self._lease_lock = asyncio.Lock()
        self._expire_lock = asyncio.Lock()
        # Per job id, its priority and group (neither changes after the submit).
        self._heads: dict[str, tuple[int, str | None]] = {}
        self._bodies: dict[str, bytes] = {}
        # Jobs a filtered list_jobs call examines at most.
        self.list_scan = JOB_LIST_SCAN
        # The queue limits as last read, and when (see `_known_limits`).
        self._limits: dict[str, QueueLimits] = {}
        self._limits_at = -math.inf

    def register_scripts(self) -> None:
        """Register this part's Lua script (once the core is open)."""
        self._write_script = self._core.script(_WRITE)
        self._clear_script = self._core.script(_SETTLE_CLEAR)

    # -- helpers ------------------------------------------------------------------------

    def _body_cache(self) -> dict[str, bytes]:
        if len(self._bodies) > BODY_CACHE_MAX:
            self._bodies = {}
        return self._bodies

    def _head_cache(self) -> dict[str, tuple[int, str | None]]:
        if len(self._heads) > PRIORITY_CACHE_MAX:
            self._heads = {}
        return self._heads

    def _job_key(self, job_id: str) -> str:
        return self._key("job", job_id)

    @staticmethod
    def _count_field(job: Job) -> str:
        return f"{job.type}\x00{job.status}"

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run a compare-and-set (or optimistic transaction) until it commits (or has no
        write to make)."""
        for n in range(MAX_RETRIES):
            try:
                return await attempt()
            except (_Differs, WatchError):
                await asyncio.sleep(random.uniform(0, RETRY_JITTER * (n + 1)))  # noqa: S311
        raise StoreError(
            f"{what}: the jobs changed under it {MAX_RETRIES} times in a row (other nodes "
            "are writing the same jobs); try again"
        )

    async def _read(self, ids: list[str]) -> tuple[dict[str, Job], dict[str, str]]:
        """The jobs of `ids` that exist, and the fingerprint of each body as read."""
        bodies = await self._core.client.mget([self._job_key(job_id) for job_id in ids])
        jobs: dict[str, Job] = {}
        prints: dict[str, str] = {}
        for job_id, body in zip(ids, bodies, strict=True):
            if body is not None:
                jobs[job_id] = decode_job(body)
                prints[job_id] = _fingerprint(body)
        return jobs, prints

    def _read_known(self, ids: list[str]) -> tuple[dict[str, Job], dict[str, str]] | None:
        """The jobs of `ids` as this process last wrote them, when it wrote them all; else
        None (read Redis). Safe because the write compares each body with Redis's: a body
        changed elsewhere since makes it write nothing (_Differs), the bodies are dropped,
        and the retry reads Redis. A caller must not refuse or skip a job on such a read
        alone, which no write would check."""
        cache = self._body_cache()
        jobs: dict[str, Job] = {}
        prints: dict[str, str] = {}
        for job_id in ids:
            body = cache.get(job_id)
            if body is None:
                return None
            jobs[job_id] = decode_job(body)
            prints[job_id] = _fingerprint(body)
        return jobs, prints

    def _forget_bodies(self, ids: Iterable[str]) -> None:
        cache = self._body_cache()
        for job_id in ids:
            cache.pop(job_id, None)

    async def _watch_bodies(self, pipe: Any, ids: list[str]) -> list[Job | None]:
        """WATCH the bodies of `ids` and read them (pipe in immediate mode; the sweep)."""
        keys = [self._job_key(job_id) for job_id in ids]
        await pipe.watch(*keys)
        bodies = await pipe.mget(keys)
        return [None if body is None else decode_job(body) for body in bodies]

    def _write_call(
        self, changes: Sequence[_Change], prints: dict[str, str], now: float
    ) -> tuple[list[str], list[Any], list[_Written]]:
        """The keys and arguments of one write script call (see lua/job_write.lua).

        `prints` holds the fingerprint of each changed job's body as read; it is updated
        as changes are laid out, so a second change of a job expects the first one's body.
        """
        keys = [
            self._key("jobs"),
            self._key("jobtypes"),
            self._key("jobcounts"),
            self._key("running"),
            self._key("finished"),
            self._key("wake"),
            self._key("channels"),
            self._key("qlimits"),
            self._key("qrate"),
        ]
        args: list[Any] = [repr(now), self._default_keep, WAKE_MAXLEN, self._core.prefix]
        written: list[_Written] = []
        for old, new, event in changes:
            body = encode_msgpack(new)
            expected = "" if old is None else prints[new.id]
            prints[new.id] = _fingerprint(body)
            data = None if event is None else job_event_data(new)
            args += [
                encode_msgpack(self._change_fields(expected, old, new, event)),
                body,
                b"" if data is None else encode_json(data),
            ]
            written.append(_Written(new, body, event, data))
        return keys, args, written

    def _change_fields(
        self, expected: str, old: Job | None, new: Job, event: str | None
    ) -> tuple[str, ...]:
        """The fields of one job change, as the write script unpacks them (`parse_change`)."""
        score: float | None = None
        if new.status == "queued":
            score = new.run_at
        elif new.status == "running":
            expires = new.lease_expires_at
            score = float("inf") if expires is None else expires
        return (
            expected,
            new.id,
            new.type if old is None else old.type,
            new.type,
            new.status,
            _num(score),
            str(-new.priority) if new.status == "queued" and new.priority else "",
            _num(new.finished_at),
            repr(new.created_at),
            "" if old is None else self._count_field(old),
            self._count_field(new),
            job_channel(new.id),
            event or "",
            "" if new.unique_key is None else f"{new.type}|{new.unique_key}",
            self._unique_op(old, new),
            new.group or "",
            "1" if new.terminal and (old is None or not old.terminal) else "",
            repr(settle_stamp(new)),
            self._parents_field(old, new),
        )

    @staticmethod
    def _parents_field(old: Job | None, new: Job) -> str:
        """The parents the write script looks at (JSON; "" for none): those of a new job
        (it goes into their `jobkids`), and of a job made waiting (marked to be settled
        when one has ended or is gone)."""
        if not new.after:
            return ""
        if old is None or (new.status == "waiting" and old.status != "waiting"):
            return encode_json(new.after).decode()
        return ""

    @staticmethod
    def _unique_op(old: Job | None, new: Job) -> str:
        """What a change does with its job's unique key: "claim" (it becomes waiting,
        queued or running), "release" (it stops being any of those) or nothing ("")."""
        if claims_unique(old, new):
            return "claim"
        if releases_unique(old, new):
            return "release"
        return ""

    def _changes(self, written: list[_Written], reply: list[Any], now: float) -> list[JobChange]:
        """The JobChange of each written change, from the script's reply."""
        out = []
        heads = self._head_cache()
        bodies = self._body_cache()
        # After the appends, a flag per change: 1 it ended a job with dependents, 2 it
        # made a job waiting that is to be settled (either way its job is marked).
        flags = [int(flag) for flag in reply[1 + 3 * len(written) :]]
        for n, change in enumerate(written):
            job = change.job
            heads[job.id] = (job.priority, job.group)
            if job.finished_at is None:
                bodies[job.id] = change.body
            else:
                bodies.pop(job.id, None)
            published = None
            if change.data is not None:
                appended = reply[1 + 3 * n : 4 + 3 * n]
                published = self._appended(
                    job_channel(job.id), change.data, change.event, now, appended
                )
            flag = flags[n]
            marked = settle_stamp(job) if flag else None
            out.append(JobChange(job, published, flag == 1, marked))
        return out

    async def _write(
        self, changes: Sequence[_Change], prints: dict[str, str], now: float
    ) -> list[JobChange]:
        """Write `changes` in one script call, each only against the body it was computed
        from (`prints`); _Differs, with nothing written, when one has changed since."""
        keys, args, written = self._write_call(changes, prints, now)
        reply = await self._write_script(keys=keys, args=args, client=self._core.client)
        if reply[0] == _DIFFERS:
            self._forget_bodies(change.job.id for change in written)
            raise _Differs(f"job {written[int(reply[1]) - 1].job.id} changed")
        if reply[0] == _HELD:
            raise _Held(int(reply[1]) - 1, decode_job(reply[2]))
        if reply[0] == _LIMITED:
            raise _Limited(f"leasing job {written[int(reply[1]) - 1].job.id} passes a limit")
        return self._changes(written, reply, now)

    # -- JobStore -----------------------------------------------------------------------

    async def submit_job(self, job: Job, event: str) -> tuple[JobChange, bool]:
        # A new job's id is random and unseen: nothing to read first. The script checks
        # that no body has that id, and answers the job an idempotency key already names.
        keys, args, written = self._write_call([(None, job, event)], {}, job.created_at)
        if job.idempotency_key is not None:
            keys.append(self._key("jobidem", job.idempotency_key))
        with self._errors:
            reply = await self._write_script(keys=keys, args=args, client=self._core.client)
            if reply[0] == _KNOWN:
                # The key's job; this very job when a call that redis-py sent again after
                # a lost reply finds its first sending committed (its event is published).
                # Another submit of the same id (a schedule's slot fired by two nodes) made
                # the job at another time.
                known = decode_job(reply[1])
                return JobChange(known, None), (known.id, known.created_at) == (
                    job.id,
                    job.created_at,
                )
            if reply[0] == _HELD:
                # The job holding the unique key; this very job when a call sent again
                # after a lost reply finds its first sending committed.
                holder = decode_job(reply[2])
                return JobChange(holder, None), (holder.id, holder.created_at) == (
                    job.id,
                    job.created_at,
                )
            if reply[0] == _DIFFERS:
                if await self._core.client.get(self._job_key(job.id)) == written[0].body:
                    return JobChange(job, None), True  # the same: this call committed it
                raise StoreError(
                    f"a job with id {job.id!r} already exists: submit it again (ids are random)"
                )
        return self._changes(written, reply, job.created_at)[0], True

    async def get_job(self, job_id: str) -> Job | None:
        with self._errors:
            body = await self._core.client.get(self._job_key(job_id))
        return None if body is None else decode_job(body)

    async def submit_jobs(self, jobs: list[Job], events: list[str]) -> list[JobChange]:
        # New ids, random and unseen: nothing to read first; one script call writes them
        # all or (a body under one of the ids, a unique key held) none.
        now = jobs[0].created_at if jobs else time.time()
        changes: list[_Change] = [(None, job, e) for job, e in zip(jobs, events, strict=True)]
        keys, args, written = self._write_call(changes, {}, now)
        with self._errors:
            reply = await self._write_script(keys=keys, args=args, client=self._core.client)
            if reply[0] == _DIFFERS:
                n = int(reply[1]) - 1
                if await self._core.client.get(self._job_key(jobs[n].id)) == written[n].body:
                    # A call redis-py sent again after a lost reply: the first committed.
                    return [JobChange(job, None) for job in jobs]
            if reply[0] == _HELD:
                job = jobs[int(reply[1]) - 1]
                raise unique_held(job, decode_job(reply[2]).id)
            if reply[0] == _DIFFERS:
                job = jobs[int(reply[1]) - 1]
                raise Conflict(
                    f"a job with id {job.id!r} already exists: nothing of the batch was made "
                    "(ids are random: submit it again)"
                )
        return self._changes(written, reply, now)

    async def get_jobs(self, job_ids: list[str]) -> dict[str, Job]:
        ids = list(dict.fromkeys(job_ids))
        out: dict[str, Job] = {}
        with self._errors:
            for at in range(0, len(ids), LIST_PAGE):
                chunk = ids[at : at + LIST_PAGE]
                bodies = await self._core.client.mget([self._job_key(i) for i in chunk])
                for job_id, body in zip(chunk, bodies, strict=True):
                    if body is not None:
                        out[job_id] = decode_job(body)
        return out

    async def dependents(self, job_id: str) -> list[str]:
        with self._errors:
            members = await self._core.client.smembers(self._key("jobkids", job_id))
        return sorted(m.decode() for m in members)

    async def settle_marks(self, limit: int) -> list[tuple[str, float]]:
        if limit <= 0:  # ZRANGE 0 -1 would be every mark
            return []
        with self._errors:
            rows = await self._core.client.zrange(
                self._key("jobsettle"), 0, limit - 1, withscores=True
            )
        return [(job_id.decode(), float(stamp)) for job_id, stamp in rows]

    async def clear_settle_marks(self, marks: list[tuple[str, float]]) -> None:
        if not marks:
            return
        args = [part for job_id, stamp in marks for part in (job_id, repr(stamp))]
        with self._errors:
            await self._clear_script(
                keys=[self._key("jobsettle")], args=args, client=self._core.client
            )

    async def list_jobs(
        self,
        status: str | None,
        type_: str | None,
        limit: int,
        before: JobCursor | None = None,
    ) -> JobPage:
        if limit <= 0:
            return JobPage([], None)
        with self._errors:
            if status is None and type_ is None:
                return await self._scan_jobs(None, None, limit, before, limit + 1)
            counts = await self.queue_counts()
            matching = sum(
                count
                for job_type, per in counts.items()
                if type_ is None or job_type == type_
                for job_status, count in per.items()
                if status is None or job_status == status
            )
            if matching == 0:
                return JobPage([], None)
            if status in ("queued", "running", "waiting"):
                # The state's own index (`running` and `waiting` hold every type) read
                # whole, when it is small, makes the page exact.
                size = sum(
                    per.get(status, 0)
                    for job_type, per in counts.items()
                    if status != "queued" or type_ is None or job_type == type_
                )
                if size <= self.list_scan:
                    return await self._list_state(status, type_, limit, before)
            return await self._scan_jobs(status, type_, limit, before, self.list_scan)

    async def _older(self, before: JobCursor | None, count: int) -> list[tuple[str, float]]:
        """Up to `count` (id, created_at) of `{p}jobs`, newest first, older than `before`;
        fewer only when no more exist.

        Members of equal score sort by id, as the listing orders jobs: the ones at the
        cursor's own score that are not older than it come first, and are passed over.
        """
        client = self._core.client
        top = "+inf" if before is None else repr(before.created_at)
        out: list[tuple[str, float]] = []
        passing = before is not None
        offset = 0
        while len(out) < count:
            want = count - len(out)
            rows = await client.zrevrangebyscore(
                self._key("jobs"), top, "-inf", start=offset, num=want, withscores=True
            )
            offset += len(rows)
            for member, score in rows:
                entry = (member.decode(), float(score))
                if passing and before is not None and (entry[1], entry[0]) >= before.key():
                    continue
                passing = False
                out.append(entry)
            if len(rows) < want:
                break
        return out

    async def _scan_jobs(
        self,
        status: str | None,
        type_: str | None,
        limit: int,
        before: JobCursor | None,
        budget: int,
    ) -> JobPage:
        """A page read from `{p}jobs` newest first, examining at most `budget` jobs (at
        least limit + 1); short, with a `next` where it stopped, when the budget ran out."""
        filtered = status is not None or type_ is not None
        budget = max(budget, limit + 1)
        out: list[Job] = []
        cursor = before
        examined = 0
        while examined < budget:
            want = min(LIST_PAGE if filtered else limit + 1 - len(out), budget - examined)
            rows = await self._older(cursor, want)
            examined += len(rows)
            bodies = await self._core.client.mget([self._job_key(job_id) for job_id, _ in rows])
            for (job_id, created_at), body in zip(rows, bodies, strict=True):
                cursor = JobCursor(created_at, job_id)
                if body is None:
                    continue  # swept since the index was read
                if filtered:
                    head = _decode_list_head(body)
                    if (status is not None and head.status != status) or (
                        type_ is not None and head.type != type_
                    ):
                        continue
                if len(out) == limit:  # one more exists: the page is full and not the last
                    return JobPage(out, JobCursor.of(out[-1]))
                out.append(decode_job(body))
            if len(rows) < want:
                return JobPage(out, None)
        return JobPage(out, cursor)

    async def _list_state(
        self, status: str, type_: str | None, limit: int, before: JobCursor | None
    ) -> JobPage:
        """A page of the waiting, queued or running jobs from their state's index (small: see
        list_jobs), ordered by the creation times of `{p}jobs`."""
        client = self._core.client
        if status in ("running", "waiting"):
            keys = [self._key(status)]
        else:
            if type_ is not None:
                types = [type_]
            else:
                types = sorted(t.decode() for t in await client.smembers(self._key("jobtypes")))
            keys = [self._key("queued", t) for t in types]
        async with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.zrange(key, 0, self.list_scan)
            ids = list(dict.fromkeys(m.decode() for rows in await pipe.execute() for m in rows))
        if not ids:
            return JobPage([], None)
        scores = await client.zmscore(self._key("jobs"), ids)
        entries = sorted(
            (
                (float(score), job_id)
                for job_id, score in zip(ids, scores, strict=True)
                if score is not None
            ),
            reverse=True,
        )
        if before is not None:
            entries = [entry for entry in entries if entry < before.key()]
        out: list[Job] = []
        for at in range(0, len(entries), LIST_PAGE):
            chunk = entries[at : at + LIST_PAGE]
            bodies = await client.mget([self._job_key(job_id) for _, job_id in chunk])
            for body in bodies:
                if body is None:
                    continue
                job = decode_job(body)  # re-checked: it may have moved on since
                if job.status != status or (type_ is not None and job.type != type_):
                    continue
                if len(out) == limit:
                    return JobPage(out, JobCursor.of(out[-1]))
                out.append(job)
        return JobPage(out, None)

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        with self._errors:
            raw = await self._core.client.hgetall(self._key("jobcounts"))
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
            jobs, prints = await self._read([job_id])
            job = jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            now = time.time()
            new, event = fn(job, now)
            try:
                [change] = await self._write([(job, new, event)], prints, now)
            except _Held as held:
                raise unique_held(new, held.holder.id) from None
            return change

        with self._errors:
            return await self._retrying("job transition", attempt)

    async def transition_jobs(self, steps: list[JobStep]) -> list[JobChange | TidingsError]:
        if not steps:
            return []
        ids = list(dict.fromkeys(job_id for job_id, _, _ in steps))
        # Steps refused because the unique key they would take is held (found by the write
        # script): the next attempt leaves them out. Keyed by their place in `steps`.
        held: dict[int, TidingsError] = {}

        async def attempt() -> list[JobChange | TidingsError]:
            now = time.time()
            todo = [step for n, step in enumerate(steps) if n not in held]
            known = self._read_known(ids)
            answers = None
            if known is not None:
                jobs, prints = known
                answers = apply_steps(todo, dict(jobs), now)
                if any(isinstance(answer, TidingsError) for answer in answers):
                    answers = None  # a refusal is decided on what Redis holds, never a copy
            if answers is None:
                jobs, prints = await self._read(ids)
                # Steps are computed before anything is sent: a refusal changes nothing.
                answers = apply_steps(todo, jobs, now)
            places = [n for n in range(len(steps)) if n not in held]
            changes: list[_Change] = []
            changed_at: list[int] = []  # the place in `steps` of each change
            for n, answer in zip(places, answers, strict=True):
                if not isinstance(answer, TidingsError):
                    changes.append(answer)
                    changed_at.append(n)
            written: list[JobChange] = []
            if changes:
                try:
                    written = await self._write(changes, prints, now)
                except _Held as refused:
                    new = changes[refused.index][1]
                    held[changed_at[refused.index]] = unique_held(new, refused.holder.id)
                    raise _Differs("a unique key is held: again without that step") from None
            out: dict[int, JobChange | TidingsError] = dict(held)
            out.update(zip(changed_at, written, strict=True))
            for n, answer in zip(places, answers, strict=True):
                if isinstance(answer, TidingsError):
                    out[n] = answer
            return [out[n] for n in range(len(steps))]

        with self._errors:
            return await self._retrying("job transitions", attempt)

    async def lease_jobs(
        self, types: list[str] | None, max_jobs: int, now: float, fn: Transition
    ) -> list[JobChange]:
        wanted = None if types is None else set(types)
        out: list[JobChange] = []
        passed: set[str] = set()  # ids found taken at their re-check: not candidates again
        with self._errors:
            async with self._lease_lock:
                # Waiting for the lock took time: a lease runs from when it is granted.
                now = max(now, time.time())
                for n in range(MAX_RETRIES):
                    picks = await self._lease_candidates(types, max_jobs - len(out), now, passed)
                    if not picks:
                        return out
                    try:
                        changes, skipped = await self._lease_round(picks, wanted, now, fn)
                    except _Differs as exc:
                        if isinstance(exc, _Limited):
                            self._limits_at = -math.inf  # picked on limits since changed
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
        `_lease_round` re-checks each, and its write compares their bodies)."""
        if types is None:
            known_types = await self._core.client.smembers(self._key("jobtypes"))
            types = sorted(type_.decode() for type_ in known_types)
        if not types:
            return []
        # The limits of these types decide how many of the oldest due jobs of each to read.
        known = await self._known_limits()
        limited = {type_: known[type_] for type_ in types if type_ in known}
        # The oldest due jobs of each type (enough for this lease), and every queued job
        # with a priority (few, usually none), so a high priority is never missed.
        scan = min(LEASE_SCAN, max(LEASE_MIN_SCAN, 4 * count + len(passed)))
        async with self._core.client.pipeline(transaction=False) as pipe:
            for type_ in types:
                pipe.zrangebyscore(
                    self._key("queued", type_), "-inf", repr(now), 0, scan, withscores=True
                )
                pipe.zrange(self._key("qprio", type_), 0, LEASE_SCAN - 1)
            replies = await pipe.execute()
        due_by_id: dict[str, float] = {}
        types_of: dict[str, str] = {}
        for type_, rows in zip(types, replies[0::2], strict=True):
            for member, run_at in rows:
                job_id = member.decode()
                due_by_id[job_id] = float(run_at)
                types_of[job_id] = type_
        grouped = {t: lim for t, lim in limited.items() if lim.group_concurrency is not None}
        for type_, rows in (await self._group_candidates(grouped, count, now)).items():
            for job_id, run_at in rows:
                due_by_id[job_id] = run_at
                types_of[job_id] = type_
        ranked = [job_id.decode() for rows in replies[1::2] for job_id in rows]
        if ranked:
            async with self._core.client.pipeline(transaction=False) as pipe:
                for type_, rows in zip(types, replies[1::2], strict=True):
                    if rows:
                        pipe.zmscore(self._key("queued", type_), rows)
                run_ats = [run_at for part in await pipe.execute() for run_at in part]
            ranked_types = [t for t, rows in zip(types, replies[1::2], strict=True) for _ in rows]
            for job_id, run_at, type_ in zip(ranked, run_ats, ranked_types, strict=True):
                if run_at is not None and float(run_at) <= now:
                    due_by_id[job_id] = float(run_at)
                    types_of[job_id] = type_
        due = [(job_id, run_at) for job_id, run_at in due_by_id.items() if job_id not in passed]
        if not due:
            return []
        heads = self._head_cache()
        unknown = [job_id for job_id, _ in due if job_id not in heads]
        for at in range(0, len(unknown), LIST_PAGE):
            chunk = unknown[at : at + LIST_PAGE]
            bodies = await self._core.client.mget([self._job_key(job_id) for job_id in chunk])
            for job_id, body in zip(chunk, bodies, strict=True):
                if body is not None:
                    head = _decode_head(body)
                    heads[job_id] = (head.priority, head.group)
        due.sort(key=lambda pick: (-heads.get(pick[0], (0, None))[0], pick[1], pick[0]))
        if not limited:
            return [job_id for job_id, _ in due[:count]]
        # Within the limits as read (the write script checks them again).
        allowances = await self._allowances(limited, now)
        picks: list[str] = []
        for job_id, _ in due:
            if len(picks) >= count:
                break
            allowance = allowances.get(types_of.get(job_id, ""))
            if allowance is not None and not allowance.take(heads.get(job_id, (0, None))[1]):
                continue
            picks.append(job_id)
        return picks

    async def _group_candidates(
        self, grouped: dict[str, QueueLimits], count: int, now: float
    ) -> dict[str, list[tuple[str, float]]]:
        """Per type with a group_concurrency: the oldest due jobs of its groups below their
        limit (those with the earliest due jobs first, at most `count` groups, each as
        many as it may still run), read from the groups' own queues, so a full group's
        backlog queued ahead hides none of them."""
        if not grouped or count <= 0:
            return {}
        client = self._core.client
        names = list(grouped)
        async with client.pipeline(transaction=False) as pipe:
            for type_ in names:
                pipe.hgetall(self._key("grun", type_))
            running = [
                {g.decode(): int(c) for g, c in reply.items()} for reply in await pipe.execute()
            ]
        async with client.pipeline(transaction=False) as pipe:
            for type_, counts in zip(names, running, strict=True):
                cap = grouped[type_].group_concurrency or 0
                full = sum(1 for c in counts.values() if c >= cap)
                pipe.zrangebyscore(self._key("gheads", type_), "-inf", repr(now), 0, count + full)
            heads = await pipe.execute()
        wanted: list[tuple[str, str]] = []
        async with client.pipeline(transaction=False) as pipe:
            for type_, counts, groups in zip(names, running, heads, strict=True):
                cap = grouped[type_].group_concurrency or 0
                for raw in groups:
                    group = raw.decode()
                    room = cap - counts.get(group, 0)
                    if room > 0:
                        wanted.append((type_, group))
                        pipe.zrangebyscore(
                            self._key("gqz", f"{type_}\x00{group}"),
                            "-inf",
                            repr(now),
                            0,
                            min(room, count),
                            withscores=True,
                        )
            replies = await pipe.execute() if wanted else []
        out: dict[str, list[tuple[str, float]]] = {}
        for (type_, _), rows in zip(wanted, replies, strict=True):
            out.setdefault(type_, []).extend((m.decode(), float(s)) for m, s in rows)
        return out

    async def _known_limits(self) -> dict[str, QueueLimits]:
        """The queue limits, read again when LIMITS_CACHE seconds old (or after a write
        refused a lease on limits since changed). A lease picks within them; the write
        script checks the limits Redis holds, whatever this copy says."""
        now = time.monotonic()
        if now - self._limits_at >= LIMITS_CACHE:
            raw = await self._core.client.hgetall(self._key("qlimits"))
            self._limits = {t.decode(): _unpack_limits(p.decode()) for t, p in raw.items()}
            self._limits_at = now
        return self._limits

    async def _allowances(
        self, limited: dict[str, QueueLimits], now: float
    ) -> dict[str, Allowance]:
        """What a lease may take of each type `limited` (as this node's copy says), from
        the limits and counters in Redis now: a copy older than a lift or a raise holds
        back nothing it should not."""
        names = list(limited)
        async with self._core.client.pipeline(transaction=False) as pipe:
            pipe.hmget(self._key("qlimits"), names)
            pipe.hmget(self._key("jobcounts"), [f"{t}\x00running" for t in names])
            pipe.hmget(self._key("qrate"), names)
            pipe.time()
            for type_ in names:
                pipe.hgetall(self._key("grun", type_))
            replies = await pipe.execute()
        # The rate is the write script's by Redis's clock: picked by it too.
        seconds, micros = replies[3]
        clock = seconds + micros / 1e6
        out = {}
        for n, type_ in enumerate(names):
            packed = replies[0][n]
            if packed is None:
                continue  # lifted since the copy was read
            groups: dict[str, int] = {g.decode(): int(c) for g, c in replies[4 + n].items()}
            limits = _unpack_limits(packed.decode())
            out[type_] = Allowance(
                limits,
                int(replies[1][n] or 0),
                functools.partial(_count_of, groups),
                float(replies[2][n] or 0.0),
                now if limits.rate is None else clock,
            )
        return out

    async def set_queue_limits(self, type_: str, limits: QueueLimits | None) -> None:
        key = self._key("qlimits")
        with self._errors:
            async with self._core.client.pipeline(transaction=True) as pipe:
                if limits is None:
                    pipe.hdel(key, type_)
                else:
                    pipe.hset(key, type_, _pack_limits(limits))
                # Raised or lifted, they may let held jobs go: every node's relay wakes
                # the lease requests parked for the type.
                pipe.xadd(
                    self._key("wake"),
                    {"type": type_, "run_at": repr(time.time())},
                    maxlen=WAKE_MAXLEN,
                    approximate=True,
                )
                await pipe.execute()
        self._limits_at = -math.inf

    async def queue_limits(self) -> dict[str, QueueLimits]:
        with self._errors:
            raw = await self._core.client.hgetall(self._key("qlimits"))
        return {type_.decode(): _unpack_limits(packed.decode()) for type_, packed in raw.items()}

    async def limit_counters(
        self, limits: dict[str, QueueLimits], now: float
    ) -> dict[str, LimitCounters]:
        names = list(limits)
        if not names:
            return {}
        client = self._core.client
        with self._errors:
            async with client.pipeline(transaction=False) as pipe:
                pipe.hmget(self._key("jobcounts"), [f"{t}\x00running" for t in names])
                pipe.hmget(self._key("qrate"), names)
                for type_ in names:
                    pipe.zcount(self._key("queued", type_), "-inf", repr(now))
                    pipe.hgetall(self._key("grun", type_))
                replies = await pipe.execute()
            # The queued jobs of the full groups of every type: one more round trip.
            fulls: list[list[bytes]] = []
            async with client.pipeline(transaction=False) as pipe:
                for n, type_ in enumerate(names):
                    cap = limits[type_].group_concurrency
                    running = replies[3 + 2 * n]
                    full = [g for g, c in running.items() if cap is not None and int(c) >= cap]
                    fulls.append(full)
                    if full:
                        pipe.hmget(self._key("gq", type_), full)
                queued = iter(await pipe.execute() if any(fulls) else [])
            out = {}
            for n, type_ in enumerate(names):
                held = next(queued) if fulls[n] else []
                out[type_] = LimitCounters(
                    int(replies[2 + 2 * n]),
                    int(replies[0][n] or 0),
                    float(replies[1][n] or 0.0),
                    sum(int(c or 0) for c in held),
                )
        return out

    async def _lease_round(
        self, picks: list[str], wanted: set[str] | None, now: float, fn: Transition
    ) -> tuple[list[JobChange], list[str]]:
        """One compare-and-set: lease those of `picks` still queued and due. Returns the
        changes and the ids skipped; _Differs when another node wrote one of them."""

        def leasable(jobs: dict[str, Job]) -> list[Job]:
            return [
                job
                for job in jobs.values()
                if job.status == "queued"
                and job.run_at <= now
                and (wanted is None or job.type in wanted)
            ]

        known = self._read_known(picks)
        if known is not None and len(leasable(known[0])) == len(picks):
            jobs, prints = known
        else:  # a job is skipped only on what Redis holds
            jobs, prints = await self._read(picks)
        fresh = leasable(jobs)
        taken = {job.id for job in fresh}
        skipped = [job_id for job_id in picks if job_id not in taken]
        if not fresh:
            return [], skipped
        fresh.sort(key=lambda job: (-job.priority, job.run_at, job.id))
        changes = [(job, *fn(job, now)) for job in fresh]
        return await self._write(changes, prints, now), skipped

    async def expire_jobs(self, now: float, fn: Transition) -> list[JobChange]:
        out: list[JobChange] = []
        with self._errors:
            async with self._expire_lock:
                now = max(now, time.time())
                raw = await self._core.client.zrangebyscore(
                    self._key("running"), "-inf", f"({now!r}"
                )
                ids = [job_id.decode() for job_id in raw]
                for at in range(0, len(ids), BATCH):
                    chunk = ids[at : at + BATCH]
                    out.extend(await self._retrying("lease expiry", self._expiry(chunk, now, fn)))
        return out

    def _expiry(
        self, ids: list[str], now: float, fn: Transition
    ) -> Callable[[], Awaitable[list[JobChange]]]:
        async def attempt() -> list[JobChange]:
            jobs, prints = await self._read(ids)
            # The re-check: a lease another node took back (or its worker renewed) since
            # the index was read is no longer running with an expired lease.
            expired = [
                job
                for job in jobs.values()
                if job.status == "running"
                and job.lease_expires_at is not None
                and job.lease_expires_at < now
            ]
            if not expired:
                return []
            return await self._write([(job, *fn(job, now)) for job in expired], prints, now)

        return attempt

    async def next_run_at(self) -> float | None:
        with self._errors:
            types = await self._core.client.smembers(self._key("jobtypes"))
            if not types:
                return None
            async with self._core.client.pipeline(transaction=False) as pipe:
                for type_ in types:
                    pipe.zrange(self._key("queued", type_.decode()), 0, 0, withscores=True)
                firsts = await pipe.execute()
        scores = [float(rows[0][1]) for rows in firsts if rows]
        return min(scores, default=None)

    async def sweep_jobs(self, finished_before: float) -> list[str]:
        out: list[str] = []
        with self._errors:
            raw = await self._core.client.zrangebyscore(
                self._key("finished"), "-inf", f"({finished_before!r}"
            )
            ids = [job_id.decode() for job_id in raw]
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
            async with self._core.client.pipeline(transaction=True) as pipe:
                found = await self._watch_bodies(pipe, ids)
                # Re-check: a job retried since the index was read is no longer finished.
                gone = [
                    job
                    for job in found
                    if job is not None
                    and job.finished_at is not None
                    and job.finished_at < finished_before
                ]
                missing = [job_id for job_id, job in zip(ids, found, strict=True) if job is None]
                idem = [
                    self._key("jobidem", job.idempotency_key) for job in gone if job.idempotency_key
                ]
                owners: list[bytes | None] = []
                if idem:
                    await pipe.watch(*idem)
                    owners = await pipe.mget(idem)
                if not gone and not missing:
                    return []
                pipe.multi()
                for job_id in missing:  # an index entry without a body: drop it
                    pipe.zrem(self._key("finished"), job_id)
                for job in gone:
                    pipe.delete(self._job_key(job.id), self._key("jobkids", job.id))
                    pipe.zrem(self._key("jobsettle"), job.id)
                    self._queue_channel_delete(pipe, job_channel(job.id))
                    for index in ("jobs", "finished", "running", "waiting"):
                        pipe.zrem(self._key(index), job.id)
                    pipe.zrem(self._key("queued", job.type), job.id)
                    pipe.hincrby(self._key("jobcounts"), self._count_field(job), -1)
                gone_ids = {job.id for job in gone}
                for key, owner in zip(idem, owners, strict=True):
                    if owner is not None and owner.decode() in gone_ids:
                        pipe.delete(key)  # still this job's key (not yet reused)
                await pipe.execute()
                cache = self._head_cache()
                for job in gone:
                    cache.pop(job.id, None)
                self._forget_bodies(job.id for job in gone)
                return [job.id for job in gone]

        return attempt

    async def mark_served(self, types: list[str], now: float) -> None:
        key = self._key("served")
        with self._errors:
            async with self._core.client.pipeline(transaction=False) as pipe:
                pipe.zadd(key, dict.fromkeys(types, now), gt=True)
                # A day-old mark goes, and past SERVED_MARKS types the oldest do.
                pipe.zremrangebyscore(key, "-inf", f"({now - SERVED_MARK_TTL!r}")
                pipe.zremrangebyrank(key, 0, -(SERVED_MARKS + 1))
                await pipe.execute()

    async def served_at(self, types: list[str]) -> float | None:
        with self._errors:
            scores = await self._core.client.zmscore(self._key("served"), types)
        return max((float(s) for s in scores if s is not None), default=None)
