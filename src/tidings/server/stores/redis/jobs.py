"""Jobs in Redis: msgpack bodies, sorted-set indexes, compare-and-set Lua scripts.

Keys (see tidings.server.stores.redis.base): `{p}job:{id}` holds the msgpack body; the id sits
in exactly one of `{p}queued:{type}` (by run_at), `{p}running` (by lease_expires_at) or
`{p}finished` (by finished_at) according to its status, and in `{p}jobs` (by created_at);
`{p}jobcounts` counts jobs per type and status; `{p}jobidem:{key}` maps an idempotency key
to its job; `{p}wake` announces every job that becomes queued to the relays of all nodes.

Why every change is applied once, whichever node attempts it
------------------------------------------------------------

A transition is Python (`fn(job, now)`, tidings.server.jobs), so it cannot run inside Redis as
Lua. Each change (or batch of changes) is therefore a compare-and-set:

1. MGET the bodies — the state the change is computed from — and keep a fingerprint of
   each (the SHA-1 of the bytes as read, not of a re-encoding, which could differ for a
   body another version of tidings wrote);
2. apply `fn` in Python (a refusal raises before anything is sent: nothing changes);
3. one EVALSHA of the write script (`_WRITE`), which first compares, for every job of
   the batch, the body stored now with the fingerprint it was computed from (a new job:
   no body at all) and, on any difference, writes nothing and answers which job
   differed; otherwise it writes everything: the new body, the id moved between the index
   sets by status, the counts (-1 old status, +1 new), the event appended to the job's
   channel (the channel part's `append` function, the same Lua as a publish), an XADD to
   `{p}wake` when the job is now queued.

Redis runs a script atomically: no other command runs between its comparisons and its
writes. The body is the only input of a transition and every change writes it, so a
change commits only against the body it was computed from: two changes of one job are
serialised, and each commits against the state it saw. A batch commits whole or not at
all. When the script answers a difference, the attempt starts again from step 1 with the
fresh body and re-checks its precondition, so a change whose reason went away is skipped
rather than applied twice:

* lease_jobs: a job handed out by another node is no longer queued at the re-check, so
  it is skipped — no job goes to two callers;
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
idempotency key — and writes only after all passed. What remains that could fail at
run time is a wrong key type or an out-of-order XADD id, which this layout never creates
(only a foreign writer under the same prefix could), or the memory limit, which Redis
checks at a script's first write.

The indexes, counts and channel message are written by the same script as the body, so
every reader sees them agree with the bodies. Retries are bounded (MAX_RETRIES, with a
little random back-off); past that the call fails with StoreError and its last attempt
changed nothing (a lease that already committed some jobs returns those instead; expiry
and sweep commit BATCH jobs per script call or transaction). Within one process,
lease_jobs and expire_jobs calls take turns (an asyncio lock), so conflicts arise only
between nodes, not between the requests of one node.

A node remembers the bodies of the unfinished jobs it wrote last (`_read_known`), and a
lease or a report of those jobs is computed from them without an MGET: the comparison in
the script makes that as safe as a read (a body changed elsewhere makes the call write
nothing; the copies are dropped and the retry reads Redis). What no write would check is
never decided on a copy: a refused step or a skipped lease candidate is decided again on
the bodies read from Redis.

A submit needs no read: a new job's id is random and unseen, so its script call expects
no body under that id; with an idempotency key, the script itself answers the job the
key already names (when that job still exists) instead of writing. sweep_jobs, off the
hot path, stays an optimistic transaction (WATCH, MGET, MULTI/EXEC); WATCH sees the
writes of scripts too, and a script comparing against a swept body finds none.

Limits, stated:

* Durability is Redis's own (its `appendonly`/`appendfsync`): `durable=False` changes
  nothing here. A connection lost during a script call surfaces as a StoreError, or
  (redis-py sends the call again) as a comparison that finds its own change already
  applied: lease and expiry then skip the job (the lease ends unheld and is taken back
  later: at-least-once), a complete answers Conflict, a submit finds its own body and
  answers it as created.
* Times come from the clock of the node making the change (as `now` did before Redis):
  skewed clocks move when a lease counts as expired, never how often it is taken back.
* lease_jobs reads, per type, the oldest due jobs (4x what it asks for, at least
  LEASE_MIN_SCAN) plus every queued job with a non-zero priority (`{p}qprio:{type}`, up
  to LEASE_SCAN, highest first): positive priorities are always served first; a job with
  a negative priority is ordered exactly only among the jobs read. Priorities (which no
  transition of tidings.server.jobs changes) are cached per process, so a lease reads ids, not
  bodies.
* list_jobs with a filter scans at most LIST_SCAN jobs newest first, so it may return
  fewer matches than exist when they are older than that.
* The write script declares in KEYS the keys every call writes (indexes, counts, wake
  stream), and names the keys of each job (body, queue of its type, channel) from the
  store's prefix, as the auth part's prune script does. Like the multi-key transactions
  before it, the layout assumes one Redis, not a Cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from tidings.protocol.errors import NotFound, StoreError, TidingsError
from tidings.protocol.jobs import Job, job_channel
from tidings.server.stores.base import (
    JobChange,
    JobStep,
    Published,
    Transition,
    apply_steps,
    job_event_data,
)
from tidings.server.stores.redis.base import RedisBase
from tidings.server.stores.redis.channels import APPEND_LUA, redis_errors

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
# Jobs a filtered list_jobs examines at most, and per round trip.
LIST_SCAN = 10_000
LIST_PAGE = 500
# Approximate length the wake stream is trimmed to.
WAKE_MAXLEN = 10_000
# Job priorities remembered per process (cleared when full).
PRIORITY_CACHE_MAX = 200_000
# Bodies of unfinished jobs this process wrote last, remembered so a lease or a report can
# skip reading them (cleared when full; see `_read_known`).
BODY_CACHE_MAX = 100_000

# The first element of the write script's reply.
_DIFFERS, _WRITTEN, _KNOWN = 0, 1, 2

# Applies a batch of job changes, each only against the body it was computed from.
# KEYS: jobs, jobtypes, jobcounts, running, finished, wake, channels; for an idempotent
#       submit (one new job), its jobidem key.
# ARGV: now, default max_messages, wake MAXLEN, the store's key prefix; then three per
#       job change: its fields as a msgpack array of strings ("" for none; see `change`
#       below), its new body, its event data JSON ("": publish nothing). Redis's cmsgpack
#       reads no msgpack bin, hence the two binary strings apart. The per-job keys are
#       named from the prefix, as `RedisBase.k` names them: three arguments per job
#       instead of twenty keep the call cheap for redis-py to encode.
# Reply: {1, then seq, prev_seq, keep of each job's append (0, 0, 0: none)} when written;
#        {0, n} when the n-th job's body differs (nothing written);
#        {2, body} when the idempotency key names a job that exists (nothing written).
_WRITE = (
    APPEND_LUA
    + """
local now, default_keep, wake_max, P = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local JOBS, JOBTYPES, JOBCOUNTS, RUNNING, FINISHED, WAKE, CHANNELS, IDEM =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]

-- One job change, from its fields as `_change_fields` packs them; nil when malformed.
local function change(packed, body, data)
  local ok, f = pcall(cmsgpack.unpack, packed)
  if not ok or type(f) ~= 'table' or #f ~= 13 then
    return nil
  end
  for i = 1, 13 do
    if type(f[i]) ~= 'string' then
      return nil
    end
  end
  local c = {expected = f[1], id = f[2], old_type = f[3], type = f[4], status = f[5],
             score = f[6], prio = f[7], finished = f[8], created = f[9], counted = f[10],
             count = f[11], channel = f[12], event = f[13], body = body, data = data}
  for _, v in ipairs({c.score, c.prio, c.finished, c.created}) do
    if v ~= '' and not tonumber(v) then
      return nil
    end
  end
  c.key = P .. 'job:' .. c.id
  return c
end

-- Every check before the first write: Redis does not undo a script that fails midway.
if #ARGV < 4 or (#ARGV - 4) % 3 ~= 0 then
  return redis.error_reply('job write script: malformed call')
end
local changes = {}
for i = 5, #ARGV, 3 do
  local c = change(ARGV[i], ARGV[i + 1], ARGV[i + 2])
  if not c then
    return redis.error_reply('job write script: malformed job change ' .. #changes + 1)
  end
  changes[#changes + 1] = c
end
if IDEM then
  local known = redis.call('GET', IDEM)
  if known then
    local body = redis.call('GET', P .. 'job:' .. known)
    if body then
      return {2, body}
    end
  end
end
local staged = {}
for i, c in ipairs(changes) do
  local current = staged[c.key]
  if current == nil then
    current = redis.call('GET', c.key)
  end
  if c.expected == '' then
    if current then
      return {0, i}
    end
  elseif not current or redis.sha1hex(current) ~= c.expected then
    return {0, i}
  end
  -- A later change of the same job in this batch is compared with this one's body.
  staged[c.key] = c.body
end

local reply = {1}
for _, c in ipairs(changes) do
  local id = c.id
  local queued, qprio = P .. 'queued:' .. c.type, P .. 'qprio:' .. c.type
  redis.call('SET', c.key, c.body)
  if c.expected == '' then
    redis.call('ZADD', JOBS, c.created, id)
    redis.call('SADD', JOBTYPES, c.type)
  else
    -- Out of every index it could be in, whatever its old state claims.
    redis.call('ZREM', P .. 'queued:' .. c.old_type, id)
    redis.call('ZREM', P .. 'qprio:' .. c.old_type, id)
    redis.call('ZREM', RUNNING, id)
    redis.call('ZREM', FINISHED, id)
    if c.type ~= c.old_type then
      redis.call('ZREM', queued, id)
      redis.call('ZREM', qprio, id)
    end
  end
  if c.status == 'queued' then
    redis.call('ZADD', queued, c.score, id)
    if c.prio ~= '' then
      redis.call('ZADD', qprio, c.prio, id)
    end
  elseif c.status == 'running' then
    redis.call('ZADD', RUNNING, c.score, id)
  end
  if c.finished ~= '' then
    redis.call('ZADD', FINISHED, c.finished, id)
  end
  if c.counted ~= c.count then
    if c.counted ~= '' then
      redis.call('HINCRBY', JOBCOUNTS, c.counted, -1)
    end
    redis.call('HINCRBY', JOBCOUNTS, c.count, 1)
  end
  if c.data ~= '' then
    local r = append(P .. 'ch:' .. c.channel, P .. 'chm:' .. c.channel, CHANNELS, c.channel,
                     c.data, c.event, now, default_keep, '', '', 0)
    reply[#reply + 1] = r[1]
    reply[#reply + 1] = r[2]
    reply[#reply + 1] = r[3]
  else
    reply[#reply + 1] = 0
    reply[#reply + 1] = 0
    reply[#reply + 1] = 0
  end
  if c.status == 'queued' then
    redis.call('XADD', WAKE, 'MAXLEN', '~', wake_max, '*', 'type', c.type, 'run_at', c.score)
  end
end
if IDEM then
  redis.call('SET', IDEM, changes[1].id)
end
return reply
"""
)

# Job bodies, and the job changes handed to the write script.
_encode = msgspec.msgpack.Encoder().encode
_decode_job = msgspec.msgpack.Decoder(Job).decode
_encode_json = msgspec.json.Encoder().encode


class _Head(msgspec.Struct):
    """The part of a job body a lease orders by (decoding skips the rest)."""

    priority: int = 0


_decode_head = msgspec.msgpack.Decoder(_Head).decode

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


@dataclass(frozen=True)
class _Written:
    """A job change sent to the write script, kept to build its JobChange from the reply."""

    job: Job
    body: bytes
    event: str | None
    data: dict[str, Any] | None


class RedisJobs(RedisBase):
    """The JobStore part of the Redis store (see the module docstring for the argument)."""

    if TYPE_CHECKING:
        # Provided by RedisChannels (tidings.server.stores.redis.channels), which RedisStore mixes
        # in: turn an append's reply [seq, prev_seq, keep] into a Published, queue a
        # channel's removal.
        def appended(
            self, channel: str, data: Any, event: str | None, now: float, reply: list[int]
        ) -> Published: ...

        def queue_delete(self, pipe: Any, channel: str) -> None: ...

    # Created on first use: the parts of RedisStore share RedisBase's constructor.
    _job_locks: dict[str, asyncio.Lock] | None = None
    _priorities: dict[str, int] | None = None
    _job_bodies: dict[str, bytes] | None = None

    async def _load_scripts(self) -> None:
        await super()._load_scripts()
        self._write_script = self.r.register_script(_WRITE)

    # -- helpers ------------------------------------------------------------------------

    def _job_lock(self, name: str) -> asyncio.Lock:
        if self._job_locks is None:
            self._job_locks = {}
        lock = self._job_locks.get(name)
        if lock is None:
            lock = self._job_locks[name] = asyncio.Lock()
        return lock

    def _body_cache(self) -> dict[str, bytes]:
        if self._job_bodies is None or len(self._job_bodies) > BODY_CACHE_MAX:
            self._job_bodies = {}
        return self._job_bodies

    def _priority_cache(self) -> dict[str, int]:
        if self._priorities is None or len(self._priorities) > PRIORITY_CACHE_MAX:
            self._priorities = {}
        return self._priorities

    def _mapped(self) -> AbstractContextManager[None]:
        """Translate redis-py errors into StoreError (as the channel part does)."""
        return redis_errors(self.url)

    def _jk(self, job_id: str) -> str:
        return self.k("job", job_id)

    @staticmethod
    def _count_field(job: Job) -> str:
        return f"{job.type}\x00{job.status}"

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run a compare-and-set (or optimistic transaction) until it commits (or has no
        write to make)."""
        from redis.exceptions import WatchError

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
        bodies = await self.r.mget([self._jk(i) for i in ids])
        jobs: dict[str, Job] = {}
        prints: dict[str, str] = {}
        for job_id, body in zip(ids, bodies, strict=True):
            if body is not None:
                jobs[job_id] = _decode_job(body)
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
            jobs[job_id] = _decode_job(body)
            prints[job_id] = _fingerprint(body)
        return jobs, prints

    def _forget_bodies(self, ids: Iterable[str]) -> None:
        cache = self._body_cache()
        for job_id in ids:
            cache.pop(job_id, None)

    async def _watch_bodies(self, pipe: Any, ids: list[str]) -> list[Job | None]:
        """WATCH the bodies of `ids` and read them (pipe in immediate mode; the sweep)."""
        keys = [self._jk(i) for i in ids]
        await pipe.watch(*keys)
        bodies = await pipe.mget(keys)
        return [None if b is None else _decode_job(b) for b in bodies]

    def _write_call(
        self, changes: Sequence[_Change], prints: dict[str, str], now: float
    ) -> tuple[list[str], list[Any], list[_Written]]:
        """The keys and arguments of one write script call (see `_WRITE`).

        `prints` holds the fingerprint of each changed job's body as read; it is updated
        as changes are laid out, so a second change of a job expects the first one's body.
        """
        keys = [
            self.k("jobs"),
            self.k("jobtypes"),
            self.k("jobcounts"),
            self.k("running"),
            self.k("finished"),
            self.k("wake"),
            self.k("channels"),
        ]
        args: list[Any] = [repr(now), self.default_retention.max_messages, WAKE_MAXLEN, self.k()]
        written: list[_Written] = []
        for old, new, event in changes:
            body = _encode(new)
            expected = "" if old is None else prints[new.id]
            prints[new.id] = _fingerprint(body)
            data = None if event is None else job_event_data(new)
            args += [
                _encode(self._change_fields(expected, old, new, event)),
                body,
                b"" if data is None else _encode_json(data),
            ]
            written.append(_Written(new, body, event, data))
        return keys, args, written

    def _change_fields(
        self, expected: str, old: Job | None, new: Job, event: str | None
    ) -> tuple[str, ...]:
        """The fields of one job change, as the write script unpacks them (`change`)."""
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
        )

    def _changes(self, written: list[_Written], reply: list[Any], now: float) -> list[JobChange]:
        """The JobChange of each written change, from the script's reply."""
        out = []
        priorities = self._priority_cache()
        bodies = self._body_cache()
        for n, w in enumerate(written):
            priorities[w.job.id] = w.job.priority
            if w.job.finished_at is None:
                bodies[w.job.id] = w.body
            else:
                bodies.pop(w.job.id, None)
            published = None
            if w.data is not None:
                appended = reply[1 + 3 * n : 4 + 3 * n]
                published = self.appended(job_channel(w.job.id), w.data, w.event, now, appended)
            out.append(JobChange(w.job, published))
        return out

    async def _write(
        self, changes: Sequence[_Change], prints: dict[str, str], now: float
    ) -> list[JobChange]:
        """Write `changes` in one script call, each only against the body it was computed
        from (`prints`); _Differs, with nothing written, when one has changed since."""
        keys, args, written = self._write_call(changes, prints, now)
        reply = await self._write_script(keys=keys, args=args, client=self.r)
        if reply[0] == _DIFFERS:
            self._forget_bodies(w.job.id for w in written)
            raise _Differs(f"job {written[int(reply[1]) - 1].job.id} changed")
        return self._changes(written, reply, now)

    # -- JobStore -----------------------------------------------------------------------

    async def submit_job(self, job: Job, event: str) -> tuple[JobChange, bool]:
        # A new job's id is random and unseen: nothing to read first. The script checks
        # that no body has that id, and answers the job an idempotency key already names.
        keys, args, written = self._write_call([(None, job, event)], {}, job.created_at)
        if job.idempotency_key is not None:
            keys.append(self.k("jobidem", job.idempotency_key))
        with self._mapped():
            reply = await self._write_script(keys=keys, args=args, client=self.r)
            if reply[0] == _KNOWN:
                # The key's job; this very job when a call that redis-py sent again after
                # a lost reply finds its first sending committed (its event is published).
                known = _decode_job(reply[1])
                return JobChange(known, None), known.id == job.id
            if reply[0] == _DIFFERS:
                if await self.r.get(self._jk(job.id)) == written[0].body:
                    return JobChange(job, None), True  # the same: this call committed it
                raise StoreError(
                    f"a job with id {job.id!r} already exists: submit it again (ids are random)"
                )
        return self._changes(written, reply, job.created_at)[0], True

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
            jobs, prints = await self._read([job_id])
            job = jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            now = time.time()
            new, event = fn(job, now)
            [change] = await self._write([(job, new, event)], prints, now)
            return change

        with self._mapped():
            return await self._retrying("job transition", attempt)

    async def transition_jobs(self, steps: list[JobStep]) -> list[JobChange | TidingsError]:
        if not steps:
            return []
        ids = list(dict.fromkeys(job_id for job_id, _, _ in steps))

        async def attempt() -> list[JobChange | TidingsError]:
            now = time.time()
            known = self._read_known(ids)
            answers = None
            if known is not None:
                jobs, prints = known
                answers = apply_steps(steps, dict(jobs), now)
                if any(isinstance(a, TidingsError) for a in answers):
                    answers = None  # a refusal is decided on what Redis holds, never a copy
            if answers is None:
                jobs, prints = await self._read(ids)
                # Steps are computed before anything is sent: a refusal changes nothing.
                answers = apply_steps(steps, jobs, now)
            changes = [a for a in answers if not isinstance(a, TidingsError)]
            if not changes:
                return [a for a in answers if isinstance(a, TidingsError)]
            written = iter(await self._write(changes, prints, now))
            return [a if isinstance(a, TidingsError) else next(written) for a in answers]

        with self._mapped():
            return await self._retrying("job transitions", attempt)

    async def lease_jobs(
        self, types: list[str] | None, max_jobs: int, now: float, fn: Transition
    ) -> list[JobChange]:
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
                    except _Differs:
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
        """One compare-and-set: lease those of `picks` still queued and due. Returns the
        changes and the ids skipped; _Differs when another node wrote one of them."""

        def leasable(jobs: dict[str, Job]) -> list[Job]:
            return [
                j
                for j in jobs.values()
                if j.status == "queued" and j.run_at <= now and (wanted is None or j.type in wanted)
            ]

        known = self._read_known(picks)
        if known is not None and len(leasable(known[0])) == len(picks):
            jobs, prints = known
        else:  # a job is skipped only on what Redis holds
            jobs, prints = await self._read(picks)
        fresh = leasable(jobs)
        taken = {j.id for j in fresh}
        skipped = [i for i in picks if i not in taken]
        if not fresh:
            return [], skipped
        fresh.sort(key=lambda j: (-j.priority, j.run_at, j.id))
        changes = [(j, *fn(j, now)) for j in fresh]
        return await self._write(changes, prints, now), skipped

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
            jobs, prints = await self._read(ids)
            # The re-check: a lease another node took back (or its worker renewed) since
            # the index was read is no longer running with an expired lease.
            expired = [
                j
                for j in jobs.values()
                if j.status == "running"
                and j.lease_expires_at is not None
                and j.lease_expires_at < now
            ]
            if not expired:
                return []
            return await self._write([(j, *fn(j, now)) for j in expired], prints, now)

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
                self._forget_bodies(j.id for j in gone)
                return [j.id for j in gone]

        return attempt
