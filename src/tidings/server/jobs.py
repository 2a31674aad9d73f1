"""The job service: submit, lease, heartbeat, complete, fail, expire, cancel, retry.

It checks each request, picks the pure transition that carries it out
(tidings.server.transitions, where the state machine is drawn), has the store apply it
atomically together with the message it publishes on the job's channel `job.{id}` (so
every transport that serves channels serves jobs too), then hands that message to the hub
and wakes the lease requests parked for a queued job.

It also keeps the worker list: each lease request that says who its worker is, and each
heartbeat of a job such a worker holds, records the worker in the store (`store.workers`)
— at most once per worker every WORKER_MARK_INTERVAL seconds from this node, since the
lease path is hot — and counts the jobs submitted and finished here (`JobCounters`, for
/metrics).

Dependencies: a job submitted `after` parents waits (status `waiting`) until they all
succeeded. The store says when a change ended a job that has dependents
(`JobChange.dependents`); the service then settles them (`transitions.settle`: queued once
every parent succeeded, cancelled with the reason when one failed or was cancelled),
each in a follow-up task after the change, and the changes those make follow in turn
(a cancelled child cancels its own children). A job is settled also right after it is
stored waiting (a submit, a retry): a parent that ended between the read of the parents
and the child's write finds no child to settle, so the child's own settle, which reads
the parents after the write, sees it ended. What a stopped node leaves undone (a parent
ended, its follow-up never ran) is found by `repair`, run every few seconds, from the
settle marks: the store writes one in the same atomic step as a change that ends a job
with dependents, or makes a job waiting while a parent has ended or is gone, and the
follow-up clears it once done (`JobStore.settle_marks`); a pass reads only the marks left.

Queue limits (rate, concurrency, group concurrency per job type) are the store's to keep,
in the atomic step of each lease (tidings.server.stores.limits); the service checks them
when they are set, and wakes the parked lease requests a held job may now go to: when a
running job of a limited type ends, and once per rate interval while a rate-limited type
is being leased.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from msgspec.structs import replace

from tidings.protocol.codecs import encode_json
from tidings.protocol.errors import BadRequest, Conflict, InvalidBody, NotFound, TidingsError
from tidings.protocol.jobs import (
    MAX_GROUP,
    TERMINAL_STATUSES,
    BatchJob,
    Job,
    JobOutcome,
    QueueLimits,
    WorkerIdentity,
    bound_traceback,
    job_channel,
    key_problem,
    unique_key_problem,
)
from tidings.protocol.messages import CHANNEL_RE
from tidings.protocol.schedules import SCHEDULE_JOB_PREFIX
from tidings.server import transitions
from tidings.server.constants import (
    DEFAULT_MAX_DEPTH,
    DEPENDENCY_REPAIR_MARKS,
    MAX_AFTER,
    MAX_BATCH_JOBS,
    MAX_WORKERS,
    SERVED_MARK_INTERVAL,
    SERVED_WINDOW,
    WORKER_MARK_INTERVAL,
    WORKER_WINDOW,
)
from tidings.server.depth import check_storable
from tidings.server.hub import Hub
from tidings.server.job_timings import JobTimings
from tidings.server.stores.base import (
    JobChange,
    JobCursor,
    JobPage,
    JobStep,
    Store,
    Transition,
    UniqueHeld,
    WorkerSeen,
)
from tidings.server.stores.common import ServedMarks
from tidings.server.stores.limits import MAX_QUEUE_LIMITS
from tidings.server.transitions import MIN_LEASE

__all__ = [
    "ANY_TYPE",
    "FINISHED_STATUSES",
    "MIN_LEASE",
    "JobCounters",
    "JobService",
    "after_problem",
    "check_job_fields",
    "error_object",
    "new_job_id",
]

log = logging.getLogger("tidings.jobs")

MAX_ATTEMPTS_LIMIT = 100
# Waiting jobs settled per store read (each with up to MAX_AFTER parents).
SETTLE_BATCH = 100
MAX_DELAY = 365 * 24 * 3600.0
MAX_LEASE = 3600.0
MAX_LEASE_BATCH = 100
MAX_REPORT_BATCH = 100
# Job types one lease request may name.
MAX_LEASE_TYPES = 100
# The served mark of a lease request that names no types: it serves every type.
ANY_TYPE = "*"
# Types whose served marks a node remembers (the oldest go first).
SERVED_MEMORY = 10_000
# A failed attempt's error: its message is cut to its first MAX_ERROR_MESSAGE_BYTES and its
# type to MAX_ERROR_TYPE_BYTES; its other keys are kept while the whole, traceback aside,
# takes at most MAX_ERROR_BYTES (its traceback is bounded on its own: MAX_TRACEBACK_BYTES).
MAX_ERROR_MESSAGE_BYTES = 4 * 1024
MAX_ERROR_TYPE_BYTES = 200
MAX_ERROR_BYTES = 8 * 1024
_ERROR_KEYS = frozenset({"type", "message", "traceback", "attempt"})
# Parked lease requests re-check the store at least this often (delays set by another
# process, or before a restart, have no local timer).
LEASE_RECHECK = 5.0
# A node reads the queue limits (set on any node) again after this many seconds, for its
# wake-ups: the store enforces them, always as they are now.
LIMITS_REFRESH = 5.0
# A parked lease request for a rate-limited type leased from lately (within the rate's
# `per` and this many seconds) re-checks the store once per rate interval, when its next
# token is due — but at most this often (a faster rate is leased in batches).
RATE_RECHECK_ACTIVE = 1.0
MIN_RATE_RECHECK = 0.02
# Seconds added to wake-up timers for delayed jobs (see `_work_ready`).
TIMER_SLACK = 0.005
# The worker list shows at most MAX_RUNNING_LISTED running jobs, read RUNNING_PAGE at a
# time in at most RUNNING_PAGES store calls (a store may answer short pages).
MAX_RUNNING_LISTED = 10_000
RUNNING_PAGE = 1000
RUNNING_PAGES = 50
# The statuses a job ends in, in the order /metrics lists them.
FINISHED_STATUSES: tuple[str, ...] = ("succeeded", "failed", "cancelled")


def _cut_start(text: str, limit: int, what: str) -> str:
    """`text` if it fits in `limit` bytes of UTF-8, else its start and a note of the cut
    (together at most `limit` bytes)."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    note = f" [{what} cut to its first {limit} bytes]"
    return raw[: limit - len(note)].decode("utf-8", "ignore") + note


def _text(value: Any) -> str:
    """A string as it is, any other value as its JSON text."""
    return value if isinstance(value, str) else encode_json(value).decode()


def error_object(error: Any) -> dict[str, Any]:
    """A worker's `error` as the job keeps it: an object, bounded.

    An object keeps its `type` (cut to MAX_ERROR_TYPE_BYTES) and its `message` (cut to
    its first MAX_ERROR_MESSAGE_BYTES), any value of theirs but a string as its JSON
    text. Its other keys are kept only while the whole object (its
    traceback aside) encodes to at most MAX_ERROR_BYTES; else they are left out, and a
    `note` says so. Its `traceback` must be a string (InvalidBody otherwise; null is no
    traceback) and is kept to its last 16 KiB. A string becomes the message of an
    `Error`; any other value its JSON text.
    """
    if not isinstance(error, dict):
        if error is None:
            return {"type": "Error", "message": "the worker gave no error"}
        return {
            "type": "Error",
            "message": _cut_start(_text(error), MAX_ERROR_MESSAGE_BYTES, "message"),
        }
    tb = error.get("traceback")
    if tb is not None and not isinstance(tb, str):
        raise InvalidBody('"error.traceback" must be a string (the formatted traceback) or null')
    out: dict[str, Any] = {}
    if "type" in error:
        out["type"] = _cut_start(_text(error["type"]), MAX_ERROR_TYPE_BYTES, "type")
    if "message" in error:
        out["message"] = _cut_start(_text(error["message"]), MAX_ERROR_MESSAGE_BYTES, "message")
    # `attempt` is the server's to set (transitions.stamp_error).
    extras = {k: v for k, v in error.items() if k not in _ERROR_KEYS}
    if extras:
        size = len(encode_json({**out, **extras}))
        if size <= MAX_ERROR_BYTES:
            out.update(extras)
        else:
            out["note"] = (
                f"{len(extras)} other key(s) of this error were left out: with them it took"
                f" {size} bytes, over the {MAX_ERROR_BYTES // 1024} KiB an error may take"
                " (its traceback aside)"
            )
    if tb is not None:
        out["traceback"] = bound_traceback(tb)
    return out


class JobCounters:
    """The jobs this process saw submitted (new ones, not idempotent repeats) and end, by
    status; how long the jobs it leased had waited ready (from `run_at` to the lease), and
    how long those that succeeded or failed ran (from the lease to the end). Read by
    /metrics at scrape time."""

    __slots__ = ("finished", "run", "submitted", "wait")

    def __init__(self) -> None:
        self.submitted = 0
        self.finished: dict[str, int] = dict.fromkeys(FINISHED_STATUSES, 0)
        self.wait = JobTimings()
        self.run = JobTimings()


class _WorkersNoted:
    """The workers this node recorded lately: the record it last wrote of each (what a
    heartbeat of the worker's jobs refreshes) and when. At most `cap`, the least recently
    written forgotten first."""

    __slots__ = ("_noted", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._noted: OrderedDict[str, tuple[WorkerSeen, float]] = OrderedDict()

    def get(self, worker_id: str) -> tuple[WorkerSeen, float] | None:
        return self._noted.get(worker_id)

    def note(self, seen: WorkerSeen, at: float) -> None:
        noted = self._noted
        noted[seen.id] = (seen, at)
        noted.move_to_end(seen.id)
        while len(noted) > self.cap:
            noted.popitem(last=False)


def after_problem(after: Any) -> str | None:
    """What is wrong with an `after` (a submit's parent ids), said as what to fix; None
    when it is a list of 1 to MAX_AFTER job ids."""
    if not isinstance(after, list | tuple) or not 1 <= len(after) <= MAX_AFTER:
        return f'"after" must be a list of 1 to {MAX_AFTER} job ids, or left out'
    for parent_id in after:
        if not isinstance(parent_id, str) or not 0 < len(parent_id) <= 200:
            return f'"after": {str(parent_id)[:80]!r} is not a job id'
    return None


def check_job_fields(
    type_: Any,
    payload: Any,
    *,
    max_depth: int,
    max_attempts: int = 3,
    timeout: float | None = None,
    delay: float = 0.0,
    priority: int = 0,
    unique_key: str | None = None,
    group: str | None = None,
) -> None:
    """InvalidBody (or what `check_storable` raises, for a payload nested deeper than
    `max_depth` or not storable) unless these are valid fields of a job: what a submit,
    a batch's job and a schedule (whose firings are submits) are checked with."""
    if not isinstance(type_, str) or CHANNEL_RE.fullmatch(type_) is None:
        raise InvalidBody('"type" must be 1-200 characters of A-Z a-z 0-9 . _ : -')
    if not 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT:
        raise InvalidBody(f'"max_attempts" must be between 1 and {MAX_ATTEMPTS_LIMIT}')
    if timeout is not None and not 0 < timeout <= MAX_LEASE * 24:
        raise InvalidBody('"timeout" must be a positive number of seconds')
    if not 0 <= delay <= MAX_DELAY:
        raise InvalidBody(f'"delay" must be between 0 and {MAX_DELAY:.0f} seconds')
    if not -(2**31) <= priority < 2**31:
        raise InvalidBody('"priority" must fit in 32 bits')
    if unique_key is not None:
        problem = unique_key_problem(unique_key)
        if problem is not None:
            raise InvalidBody(problem)
    if group is not None:
        problem = key_problem("group", group, MAX_GROUP)
        if problem is not None:
            raise InvalidBody(problem)
    check_storable(payload, '"payload"', max_depth)


def _parents_first(specs: Sequence[BatchJob], refs: dict[str, int]) -> list[int]:
    """The places of a batch's jobs, each after the jobs of the batch it names in `after`;
    InvalidBody naming the cycle when there is one (a depth-first walk, without
    recursion: a chain may be a thousand jobs long)."""
    edges = [[refs[p] for p in spec.after or () if p in refs] for spec in specs]
    state = [0] * len(specs)  # 0: unseen, 1: on the path, 2: placed
    order: list[int] = []
    for start in range(len(specs)):
        if state[start]:
            continue
        state[start] = 1
        path = [start]
        stack = [iter(edges[start])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done = path.pop()
                state[done] = 2
                order.append(done)
            elif state[nxt] == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                shown = " -> ".join(repr(specs[i].ref[:80]) for i in cycle[:20])
                raise InvalidBody(
                    f'"after" makes a cycle: {shown}{" -> ..." if len(cycle) > 20 else ""}: '
                    "a job cannot wait for itself; remove one of these refs"
                )
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(edges[nxt]))
    return order


def new_job_id() -> str:
    """Time-ordered, unguessable: 12 hex digits of milliseconds, then 12 random ones."""
    return f"{int(time.time() * 1000):012x}{os.urandom(6).hex()}"


class JobService:
    """Jobs on top of a store and the hub.

    Args:
        store: where jobs and their channels live.
        hub: live fan-out, for the job channels' subscribers and long polls.
        retry_backoff: seconds before the first retry; doubles per attempt.
        max_backoff: the longest retry delay.
        long_poll_cap: the longest `wait` honoured.
        max_depth: the deepest nesting a payload, result or error may have; deeper, or
            what the stores cannot encode, is refused before anything is stored.
    """

    def __init__(
        self,
        store: Store,
        hub: Hub,
        retry_backoff: float = 1.0,
        max_backoff: float = 300.0,
        long_poll_cap: float = 30.0,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self.store = store
        self.max_depth = max_depth
        self.hub = hub
        self.backoff = transitions.Backoff(retry_backoff, max_backoff)
        self.long_poll_cap = long_poll_cap
        # Shared store: the relay follows the channels of waited-for jobs, and the wake-up
        # stream while a lease request is parked here (both set by the app).
        self.relay_watch: Callable[[str], Awaitable[None]] | None = None
        self.on_park: Callable[[], None] | None = None
        self._work_waiters: list[tuple[frozenset[str] | None, asyncio.Future[None]]] = []
        # Leases being given back because their requester left (kept so they finish).
        self._releases: set[asyncio.Task[None]] = set()
        # Served marks: when this node last wrote each type's to the store, and the latest
        # mark it read from the store (a mark only moves forward, so either one that is
        # within the window answers `served` without a store read).
        self._marked = ServedMarks(SERVED_MEMORY, SERVED_WINDOW)
        self._seen = ServedMarks(SERVED_MEMORY, SERVED_WINDOW)
        self._workers = _WorkersNoted(MAX_WORKERS)
        self.counters = JobCounters()
        # The queue limits as last read (for wake-ups), when, and when a job of each
        # rate-limited type was last leased here.
        self._limits: dict[str, QueueLimits] = {}
        self._limits_read = -math.inf
        self._rate_leased: dict[str, float] = {}
        # The settling of the dependents of jobs that ended (kept so they finish).
        self._follows: set[asyncio.Task[None]] = set()

    # -- fan-out and wake-ups ---------------------------------------------------------

    def _announce(self, change: JobChange) -> Job:
        # On a shared store the relay brings every job event (local ones too) to the hub.
        if change.published is not None and not self.store.shared:
            p = change.published
            self.hub.publish(p.message, p.prev_id, p.keep)
        job = change.job
        if change.dependents:
            self._follow(job.id, change.marked)
        if job.type in self._limits and change.published is not None:
            self._limited_change(job, change.published.message.event)
        if job.status == "queued":
            self._work_ready(job)
        elif change.published is not None:
            event = change.published.message.event
            counters = self.counters
            if event == "running" and job.started_at is not None:  # a lease
                counters.wait.observe(job.type, job.started_at - job.run_at)
            elif event in TERMINAL_STATUSES:  # the change that ended the job
                counters.finished[event] += 1
                # Cancelled jobs are left out: a queued one may carry an earlier attempt's
                # start.
                if event != "cancelled" and job.started_at is not None:
                    end = job.finished_at if job.finished_at is not None else job.updated_at
                    counters.run.observe(job.type, end - job.started_at)
        return job

    def _limited_change(self, job: Job, event: str | None) -> None:
        """A job of a type with limits changed: one that stopped running may let a held
        job of its type go (wake the lease requests for it); a lease is noted for the rate
        re-checks (`_recheck_after`)."""
        if event == "running":
            if self._limits[job.type].rate is not None:
                self._rate_leased[job.type] = time.monotonic()
        elif event in TERMINAL_STATUSES or event == "queued":
            self._wake(job.type)

    def _recheck_after(self, types: list[str] | None) -> float:
        """How soon a parked lease request for `types` looks at the store again by itself:
        once per rate interval of a rate-limited type leased from lately (its next token),
        else LEASE_RECHECK."""
        now = time.monotonic()
        out = LEASE_RECHECK
        for type_ in self._limits if types is None else types:
            limits = self._limits.get(type_)
            if limits is None or limits.rate is None:
                continue
            leased = self._rate_leased.get(type_)
            if leased is not None and now - leased <= limits.rate.per + RATE_RECHECK_ACTIVE:
                out = min(out, max(MIN_RATE_RECHECK, limits.rate.interval))
        return out

    async def _refresh_limits(self) -> None:
        """Read the queue limits again when the copy is LIMITS_REFRESH seconds old."""
        now = time.monotonic()
        if now - self._limits_read >= LIMITS_REFRESH:
            self._limits_read = now
            self._limits = await self.store.jobs.queue_limits()
            for type_ in list(self._rate_leased):
                if type_ not in self._limits:
                    del self._rate_leased[type_]

    def parked(self) -> bool:
        """True while a lease request waits here for a job."""
        return any(not fut.done() for _, fut in self._work_waiters)

    def _work_ready(self, job: Job) -> None:
        self.notify_ready(job.type, job.run_at)

    def notify_ready(self, type_: str, run_at: float) -> None:
        """A job of `type_` is queued, due at `run_at`: wake the lease requests for it then
        (called for local changes, and by the relay for those of other nodes)."""
        delay = run_at - time.time()
        if delay > 0:
            # A little late on purpose: the loop's timers may fire before the wall clock
            # reaches `run_at`, and a lease woken too early finds nothing due.
            asyncio.get_running_loop().call_later(delay + TIMER_SLACK, self._wake, type_)
        else:
            self._wake(type_)

    def _wake(self, type_: str | None) -> None:
        """Resolve the parked lease requests that could take a job of `type_` (None: all)."""
        keep: list[tuple[frozenset[str] | None, asyncio.Future[None]]] = []
        for types, fut in self._work_waiters:
            if fut.done():
                continue
            if type_ is None or types is None or type_ in types:
                fut.set_result(None)
            else:
                keep.append((types, fut))
        self._work_waiters = keep

    # -- dependencies -----------------------------------------------------------------

    def _follow(self, parent_id: str, stamp: float | None) -> None:
        """Job `parent_id` ended and has dependents: settle them in a task of their own
        (the change that ended it is answered meanwhile), then clear the parent's settle
        mark (`stamp`)."""
        task = asyncio.get_running_loop().create_task(self._settle_dependents(parent_id, stamp))
        self._follows.add(task)
        task.add_done_callback(self._follows.discard)

    async def _settle_dependents(self, parent_id: str, stamp: float | None) -> None:
        try:
            await self.settle(await self.store.jobs.dependents(parent_id))
            if stamp is not None:
                await self.store.jobs.clear_settle_marks([(parent_id, stamp)])
        except Exception:
            # The mark stays: `repair` settles them later.
            log.exception("settling the jobs submitted after job %s failed", parent_id)

    async def _clear_marks(self, changes: Sequence[JobChange]) -> None:
        """Clear the settle marks `changes` wrote, their jobs just settled."""
        marks = [(c.job.id, c.marked) for c in changes if c.marked is not None]
        if marks:
            await self.store.jobs.clear_settle_marks(marks)

    async def settled(self) -> None:
        """Return once the settling of dependents under way (and what it set off) is done."""
        while self._follows:
            await asyncio.gather(*self._follows, return_exceptions=True)

    async def settle(self, job_ids: Sequence[str]) -> None:
        """Settle those of `job_ids` that are waiting (`transitions.settle`), reading them
        and their parents SETTLE_BATCH jobs at a time."""
        for at in range(0, len(job_ids), SETTLE_BATCH):
            found = await self.store.jobs.get_jobs(list(job_ids[at : at + SETTLE_BATCH]))
            await self._settle_jobs(list(found.values()))

    async def _settle_jobs(self, jobs: Sequence[Job]) -> None:
        """Settle `jobs` (as just read): their parents are read after them, so a parent
        that ended before they were read is seen ended."""
        waiting = [job for job in jobs if job.status == "waiting"]
        if not waiting:
            return
        parent_ids = list(dict.fromkeys(p for job in waiting for p in job.after))
        settle = transitions.settle(await self.store.jobs.get_jobs(parent_ids))
        now = time.time()
        # Only those the settle changes: one whose parents have yet to end is found by
        # the last of them to end.
        steps: list[JobStep] = [
            (job.id, settle, True) for job in waiting if settle(job, now)[1] is not None
        ]
        if steps:
            for change in await self.store.jobs.transition_jobs(steps):
                if not isinstance(change, TidingsError):
                    self._announce(change)

    async def repair(self) -> None:
        """Do what the settle marks left in the store still ask (a node stopped between a
        change and its follow-up, or the follow-up failed): settle each marked job and
        the jobs submitted after it, then clear its mark — up to DEPENDENCY_REPAIR_MARKS
        marks a pass, the oldest first. With none left, that is one small read, however
        many jobs wait."""
        marks = await self.store.jobs.settle_marks(DEPENDENCY_REPAIR_MARKS)
        for at in range(0, len(marks), SETTLE_BATCH):
            chunk = marks[at : at + SETTLE_BATCH]
            for job_id, _ in chunk:
                await self.settle([job_id, *await self.store.jobs.dependents(job_id)])
            await self.store.jobs.clear_settle_marks(chunk)

    async def parents(self, jobs: Sequence[Job]) -> dict[str, Job]:
        """The parents of `jobs` (those submitted `after` others) that still exist, by id:
        what a lease answer shows each job of its parents."""
        ids = list(dict.fromkeys(p for job in jobs for p in job.after))
        return await self.store.jobs.get_jobs(ids) if ids else {}

    async def check_after(
        self, after: Sequence[str], visible: Callable[[Job], bool] | None = None
    ) -> dict[str, Job]:
        """The parents `after` names, by id; InvalidBody naming the first that does not
        exist or that `visible` says the submitter may not see (as if it did not exist)."""
        problem = after_problem(after)
        if problem is not None:
            raise InvalidBody(problem)
        parents = await self.store.jobs.get_jobs(list(after))
        for parent_id in after:
            parent = parents.get(parent_id)
            if parent is None or (visible is not None and not visible(parent)):
                raise InvalidBody(
                    f'"after": there is no job {parent_id[:80]!r} (or it is not yours to '
                    "follow): name jobs that exist, by the ids their submits answered"
                )
        return parents

    # -- served types -----------------------------------------------------------------

    async def mark_served(self, types: list[str] | None) -> None:
        """A worker asked to lease `types` (None: any type): record it in the store, at most
        once per type every SERVED_MARK_INTERVAL seconds from this node."""
        now = time.time()
        marked = self._marked
        due = [
            t for t in (types or [ANY_TYPE]) if now - (marked.get(t) or 0.0) >= SERVED_MARK_INTERVAL
        ]
        if not due:
            return
        await self.store.jobs.mark_served(due, now)
        marked.mark(due, now)

    async def served(self, type_: str) -> bool:
        """True when a worker asked to lease jobs of `type_` (or of any type) within the
        last SERVED_WINDOW seconds, on any node sharing the store."""
        now = time.time()
        since = now - SERVED_WINDOW
        for known in (self._marked, self._seen):
            if (known.latest((type_, ANY_TYPE)) or 0.0) > since:
                return True
        last = await self.store.jobs.served_at([type_, ANY_TYPE])
        if last is None or last <= since:
            return False
        self._seen.mark((type_,), last)
        return True

    # -- the worker list ---------------------------------------------------------------

    def worker_due(
        self, worker: WorkerIdentity, types: list[str] | None, user: str | None
    ) -> WorkerSeen | None:
        """The record to write of a worker that asks to lease `types` now (`record_worker`),
        or None when this node wrote the same description of it less than
        WORKER_MARK_INTERVAL seconds ago."""
        now = time.time()
        noted = self._workers.get(worker.id)
        if noted is not None and now - noted[1] < WORKER_MARK_INTERVAL:
            seen = noted[0]
            if (seen.name, seen.concurrency, seen.user, seen.types) == (
                worker.name,
                worker.concurrency,
                user,
                types,
            ):
                return None
        return WorkerSeen(worker.id, worker.name, types, worker.concurrency, user, now, now)

    async def record_worker(self, seen: WorkerSeen) -> None:
        """Write a worker's record to the store, and remember it as written now."""
        await self.store.workers.record_worker(seen)
        self._workers.note(seen, seen.last_seen)

    async def _refresh_worker(self, worker_id: str) -> None:
        """A worker heartbeat a job: refresh its record, at most as often as a lease
        request would, when this node knows it (it wrote its record from a lease request)."""
        noted = self._workers.get(worker_id)
        now = time.time()
        if noted is None or now - noted[1] < WORKER_MARK_INTERVAL:
            return
        await self.record_worker(replace(noted[0], first_seen=now, last_seen=now))

    async def workers(self) -> tuple[list[WorkerSeen], list[Job]]:
        """The workers seen within the last WORKER_WINDOW seconds (most recently seen
        first), and the running jobs (newest first, at most MAX_RUNNING_LISTED)."""
        seen = await self.store.workers.list_workers(time.time() - WORKER_WINDOW)
        running: list[Job] = []
        before: JobCursor | None = None
        for _ in range(RUNNING_PAGES):
            page = await self.store.jobs.list_jobs("running", None, RUNNING_PAGE, before)
            running.extend(page.jobs)
            if page.next is None or len(running) >= MAX_RUNNING_LISTED:
                break
            before = page.next
        return seen, running[:MAX_RUNNING_LISTED]

    # -- submit and follow ------------------------------------------------------------

    async def submit(
        self,
        type_: str,
        payload: Any = None,
        *,
        max_attempts: int = 3,
        timeout: float | None = None,  # noqa: ASYNC109 - the job's time limit, not this call's
        delay: float = 0.0,
        priority: int = 0,
        idempotency_key: str | None = None,
        unique_key: str | None = None,
        group: str | None = None,
        submitted_by: str | None = None,
        job_id: str | None = None,
        after: Sequence[str] | None = None,
        visible: Callable[[Job], bool] | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job; returns it and whether it is new (False: the idempotency key
        matched, or the returned job, waiting, queued or running, holds `unique_key`: see
        `deduplicated`).

        `job_id` names the job (a schedule's firing, whose idempotency key is that id);
        by default it gets a new random id. Idempotency keys starting with `sched:` are
        those of firings: any other submit is refused one (BadRequest).

        With `after` (parent job ids, each one that exists and that `visible` lets the
        submitter see), the job waits until they all succeeded: it is queued at once when
        they already have, and cancelled at once, with the reason, when one has failed or
        was cancelled."""
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
            raise BadRequest("Idempotency-Key must be 1-200 characters")
        if job_id != idempotency_key and (idempotency_key or "").startswith(SCHEDULE_JOB_PREFIX):
            raise BadRequest(
                f"Idempotency-Key values starting with {SCHEDULE_JOB_PREFIX} are "
                "reserved for schedules' firings: use another key"
            )
        self.check_fields(type_, payload, max_attempts, timeout, delay, priority, unique_key, group)
        parents = {} if after is None else await self.check_after(after, visible)
        now = time.time()
        job = Job(
            id=job_id or new_job_id(),
            type=type_,
            payload=payload,
            max_attempts=max_attempts,
            timeout=timeout,
            priority=priority,
            idempotency_key=idempotency_key,
            unique_key=unique_key,
            group=group,
            submitted_by=submitted_by,
            created_at=now,
            updated_at=now,
            run_at=now + delay,
            after=list(dict.fromkeys(after or ())),
            status="waiting" if after else "queued",
        )
        job, event = transitions.settle(parents)(job, now)
        change, created = await self.store.jobs.submit_job(job, event or job.status)
        if created:
            self.counters.submitted += 1
        job = self._announce(change)
        if created and job.status == "waiting":
            await self._settle_jobs([job])  # its parents, read again after its write
            await self._clear_marks([change])
        return job, created

    def check_fields(
        self,
        type_: str,
        payload: Any,
        max_attempts: int,
        timeout: float | None,
        delay: float,
        priority: int,
        unique_key: str | None,
        group: str | None,
    ) -> None:
        """InvalidBody (or what `check_storable` raises) unless these are valid fields of
        a submit (`check_job_fields`, with this service's payload depth)."""
        check_job_fields(
            type_,
            payload,
            max_depth=self.max_depth,
            max_attempts=max_attempts,
            timeout=timeout,
            delay=delay,
            priority=priority,
            unique_key=unique_key,
            group=group,
        )

    async def submit_batch(
        self,
        specs: Sequence[BatchJob],
        *,
        submitted_by: str | None = None,
        visible: Callable[[Job], bool] | None = None,
    ) -> list[Job]:
        """Submit a graph of jobs at once: all are stored, in one atomic unit of the store,
        or none is. Each job's `after` names jobs of the batch by their `ref`, or existing
        jobs (that `visible` lets the submitter see) by id; a job waits for its parents as
        with `submit`. InvalidBody, with nothing stored, for a bad field (named by the
        job's place), a ref used twice, an `after` naming neither a ref nor a job, a
        cycle (named), or two jobs of one type with one unique key; Conflict when a job
        that exists holds a unique key of the batch. Returns the jobs in the batch's
        order."""
        if not 1 <= len(specs) <= MAX_BATCH_JOBS:
            raise InvalidBody(f'"jobs" must hold 1 to {MAX_BATCH_JOBS} jobs')
        refs: dict[str, int] = {}
        keys: dict[tuple[str, str], int] = {}
        for n, spec in enumerate(specs):
            try:
                problem = key_problem("ref", spec.ref)
                if problem is not None:
                    raise InvalidBody(problem)
                if spec.ref in refs:
                    raise InvalidBody(
                        f'"ref" {spec.ref!r} names jobs[{refs[spec.ref]}] already: give '
                        "each job a ref of its own"
                    )
                refs[spec.ref] = n
                self.check_fields(
                    spec.type,
                    spec.payload,
                    spec.max_attempts,
                    spec.timeout,
                    spec.delay,
                    spec.priority,
                    spec.unique_key,
                    spec.group,
                )
                if spec.after is not None:
                    problem = after_problem(spec.after)
                    if problem is not None:
                        raise InvalidBody(problem)
                if spec.unique_key is not None:
                    held = (spec.type, spec.unique_key)
                    if held in keys:
                        raise InvalidBody(
                            f'"unique_key" {spec.unique_key!r} of type {spec.type!r} is '
                            f"jobs[{keys[held]}]'s too: one job of the batch may hold it"
                        )
                    keys[held] = n
            except TidingsError as exc:
                raise type(exc)(f"jobs[{n}] ({spec.ref[:80]!r}): {exc.message}") from None
        existing = list(
            dict.fromkeys(p for spec in specs for p in spec.after or () if p not in refs)
        )
        parents = await self.store.jobs.get_jobs(existing) if existing else {}
        for n, spec in enumerate(specs):
            for name in spec.after or ():
                known = parents.get(name)
                if name not in refs and (
                    known is None or (visible is not None and not visible(known))
                ):
                    raise InvalidBody(
                        f'jobs[{n}] ({spec.ref[:80]!r}): "after": {name[:80]!r} is neither '
                        "a ref of this batch nor a job that exists (and is yours to follow)"
                    )
        order = _parents_first(specs, refs)
        ids = {spec.ref: new_job_id() for spec in specs}
        now = time.time()
        made: dict[str, Job] = dict(parents)
        jobs: list[Job | None] = [None] * len(specs)
        events: list[str] = [""] * len(specs)
        for n in order:
            spec = specs[n]
            after = list(dict.fromkeys(ids.get(p, p) for p in spec.after or ()))
            job = Job(
                id=ids[spec.ref],
                type=spec.type,
                payload=spec.payload,
                max_attempts=spec.max_attempts,
                timeout=spec.timeout,
                priority=spec.priority,
                unique_key=spec.unique_key,
                group=spec.group,
                submitted_by=submitted_by,
                created_at=now,
                updated_at=now,
                run_at=now + spec.delay,
                after=after,
                status="waiting" if after else "queued",
            )
            job, event = transitions.settle(made)(job, now)
            made[job.id] = job
            jobs[n] = job
            events[n] = event or job.status
        try:
            changes = await self.store.jobs.submit_jobs([j for j in jobs if j is not None], events)
        except UniqueHeld as exc:
            # As on a single submit: the holder is named only to whoever may follow it.
            holder = await self.store.jobs.get_job(exc.holder)
            at = next(
                (
                    i
                    for i, j in enumerate(jobs)
                    if j is not None
                    and holder is not None
                    and (j.type, j.unique_key) == (holder.type, holder.unique_key)
                ),
                None,
            )
            which = "a job of the batch" if at is None else f"jobs[{at}] ({specs[at].ref[:80]!r})"
            if holder is not None and (visible is None or visible(holder)):
                by = f"job {holder.id}"
            else:
                by = "another job, not yours" if holder is not None else "another job"
            raise Conflict(
                f"{which}: its unique key is held by {by} (waiting, queued or running): "
                "nothing of the batch was made"
            ) from None
        self.counters.submitted += len(changes)
        out = [self._announce(change) for change in changes]
        # Those that wait on jobs that existed: their parents, read again after the write.
        await self._settle_jobs(
            [job for job in out if job.status == "waiting" and any(p in parents for p in job.after)]
        )
        await self._clear_marks(changes)
        return out

    @staticmethod
    def deduplicated(job: Job, created: bool, idempotency_key: str | None) -> bool:
        """Whether `submit` answered (`job`, `created`) because `job` holds the unique key:
        not new, and not the job of the submit's idempotency key."""
        return not created and (idempotency_key is None or job.idempotency_key != idempotency_key)

    async def get(self, job_id: str) -> Job:
        """One job; NotFound when it does not exist (or was swept)."""
        job = await self.store.jobs.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}: it never existed or was removed after its TTL")
        return job

    async def wait(self, job: Job, seconds: float) -> Job:
        """`job` (as its caller just read or submitted it) once it is finished, or as it is
        after `seconds` (capped)."""
        deadline = time.monotonic() + max(0.0, min(seconds, self.long_poll_cap))
        # A job that has already ended needs no channel to follow (on a shared store that
        # costs the relay a lookup) and no second read.
        if job.terminal or seconds <= 0:
            return job
        job_id = job.id
        channel = job_channel(job_id)
        while True:
            fut = self.hub.waiter(channel)
            try:
                if self.relay_watch is not None:
                    await self.relay_watch(channel)
                job = await self.get(job_id)
                remaining = deadline - time.monotonic()
                if job.terminal or remaining <= 0 or self.hub.closing:
                    return job
                await asyncio.wait((fut,), timeout=remaining)
            finally:
                self.hub.drop_waiter(channel, fut)

    async def list_jobs(
        self, status: str | None, type_: str | None, limit: int, before: JobCursor | None = None
    ) -> JobPage:
        """A page of jobs, newest first, older than `before` when given."""
        return await self.store.jobs.list_jobs(status, type_, limit, before)

    async def queues(self) -> dict[str, dict[str, int]]:
        """Counts per type and status."""
        return await self.store.jobs.queue_counts()

    # -- queue limits -----------------------------------------------------------------

    async def set_limits(self, type_: str, limits: QueueLimits) -> QueueLimits | None:
        """Set the limits of a job type (every one null: lift them all); returns them
        (None: lifted). InvalidBody for a bad type or value; Conflict when MAX_QUEUE_LIMITS
        other types have limits already."""
        if CHANNEL_RE.fullmatch(type_) is None:
            raise InvalidBody(f"{type_[:80]!r} is not a job type (1-200 of A-Z a-z 0-9 . _ : -)")
        problem = limits.problem()
        if problem is not None:
            raise InvalidBody(problem)
        kept: QueueLimits | None = None if limits.empty else limits
        if kept is not None:
            known = await self.store.jobs.queue_limits()
            if type_ not in known and len(known) >= MAX_QUEUE_LIMITS:
                raise Conflict(
                    f"{len(known)} job types have limits, the most there may be: lift some "
                    "(DELETE /v1/queues/{type}) first"
                )
        await self.store.jobs.set_queue_limits(type_, kept)
        self._limits_read = -math.inf  # read them again at the next lease
        self._wake(type_)  # raised or lifted: held jobs may go now
        return kept

    async def limits(
        self, shown: Callable[[str], bool] | None = None
    ) -> dict[str, tuple[QueueLimits, dict[str, int]]]:
        """Each job type with limits (those `shown` says, if given): its limits and, per
        limit, the jobs it holds back now (stores.limits.LimitCounters.waiting). Counters
        are read only for the types answered."""
        limits = await self.store.jobs.queue_limits()
        if shown is not None:
            limits = {type_: limit for type_, limit in limits.items() if shown(type_)}
        now = time.time()
        counters = await self.store.jobs.limit_counters(limits, now)
        return {
            type_: (limit, counters[type_].waiting(limit, now)) for type_, limit in limits.items()
        }

    # -- workers ----------------------------------------------------------------------

    def check_lease(
        self,
        types: list[str] | None,
        max_jobs: int,
        lease: float,
        worker: WorkerIdentity | None = None,
    ) -> None:
        """InvalidBody unless these are valid arguments of `lease`."""
        if worker is not None:
            problem = worker.problem()
            if problem is not None:
                raise InvalidBody(f'"worker": {problem}')
        if types is not None:
            if not 1 <= len(types) <= MAX_LEASE_TYPES:
                raise InvalidBody(
                    f'"types" must be a list of 1 to {MAX_LEASE_TYPES} job types, or omitted'
                )
            for type_ in types:
                if not isinstance(type_, str) or CHANNEL_RE.fullmatch(type_) is None:
                    raise InvalidBody(
                        f'"types": {type_!r} is not a job type (1-200 of A-Z a-z 0-9 . _ : -)'
                    )
        if not 1 <= max_jobs <= MAX_LEASE_BATCH:
            raise InvalidBody(f'"max" must be between 1 and {MAX_LEASE_BATCH}')
        if not MIN_LEASE <= lease <= MAX_LEASE:
            raise InvalidBody(f'"lease" must be between {MIN_LEASE} and {MAX_LEASE} seconds')

    async def lease(
        self,
        types: list[str] | None,
        max_jobs: int,
        wait: float,
        lease: float,
        worker: WorkerIdentity | None = None,
        user: str | None = None,
    ) -> list[Job]:
        """Lease up to `max_jobs` ready jobs, long-polling up to `wait` seconds for one.

        Each look at the store (the first, and one per wake-up or LEASE_RECHECK while
        parked) marks the types served (`mark_served`) and, when the request says who its
        `worker` is (authenticated as `user`, None: anonymous), records the worker
        (`worker_due`). The leased jobs record the worker's id."""
        self.check_lease(types, max_jobs, lease, worker)
        wanted = None if types is None else frozenset(types)
        take = transitions.lease(lease, None if worker is None else worker.id)
        deadline = time.monotonic() + max(0.0, min(wait, self.long_poll_cap))
        while True:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._work_waiters = [w for w in self._work_waiters if not w[1].done()]
            self._work_waiters.append((wanted, fut))
            if self.on_park is not None and deadline > time.monotonic():
                self.on_park()  # before the store is read: no wake-up after it is missed
            await self._refresh_limits()
            await self.mark_served(types)
            if worker is not None:
                seen = self.worker_due(worker, types, user)
                if seen is not None:  # checked here, not in a coroutine: the lease path is hot
                    await self.record_worker(seen)
            changes = await self._take(types, max_jobs, take)
            remaining = deadline - time.monotonic()
            if changes or remaining <= 0 or self.hub.closing:
                if not fut.done():
                    fut.cancel()
                return [self._announce(c) for c in changes]
            await asyncio.wait((fut,), timeout=min(remaining, self._recheck_after(types)))
            if not fut.done():
                fut.cancel()

    async def _take(
        self, types: list[str] | None, max_jobs: int, take: Transition
    ) -> list[JobChange]:
        """Lease in the store; if the caller is cancelled meanwhile, give the jobs back.

        A lease request whose worker went away (it closed the request) must not leave
        jobs running for nobody until their lease expires, costing them an attempt.
        """
        taking = asyncio.ensure_future(
            self.store.jobs.lease_jobs(types, max_jobs, time.time(), take)
        )
        try:
            return await asyncio.shield(taking)
        except asyncio.CancelledError:
            taking.add_done_callback(self._give_back)
            raise

    def _give_back(self, taking: asyncio.Future[list[JobChange]]) -> None:
        if taking.cancelled() or taking.exception() is not None:
            return
        self.give_back([self._announce(change) for change in taking.result()])

    def give_back(self, jobs: Sequence[Job]) -> None:
        """Requeue leased jobs at once, their attempt uncounted: the answer that would have
        handed them over could not be built or sent. Runs on even if the caller is
        cancelled meanwhile."""
        for job in jobs:
            if job.lease_token is not None:
                task = asyncio.get_running_loop().create_task(
                    self._release(job.id, job.lease_token)
                )
                self._releases.add(task)
                task.add_done_callback(self._releases.discard)

    async def _release(self, job_id: str, token: str) -> None:
        release = transitions.release(token)
        self._announce(await self.store.jobs.transition_job(job_id, release, durable=False))

    async def heartbeat(
        self,
        job_id: str,
        token: str,
        progress: float | None = None,
        message: str | None = None,
        lease: float | None = None,
    ) -> tuple[bool, float]:
        """Extend a lease and record progress; returns (cancel_requested, lease_expires_at)."""
        if progress is not None and not 0 <= progress <= 100:
            raise InvalidBody('"progress" must be a number from 0 to 100')
        if lease is not None and not MIN_LEASE <= lease <= MAX_LEASE:
            raise InvalidBody(f'"lease" must be between {MIN_LEASE} and {MAX_LEASE} seconds')
        beat = transitions.heartbeat(token, progress, message, lease)
        # Not durable: a lost heartbeat costs, at worst, a replay of the job.
        change = await self.store.jobs.transition_job(job_id, beat, durable=False)
        job = self._announce(change)
        # A worker whose slots are all busy asks for no lease, yet serves this type, and
        # is still there.
        await self.mark_served([job.type])
        if job.worker is not None:
            await self._refresh_worker(job.worker)
        return job.cancel_requested, job.lease_expires_at or 0.0

    async def complete(self, job_id: str, token: str, result: Any) -> Job:
        """The worker finished the job: it succeeded with `result`."""
        check_storable(result, '"result"', self.max_depth)
        done = transitions.complete(token, result)
        return self._announce(await self.store.jobs.transition_job(job_id, done))

    async def fail(self, job_id: str, token: str, error: Any, retry: bool = True) -> Job:
        """The worker failed the attempt: retry after a backoff, or end failed (or cancelled).
        `error` is kept as `error_object` makes it, with the attempt's number."""
        check_storable(error, '"error"', self.max_depth)
        failed = transitions.fail(token, error_object(error), retry, self.backoff)
        return self._announce(await self.store.jobs.transition_job(job_id, failed))

    async def report(self, outcomes: Sequence[JobOutcome]) -> list[Job | TidingsError]:
        """Complete or fail several jobs in one store operation (one transaction).

        Each outcome is applied or refused on its own, exactly as `complete` or `fail`
        would: a stale lease token (Conflict), a gone job (NotFound) or a result or error
        that cannot be stored (nested too deep, not encodable) takes that job's place in
        the answer and leaves it unchanged, while the others still apply.
        """
        if not 1 <= len(outcomes) <= MAX_REPORT_BATCH:
            raise InvalidBody(f'"results" must hold 1 to {MAX_REPORT_BATCH} outcomes')
        # A value that cannot be stored is refused before its job is looked up (the same
        # answer whether or not the job exists); the others go to the store together.
        steps: list[JobStep] = []
        refused: list[TidingsError | None] = []
        for o in outcomes:
            try:
                steps.append((o.id, self._outcome_step(o), True))
                refused.append(None)
            except TidingsError as exc:
                refused.append(exc)
        applied = iter(await self.store.jobs.transition_jobs(steps) if steps else [])
        answers: list[Job | TidingsError] = []
        for bad in refused:
            change = bad if bad is not None else next(applied)
            answers.append(change if isinstance(change, TidingsError) else self._announce(change))
        return answers

    def _outcome_step(self, o: JobOutcome) -> Transition:
        """The transition applying one reported outcome; the TidingsError saying why when
        its result or error cannot be stored."""
        check_storable(o.value, '"result"' if o.ok else '"error"', self.max_depth)
        if o.ok:
            return transitions.complete(o.lease_token, o.value)
        return transitions.fail(o.lease_token, error_object(o.value), o.retry, self.backoff)

    async def expire(self) -> list[Job]:
        """Take back every job whose lease ended; each is requeued, failed or cancelled once."""
        expired = transitions.expire(self.backoff)
        return [self._announce(c) for c in await self.store.jobs.expire_jobs(time.time(), expired)]

    # -- clients ----------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; ask a running one's worker to stop."""
        return self._announce(await self.store.jobs.transition_job(job_id, transitions.cancel))

    async def cancel_queued(self, job_id: str) -> Job:
        """Cancel a job if it is still queued; a running or ended one is left as it is."""
        return self._announce(
            await self.store.jobs.transition_job(job_id, transitions.cancel_queued)
        )

    async def retry(self, job_id: str, shows: Callable[[Job], bool] | None = None) -> Job:
        """Requeue a failed (dead) or cancelled job with a fresh set of attempts; Conflict
        while another waiting, queued or running job of its type holds its unique key,
        naming that job only when `shows` it (None: always). A job with parents waits again,
        and is settled anew: queued if they all succeeded, cancelled again (with the reason)
        if one has failed or was cancelled."""
        try:
            changed = await self.store.jobs.transition_job(job_id, transitions.retry)
        except UniqueHeld as exc:
            holder = await self.store.jobs.get_job(exc.holder)
            if shows is None or (holder is not None and shows(holder)):
                raise
            raise Conflict(
                "a waiting, queued or running job of its type holds its unique key, and it is "
                f"not yours: job {job_id} can be retried once that one has ended"
            ) from None
        job = self._announce(changed)
        if job.status == "waiting":
            await self._settle_jobs([job])
            await self._clear_marks([changed])
            job = await self.get(job_id)
        return job

    # -- housekeeping -----------------------------------------------------------------

    async def start(self) -> None:
        """Arm the wake-up for the earliest delayed job already in the store."""
        first = await self.store.jobs.next_run_at()
        if first is not None:
            delay = max(0.0, first - time.time()) + TIMER_SLACK
            asyncio.get_running_loop().call_later(delay, self._wake, None)

    async def sweep(self, ttl: float) -> None:
        """Remove jobs that ended more than `ttl` seconds ago, with their channels."""
        for job_id in await self.store.jobs.sweep_jobs(time.time() - ttl):
            self.hub.forget(job_channel(job_id))

    def close(self) -> None:
        """Answer every parked lease request (shutdown)."""
        self._wake(None)
