"""`memory://` — volatile channels in this process, for tests and throwaway runs."""

from __future__ import annotations

import heapq
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tidings.protocol.errors import InvalidCursor, NotFound, StoreClosed, TidingsError
from tidings.protocol.jobs import JOB_CHANNEL_PREFIX, Job, job_channel
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

__all__ = ["MemoryStore", "parse_seq"]


def parse_seq(message_id: str) -> int:
    """Sequence number of an id of the embedded stores (decimal digits)."""
    if not (message_id.isascii() and message_id.isdigit()) or len(message_id) > 18:
        raise InvalidCursor(
            f"cursor {message_id!r} is not a message id of this server: use an id it gave you, or 0"
        )
    return int(message_id)


@dataclass
class _Channel:
    created: float
    last_seq: int = 0
    retention: Retention | None = None
    # Retained messages; their sequence numbers are contiguous, ending at last_seq.
    messages: deque[Message] = field(default_factory=deque)
    idempotency: dict[str, tuple[Message, str | None, float]] = field(default_factory=dict)


class MemoryStore(Store, ChannelStore, JobStore, AuthStore):
    """Channels, jobs, users and credentials in dictionaries; same semantics as the SQLite
    store, no durability."""

    def __init__(self, default_retention: Retention) -> None:
        super().__init__(default_retention)
        self.channels = self.jobs = self.auth = self  # one object holds all three parts
        self._channels: dict[str, _Channel] = {}
        self._jobs: dict[str, Job] = {}
        self._job_keys: dict[str, str] = {}
        self._queued: set[str] = set()
        self._running: set[str] = set()
        # Queued jobs by when they are due, and the due ones per type by lease order
        # (-priority, run_at, id). Entries are checked against the job when taken (a job
        # leased or re-queued since leaves a stale entry behind), so a lease costs
        # O(log n) per job instead of sorting every queued job.
        self._delayed: list[tuple[float, str]] = []
        self._due: dict[str, list[tuple[int, float, str]]] = {}
        self._users: dict[str, User] = {}
        self._credentials: dict[str, Credential] = {}
        self._open = False

    async def start(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def cursor_key(self, message_id: str) -> int:
        return parse_seq(message_id)

    def _check(self) -> None:
        if not self._open:
            raise StoreClosed("store is not started: call `await store.start()` first")

    def _retention(self, ch: _Channel) -> Retention:
        return ch.retention or self.default_retention

    def _info(self, name: str, ch: _Channel) -> ChannelInfo:
        return ChannelInfo(
            name=name,
            first_id=ch.messages[0].id if ch.messages else None,
            last_id=str(ch.last_seq) if ch.last_seq else None,
            messages=len(ch.messages),
            created=ch.created,
            retention=self._retention(ch),
            custom_retention=ch.retention is not None,
        )

    async def publish(
        self,
        channel: str,
        data: Any,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> Published:
        self._check()
        now = time.time()
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel(created=now)
        limit = self._retention(ch).max_messages
        if idempotency_key is not None:
            seen = ch.idempotency.get(idempotency_key)
            if seen is not None and seen[2] > now:
                return Published(seen[0], seen[1], keep=limit, duplicate=True)
        published = self._append(channel, data, event, now)
        if idempotency_key is not None:
            ch.idempotency[idempotency_key] = (
                published.message,
                published.prev_id,
                now + IDEMPOTENCY_TTL,
            )
        return published

    def _append(self, channel: str, data: Any, event: str | None, now: float) -> Published:
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel(created=now)
        limit = self._retention(ch).max_messages
        prev = str(ch.last_seq) if ch.last_seq else None
        ch.last_seq += 1
        msg = Message(id=str(ch.last_seq), channel=channel, data=data, event=event, time=now)
        ch.messages.append(msg)
        while len(ch.messages) > limit:
            ch.messages.popleft()
        return Published(msg, prev, keep=limit)

    async def read(self, channel: str, after: str, limit: int) -> ReadResult:
        self._check()
        after_seq = parse_seq(after)
        ch = self._channels.get(channel)
        if ch is None:
            return ReadResult(messages=[], reset=after_seq != 0, first_id=None, last_id=None)
        first = ch.last_seq - len(ch.messages) + 1
        reset = is_reset(after_seq, first, ch.last_seq)
        start = 0 if reset else max(0, after_seq - first + 1)
        out = [ch.messages[i] for i in range(start, min(start + limit, len(ch.messages)))]
        return ReadResult(
            messages=out,
            reset=reset,
            first_id=str(first) if ch.messages else None,
            last_id=str(ch.last_seq) if ch.last_seq else None,
        )

    async def info(self, channel: str) -> ChannelInfo | None:
        self._check()
        ch = self._channels.get(channel)
        return None if ch is None else self._info(channel, ch)

    async def list_channels(self, prefix: str = "", limit: int = 1000) -> list[ChannelInfo]:
        self._check()
        names = sorted(n for n in self._channels if n.startswith(prefix))[:limit]
        return [self._info(n, self._channels[n]) for n in names]

    async def delete(self, channel: str) -> bool:
        self._check()
        return self._channels.pop(channel, None) is not None

    async def set_retention(self, channel: str, retention: Retention | None) -> ChannelInfo:
        self._check()
        ch = self._channels.get(channel)
        if ch is None:
            ch = self._channels[channel] = _Channel(created=time.time())
        ch.retention = retention
        limit = self._retention(ch).max_messages
        while len(ch.messages) > limit:
            ch.messages.popleft()
        return self._info(channel, ch)

    async def sweep(self, now: float) -> list[str]:
        self._check()
        trimmed = []
        for name, ch in self._channels.items():
            if name.startswith(JOB_CHANNEL_PREFIX):
                continue  # a job's channel goes with its job (see Store.sweep)
            cutoff = now - self._retention(ch).max_age
            if ch.messages and ch.messages[0].time < cutoff:
                trimmed.append(name)
            while ch.messages and ch.messages[0].time < cutoff:
                ch.messages.popleft()
            expired = [k for k, v in ch.idempotency.items() if v[2] <= now]
            for k in expired:
                del ch.idempotency[k]
        return trimmed

    # -- jobs -------------------------------------------------------------------------

    def _save(self, job: Job, event: str | None, now: float) -> JobChange:
        self._jobs[job.id] = job
        self._queued.discard(job.id)
        self._running.discard(job.id)
        if job.status == "queued":
            self._queued.add(job.id)
            heapq.heappush(self._delayed, (job.run_at, job.id))
        elif job.status == "running":
            self._running.add(job.id)
        published = None
        if event is not None:
            published = self._append(job_channel(job.id), job_event_data(job), event, now)
        return JobChange(job, published)

    async def submit_job(self, job: Job, event: str) -> tuple[JobChange, bool]:
        self._check()
        key = job.idempotency_key
        if key is not None and key in self._job_keys:
            return JobChange(self._jobs[self._job_keys[key]], None), False
        if key is not None:
            self._job_keys[key] = job.id
        return self._save(job, event, job.created_at), True

    async def get_job(self, job_id: str) -> Job | None:
        self._check()
        return self._jobs.get(job_id)

    async def list_jobs(self, status: str | None, type_: str | None, limit: int) -> list[Job]:
        self._check()
        jobs = [
            j
            for j in self._jobs.values()
            if (status is None or j.status == status) and (type_ is None or j.type == type_)
        ]
        jobs.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        return jobs[:limit]

    async def queue_counts(self) -> dict[str, dict[str, int]]:
        self._check()
        out: dict[str, dict[str, int]] = {}
        for j in self._jobs.values():
            per = out.setdefault(j.type, {})
            per[j.status] = per.get(j.status, 0) + 1
        return out

    async def transition_job(self, job_id: str, fn: Transition, durable: bool = True) -> JobChange:
        self._check()
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        now = time.time()
        new, event = fn(job, now)
        return self._save(new, event, now)

    async def transition_jobs(self, steps: list[JobStep]) -> list[JobChange | TidingsError]:
        self._check()
        now = time.time()
        return [
            r if isinstance(r, TidingsError) else self._save(r[1], r[2], now)
            for r in apply_steps(steps, self._jobs, now)
        ]

    async def lease_jobs(
        self, types: list[str] | None, max_jobs: int, now: float, fn: Transition
    ) -> list[JobChange]:
        self._check()
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
        self._check()
        out = []
        for job_id in list(self._running):
            job = self._jobs[job_id]
            if job.lease_expires_at is not None and job.lease_expires_at < now:
                new, event = fn(job, now)
                out.append(self._save(new, event, now))
        return out

    async def next_run_at(self) -> float | None:
        self._check()
        return min((self._jobs[i].run_at for i in self._queued), default=None)

    async def sweep_jobs(self, finished_before: float) -> list[str]:
        self._check()
        gone = [
            j.id
            for j in self._jobs.values()
            if j.finished_at is not None and j.finished_at < finished_before
        ]
        for job_id in gone:
            job = self._jobs.pop(job_id)
            if job.idempotency_key is not None:
                self._job_keys.pop(job.idempotency_key, None)
            self._channels.pop(job_channel(job_id), None)
        return gone

    # -- principals -------------------------------------------------------------------

    async def put_user(self, user: User) -> None:
        self._check()
        self._users[user.name] = user

    async def get_user(self, name: str) -> User | None:
        self._check()
        return self._users.get(name)

    async def list_users(self) -> list[User]:
        self._check()
        return [self._users[n] for n in sorted(self._users)]

    async def delete_user(self, name: str) -> bool:
        self._check()
        theirs = [k for k, c in self._credentials.items() if c.user == name]
        for key in theirs:
            del self._credentials[key]
        return self._users.pop(name, None) is not None

    async def put_credential(self, cred: Credential) -> None:
        self._check()
        self._credentials[cred.key] = cred

    async def get_credential(self, key: str) -> Credential | None:
        self._check()
        cred = self._credentials.get(key)
        return cred if cred is not None and cred.live(time.time()) else None

    async def list_credentials(self, user: str | None = None) -> list[Credential]:
        self._check()
        now = time.time()
        out = [
            c
            for c in self._credentials.values()
            if c.live(now) and (user is None or c.user == user)
        ]
        out.sort(key=lambda c: (c.created, c.key))
        return out

    async def delete_credential(self, key: str) -> bool:
        self._check()
        return self._credentials.pop(key, None) is not None

    async def live_credentials(self, keys: list[str], now: float) -> set[str]:
        self._check()
        creds = self._credentials
        return {k for k in keys if k in creds and creds[k].live(now)}

    async def sweep_credentials(self, now: float) -> int:
        self._check()
        gone = [k for k, c in self._credentials.items() if not c.live(now)]
        for key in gone:
            del self._credentials[key]
        return len(gone)
