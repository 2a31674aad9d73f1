"""The memory store's jobs: a dictionary with heaps for the lease order and a sorted list
for the listing order."""

from __future__ import annotations

import bisect
import heapq
import time

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
from tidings.server.stores.common import JOB_LIST_SCAN, ServedMarks
from tidings.server.stores.limits import Allowance, LimitCounters
from tidings.server.stores.memory.core import MemoryCore, MemoryLog

__all__ = ["MemoryJobs"]


class MemoryJobs(JobStore):
    """Every JobStore method; a job's events go to its channel through `log`."""

    def __init__(self, core: MemoryCore, log: MemoryLog) -> None:
        self._core = core
        self._log = log
        self._jobs: dict[str, Job] = {}
        self._job_keys: dict[str, str] = {}
        # (type, unique_key) -> the id of the waiting, queued or running job holding it.
        self._unique: dict[tuple[str, str], str] = {}
        # Parent id -> the ids of the jobs submitted after it.
        self._dependents: dict[str, list[str]] = {}
        # Settle marks: job id -> stamp (JobStore.settle_marks).
        self._marks: dict[str, float] = {}
        # Every job's (created_at, id), ascending: the listing order, newest last.
        self._order: list[tuple[float, str]] = []
        # Jobs a filtered list_jobs call examines at most.
        self.list_scan = JOB_LIST_SCAN
        self._queued: set[str] = set()
        self._running: set[str] = set()
        # Queued jobs by when they are due, and the due ones per type by lease order
        # (-priority, run_at, id). Entries are checked against the job when taken (a job
        # leased or re-queued since leaves a stale entry behind), so a lease costs
        # O(log n) per job instead of sorting every queued job.
        self._delayed: list[tuple[float, str]] = []
        self._due: dict[str, list[tuple[int, float, str]]] = {}
        # When a worker last asked for each job type (see JobStore.mark_served).
        self._served = ServedMarks()
        # Queue limits per type, the rate state (GCRA tat) of each rate-limited type, the
        # running jobs per type, and per type the [queued, running] jobs of each group (a
        # group goes when both are 0).
        self._limits: dict[str, QueueLimits] = {}
        self._tat: dict[str, float] = {}
        self._type_running: dict[str, int] = {}
        self._groups: dict[str, dict[str, list[int]]] = {}
        # Due-heap entries a lease found held by their group's limit, per type and group,
        # in lease order: one goes back to the type's due heap each time a running job of
        # the group stops (all of a type's when its limits change), so a full group's
        # backlog is passed over once, not by every lease.
        self._parked: dict[str, dict[str, list[tuple[int, float, str]]]] = {}

    def _count(self, job: Job, delta: int) -> None:
        """Count `job` (delta 1) or uncount it (-1) in the running and group counters."""
        if job.status == "running":
            self._type_running[job.type] = self._type_running.get(job.type, 0) + delta
        if job.group is not None and job.active:
            groups = self._groups.setdefault(job.type, {})
            counts = groups.setdefault(job.group, [0, 0])
            counts[job.status == "running"] += delta
            if counts == [0, 0]:
                del groups[job.group]
                if not groups:
                    del self._groups[job.type]

    def _save(
        self, old: Job | None, job: Job, event: str | None, now: float, index: bool = True
    ) -> JobChange:
        """Store a job (`old`: as it was; None for a new one) and publish its event; with
        `index`, a new job goes under each of its parents that exists (a batch indexes its
        jobs once all are stored: a parent may follow its child in it)."""
        self._jobs[job.id] = job
        if old is not None:
            self._count(old, -1)
        self._count(job, 1)
        freed = old is not None and old.status == "running" and job.status != "running"
        if freed and old is not None and old.group is not None:  # a slot of its group
            self._unpark(old.type, old.group, 1)
        if job.unique_key is not None:
            held = (job.type, job.unique_key)
            if job.holds_unique:
                self._unique[held] = job.id
            elif self._unique.get(held) == job.id:
                del self._unique[held]
        self._queued.discard(job.id)
        self._running.discard(job.id)
        if job.status == "queued":
            self._queued.add(job.id)
            heapq.heappush(self._delayed, (job.run_at, job.id))
        elif job.status == "running":
            self._running.add(job.id)
        published = None
        if event is not None:
            published = self._log.append(job_channel(job.id), job_event_data(job), event, now)
        ended = job.terminal and (old is None or not old.terminal)
        change = JobChange(job, published, ended and job.id in self._dependents)
        if change.dependents:
            change = self._mark(change)
        return self._index(old, change) if index else change

    def _mark(self, change: JobChange) -> JobChange:
        """Write the settle mark of `change`'s job; the change saying so."""
        stamp = settle_stamp(change.job)
        self._marks[change.job.id] = stamp
        return JobChange(change.job, change.published, change.dependents, stamp)

    def _index(self, old: Job | None, change: JobChange) -> JobChange:
        """A new job goes under each of its parents that exists; one made waiting while
        a parent has ended or is gone is marked to be settled."""
        job = change.job
        if old is None:
            for parent in job.after:
                if parent in self._jobs:
                    self._dependents.setdefault(parent, []).append(job.id)
        jobs = self._jobs
        ended = {p: jobs[p].terminal for p in job.after if p in jobs}
        if settle_mark_due(old, job, ended):
            return self._mark(change)
        return change

    async def submit_job(self, job: Job, event: str) -> tuple[JobChange, bool]:
        self._core.check()
        key = job.idempotency_key
        if key is not None and key in self._job_keys:
            return JobChange(self._jobs[self._job_keys[key]], None), False
        if job.unique_key is not None:
            holder = self._unique.get((job.type, job.unique_key))
            if holder is not None:
                return JobChange(self._jobs[holder], None), False
        if key is not None:
            self._job_keys[key] = job.id
        return self._insert(job, event), True

    async def submit_jobs(self, jobs: list[Job], events: list[str]) -> list[JobChange]:
        self._core.check()
        claimed: dict[tuple[str, str], str] = {}
        for job in jobs:  # every check before the first write
            self._check_unique(claimed, None, job)
            if job.id in self._jobs:
                raise Conflict(f"a job with id {job.id!r} exists: nothing of the batch was made")
        if len({job.id for job in jobs}) != len(jobs):
            raise Conflict("two jobs of the batch have one id: nothing of the batch was made")
        made = [
            self._insert(job, event, index=False) for job, event in zip(jobs, events, strict=True)
        ]
        return [self._index(None, change) for change in made]

    def _insert(self, job: Job, event: str, index: bool = True) -> JobChange:
        """Store a new job, in the listing order (and, with `index`, under its parents)."""
        # Jobs arrive about in creation order: the insertion point is at or near the end.
        bisect.insort(self._order, (job.created_at, job.id))
        return self._save(None, job, event, job.created_at, index)

    async def get_job(self, job_id: str) -> Job | None:
        self._core.check()
        return self._jobs.get(job_id)

    async def get_jobs(self, job_ids: list[str]) -> dict[str, Job]:
        self._core.check()
        jobs = self._jobs
        return {i: jobs[i] for i in job_ids if i in jobs}

    async def dependents(self, job_id: str) -> list[str]:
        self._core.check()
        return list(self._dependents.get(job_id, ()))

    async def settle_marks(self, limit: int) -> list[tuple[str, float]]:
        self._core.check()
        marks = self._marks
        return heapq.nsmallest(limit, marks.items(), key=lambda mark: (mark[1], mark[0]))

    async def clear_settle_marks(self, marks: list[tuple[str, float]]) -> None:
        self._core.check()
        for job_id, stamp in marks:
            if self._marks.get(job_id) == stamp:
                del self._marks[job_id]

    async def list_jobs(
        self,
        status: str | None,
        type_: str | None,
        limit: int,
        before: JobCursor | None = None,
    ) -> JobPage:
        self._core.check()
        order = self._order
        at = len(order) if before is None else bisect.bisect_left(order, before.key())
        # Unfiltered, every job matches: the scan ends after limit + 1 of them.
        budget = self.list_scan if status is not None or type_ is not None else limit + 1
        stop = max(0, at - max(budget, limit + 1))
        out: list[Job] = []
        while at > stop:
            at -= 1
            job = self._jobs[order[at][1]]
            if (status is None or job.status == status) and (type_ is None or job.type == type_):
                if len(out) == limit:  # one more exists: the page is full and not the last
                    return JobPage(out, JobCursor.of(out[-1]))
                out.append(job)
        if at == 0:
            return JobPage(out, None)
        # The scan stopped first: the jobs older than the last one examined follow.
        return JobPage(out, JobCursor(*order[at]))

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        self._core.check()
        out: dict[str, dict[str, int]] = {}
        for j in self._jobs.values():
            per = out.setdefault(j.type, {})
            per[j.status] = per.get(j.status, 0) + 1
        return out

    async def transition_job(self, job_id: str, fn: Transition, durable: bool = True) -> JobChange:
        self._core.check()
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        now = time.time()
        new, event = fn(job, now)
        self._check_unique({}, job, new)
        return self._save(job, new, event, now)

    async def transition_jobs(self, steps: list[JobStep]) -> list[JobChange | TidingsError]:
        self._core.check()
        now = time.time()
        claimed: dict[tuple[str, str], str] = {}
        return [
            r if isinstance(r, TidingsError) else self._save(r[0], r[1], r[2], now)
            for r in apply_steps(
                steps, self._jobs, now, lambda old, new: self._check_unique(claimed, old, new)
            )
        ]

    def _check_unique(self, claimed: dict[tuple[str, str], str], old: Job | None, new: Job) -> None:
        """Conflict when `new` would take a unique key another job holds (or an earlier
        step of the same batch took: `claimed`)."""
        check_unique(
            claimed, old, new, lambda job: self._unique.get((job.type, job.unique_key or ""))
        )

    async def lease_jobs(
        self, types: list[str] | None, max_jobs: int, now: float, fn: Transition
    ) -> list[JobChange]:
        self._core.check()
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            run_at, job_id = heapq.heappop(delayed)
            job = self._jobs.get(job_id)
            if job is not None and job.status == "queued" and job.run_at == run_at:
                entry = (-job.priority, run_at, job_id)
                heapq.heappush(self._due.setdefault(job.type, []), entry)
        names = list(self._due) if types is None else [t for t in types if t in self._due]
        heaps = {t: self._due[t] for t in names}
        allowances = {t: self._allowance(t, now) for t in names if t in self._limits}
        out: list[JobChange] = []
        while len(out) < max_jobs:
            best: str | None = None
            for type_, heap in heaps.items():
                while heap and not self._due_entry(heap[0]):
                    heapq.heappop(heap)
                if heap and (best is None or heap[0] < heaps[best][0]):
                    best = type_
            if best is None:
                break
            allowance = allowances.get(best)
            if allowance is not None and not allowance.open():
                del heaps[best]  # its concurrency or rate is used up: none of it goes
                continue
            entry = heapq.heappop(heaps[best])
            job = self._jobs[entry[2]]
            if allowance is not None and not allowance.take(job.group):
                parked = self._parked.setdefault(best, {}).setdefault(job.group or "", [])
                heapq.heappush(parked, entry)
                continue
            new, event = fn(job, now)
            out.append(self._save(job, new, event, now))
        for type_, allowance in allowances.items():
            if allowance.limits.rate is not None:
                self._tat[type_] = allowance.tat
        return out

    def _allowance(self, type_: str, now: float) -> Allowance:
        groups = self._groups.get(type_, {})
        return Allowance(
            self._limits[type_],
            self._type_running.get(type_, 0),
            lambda group: groups.get(group, (0, 0))[1],
            self._tat.get(type_, 0.0),
            now,
        )

    def _unpark(self, type_: str, group: str, count: int | None) -> None:
        """Put back in the due heap `count` (None: all) parked entries of `type_`'s
        `group` whose jobs are still queued as the entries say."""
        groups = self._parked.get(type_)
        parked = None if groups is None else groups.get(group)
        if groups is None or parked is None:
            return
        while parked and (count is None or count > 0):
            entry = heapq.heappop(parked)
            if self._due_entry(entry):
                heapq.heappush(self._due.setdefault(type_, []), entry)
                count = None if count is None else count - 1
        if not parked:
            del groups[group]
            if not groups:
                del self._parked[type_]

    def _due_entry(self, entry: tuple[int, float, str]) -> bool:
        """True while the job of a due-heap entry is still queued as the entry says."""
        job = self._jobs.get(entry[2])
        return job is not None and job.status == "queued" and job.run_at == entry[1]

    async def expire_jobs(self, now: float, fn: Transition) -> list[JobChange]:
        self._core.check()
        out = []
        for job_id in list(self._running):
            job = self._jobs[job_id]
            if job.lease_expires_at is not None and job.lease_expires_at < now:
                new, event = fn(job, now)
                out.append(self._save(job, new, event, now))
        return out

    async def set_queue_limits(self, type_: str, limits: QueueLimits | None) -> None:
        self._core.check()
        if limits is None:
            self._limits.pop(type_, None)
        else:
            self._limits[type_] = limits
        for group in list(self._parked.get(type_, ())):
            self._unpark(type_, group, None)

    async def queue_limits(self) -> dict[str, QueueLimits]:
        self._core.check()
        return dict(self._limits)

    async def limit_counters(
        self, limits: dict[str, QueueLimits], now: float
    ) -> dict[str, LimitCounters]:
        self._core.check()
        due: dict[str, int] = dict.fromkeys(limits, 0)
        for job_id in self._queued:
            job = self._jobs[job_id]
            if job.type in due and job.run_at <= now:
                due[job.type] += 1
        out = {}
        for type_, limit in limits.items():
            cap = limit.group_concurrency
            full = sum(
                counts[0]
                for counts in self._groups.get(type_, {}).values()
                if cap is not None and counts[1] >= cap
            )
            out[type_] = LimitCounters(
                due[type_], self._type_running.get(type_, 0), self._tat.get(type_, 0.0), full
            )
        return out

    async def next_run_at(self) -> float | None:
        self._core.check()
        return min((self._jobs[i].run_at for i in self._queued), default=None)

    async def sweep_jobs(self, finished_before: float) -> list[str]:
        self._core.check()
        gone = [
            j.id
            for j in self._jobs.values()
            if j.finished_at is not None and j.finished_at < finished_before
        ]
        if gone:
            swept = set(gone)
            self._order = [entry for entry in self._order if entry[1] not in swept]
        for job_id in gone:
            job = self._jobs.pop(job_id)
            if job.idempotency_key is not None:
                self._job_keys.pop(job.idempotency_key, None)
            self._dependents.pop(job_id, None)
            self._marks.pop(job_id, None)
            self._log.channels.pop(job_channel(job_id), None)
        return gone

    async def mark_served(self, types: list[str], now: float) -> None:
        self._core.check()
        self._served.mark(types, now)

    async def served_at(self, types: list[str]) -> float | None:
        self._core.check()
        return self._served.latest(types)
