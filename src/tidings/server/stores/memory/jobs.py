"""The memory store's jobs: a dictionary with heaps for the lease order and a sorted list
for the listing order."""

from __future__ import annotations

import bisect
import heapq
import time

from tidings.protocol.errors import NotFound, TidingsError
from tidings.protocol.jobs import Job, job_channel
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
    unique_held,
)
from tidings.server.stores.common import JOB_LIST_SCAN, ServedMarks
from tidings.server.stores.memory.core import MemoryCore, MemoryLog

__all__ = ["MemoryJobs"]


class MemoryJobs(JobStore):
    """Every JobStore method; a job's events go to its channel through `log`."""

    def __init__(self, core: MemoryCore, log: MemoryLog) -> None:
        self._core = core
        self._log = log
        self._jobs: dict[str, Job] = {}
        self._job_keys: dict[str, str] = {}
        # (type, unique_key) -> the id of the queued or running job holding it.
        self._unique: dict[tuple[str, str], str] = {}
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

    def _save(self, job: Job, event: str | None, now: float) -> JobChange:
        self._jobs[job.id] = job
        if job.unique_key is not None:
            held = (job.type, job.unique_key)
            if job.active:
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
        return JobChange(job, published)

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
        # Jobs arrive about in creation order: the insertion point is at or near the end.
        bisect.insort(self._order, (job.created_at, job.id))
        return self._save(job, event, job.created_at), True

    async def get_job(self, job_id: str) -> Job | None:
        self._core.check()
        return self._jobs.get(job_id)

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
        return self._save(new, event, now)

    async def transition_jobs(self, steps: list[JobStep]) -> list[JobChange | TidingsError]:
        self._core.check()
        now = time.time()
        claimed: dict[tuple[str, str], str] = {}
        return [
            r if isinstance(r, TidingsError) else self._save(r[1], r[2], now)
            for r in apply_steps(
                steps, self._jobs, now, lambda old, new: self._check_unique(claimed, old, new)
            )
        ]

    def _check_unique(self, claimed: dict[tuple[str, str], str], old: Job, new: Job) -> None:
        """Conflict when `new` would take a unique key another job holds (or an earlier
        step of the same batch took: `claimed`)."""
        if not claims_unique(old, new):
            return
        held = (new.type, new.unique_key or "")
        holder = claimed.get(held) or self._unique.get(held)
        if holder is not None and holder != new.id:
            raise unique_held(new, holder)
        claimed[held] = new.id

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
        names = self._due if types is None else [t for t in types if t in self._due]
        heaps = [self._due[t] for t in names]
        out: list[JobChange] = []
        while len(out) < max_jobs:
            best = None
            for heap in heaps:
                while heap and not self._due_entry(heap[0]):
                    heapq.heappop(heap)
                if heap and (best is None or heap[0] < best[0]):
                    best = heap
            if best is None:
                break
            job = self._jobs[heapq.heappop(best)[2]]
            new, event = fn(job, now)
            out.append(self._save(new, event, now))
        return out

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
                out.append(self._save(new, event, now))
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
            self._log.channels.pop(job_channel(job_id), None)
        return gone

    async def mark_served(self, types: list[str], now: float) -> None:
        self._core.check()
        self._served.mark(types, now)

    async def served_at(self, types: list[str]) -> float | None:
        self._core.check()
        return self._served.latest(types)
