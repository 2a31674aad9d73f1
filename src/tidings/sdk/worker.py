"""The Worker runtime: lease jobs, run their handlers, keep their leases, report outcomes.

    worker = Worker()                       # concurrency by handler kind (see below)

    @worker.handler("resize")
    def resize(job: JobContext) -> dict[str, int]:
        for i in range(10):
            job.raise_if_cancelled()
            job.progress(i * 10, f"tile {i}")
            ...
        return {"tiles": 10}

    worker.run("http://127.0.0.1:8000")     # or: tidings worker app:worker --url ...

One runtime serves two backends, both behind the small `WorkerBackend` protocol:
`HttpBackend` speaks the worker protocol of the HTTP API (any server, any machine), and
`LocalBackend` calls the server's own job service (handlers running inside `tidings
serve`). The runtime is one lease loop and one task per running job:

- the lease loop long-polls for up to `concurrency - running` jobs at a time (batches of
  at most `MAX_LEASE_BATCH`); before each refill it lets the running jobs end (a 2 ms
  linger at most);
- each job task runs its handler (async handlers on the loop, sync ones in a thread) next
  to a heartbeat that extends the lease every `lease / 3` seconds, and soon after a
  `progress()` call (at most `MAX_HEARTBEATS_PER_SECOND` a second), carrying progress and
  message and bringing back `cancel_requested` (a task from its first beat or the first
  progress report on: a job that ends sooner costs a timer);
- the handler's return value completes the job; an exception fails it (retried by the
  server unless the handler was cancelled); a heartbeat answered 409 means the lease was
  lost (expired and given to someone else): the handler runs to its end, its outcome is
  discarded;
- outcomes are reported in batches (`/v1/workers/report`, one store transaction on the
  server): a finished job frees its slot at once and its outcome rides along with the
  lease loop's next request ("report, and lease for the free slots", `wait: 0`); while
  that loop is parked in a long poll, a reporter task sends whatever is queued in one
  request, and what finishes meanwhile in the next. Transport failures are retried with
  backoff until the job's lease ends; a drain waits for every outcome to be sent.

Unless given, the concurrency follows the handlers' kind: `ASYNC_CONCURRENCY` (64) jobs at
once when every handler is an `async def` (each running job is a coroutine on the loop),
`SYNC_CONCURRENCY` (32, the most threads `ThreadPoolExecutor` starts by default) as soon as
one handler is a plain function (each of its jobs holds a thread while it runs). Jobs are
leased in batches of up to the free slots, so the concurrency also bounds how many jobs
one round trip carries: below about 16, short jobs pay for a round trip every few jobs
(docs/decisions/0014).

Every lease request says who the worker is (`WorkerIdentity`: an id random per run, a
name — `host:pid` unless `Worker(name=...)` — and its concurrency), so the server lists it
(`GET /v1/workers`, `tidings workers`) with its types and running jobs.

A handler's exception fails the attempt with `{"type", "message", "traceback"}` (the
formatted traceback, its last 16 KiB); the worker logs it with its traceback, as a
WARNING while attempts remain and an ERROR on the last one.

Errors raised by this module:

    JobCancelled       raised by `raise_if_cancelled()`: the attempt fails without retry,
                       so a job whose cancellation was requested ends `cancelled`
    LeaseLost          a backend's answer to a stale or foreign lease token (409)
    WorkerRefused      raised by `run`/`run_async`: the server refuses this worker's
                       credentials (401: no token, or a revoked one) or the job types it
                       asks for (403); retrying cannot help, so the worker stops
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import os
import queue
import signal
import socket
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
import msgspec

from tidings.protocol.codecs import encode_json, parse_optional_time, parse_time
from tidings.protocol.errors import Conflict, ErrorCode, NotFound, StoreError, TidingsError
from tidings.protocol.jobs import (
    MAX_WORKER_CONCURRENCY,
    MAX_WORKER_NAME,
    HeartbeatAnswerWire,
    Job,
    JobOutcome,
    LeaseAnswerWire,
    LeasedJobWire,
    OutcomeWire,
    ParentBudget,
    ParentWire,
    ReportAnswerWire,
    WorkerIdentity,
    bound_traceback,
)
from tidings.sdk.common import (
    OBJECT_DECODER,
    ClientError,
    TidingsConnectionError,
    TidingsHTTPError,
    auth_headers,
    check_url,
    decode,
    job_path,
)

__all__ = [
    "HttpBackend",
    "JobCancelled",
    "JobContext",
    "JobOutcome",
    "JobServiceLike",
    "LeaseLost",
    "LeasedJob",
    "LocalBackend",
    "Worker",
    "WorkerBackend",
    "WorkerIdentity",
    "WorkerRefused",
]

log = logging.getLogger("tidings.worker")

T = TypeVar("T")

# Seconds one lease request may be held by the server when no job is ready (long poll).
LEASE_WAIT = 20.0
# Added to a long poll's `wait` for the HTTP read timeout, so the server answers first.
LEASE_WAIT_MARGIN = 10.0
# Jobs run at once when `Worker(concurrency=...)` is not given (see `default_concurrency`):
# a worker whose handlers are all coroutines, and one with any handler run in a thread.
ASYNC_CONCURRENCY = 64
SYNC_CONCURRENCY = 32
# Jobs one lease request asks for at most: the server's limit on a lease's "max".
MAX_LEASE_BATCH = 100
# Before it reports and leases again, the lease loop waits at most this long for the
# running jobs to end: short jobs then travel in full batches instead of one (or half the
# slots) per round trip (see `_refill_wait`).
REFILL_LINGER = 0.002
# Progress reports are sent promptly, but one job never heartbeats more often than this.
MAX_HEARTBEATS_PER_SECOND = 5.0
# Backoff after a failed request to the server: doubles from the first to the last value.
BACKOFF_START = 0.5
BACKOFF_MAX = 5.0
# Outcomes sent in one `/v1/workers/report` request: at most this many, and about this many
# bytes (one larger outcome goes alone).
MAX_REPORT_BATCH = 100
REPORT_MAX_BYTES = 256 * 1024
# The codes of a refused outcome that mean the lease is gone (taken over, or the job is).
_LEASE_GONE = frozenset({ErrorCode.CONFLICT, ErrorCode.NOT_FOUND})

_LEASE_ANSWER = msgspec.json.Decoder(LeaseAnswerWire)
_REPORT_ANSWER = msgspec.json.Decoder(ReportAnswerWire)
_HEARTBEAT_ANSWER = msgspec.json.Decoder(HeartbeatAnswerWire)


class JobCancelled(Exception):
    """Raised in a handler by `JobContext.raise_if_cancelled()`: the job ends `cancelled`."""


class LeaseLost(Exception):
    """The server no longer knows this lease (expired, or given to another worker)."""


def checked_name(name: str | None) -> str | None:
    """`name` as a worker may give it to the server (None: none); ValueError saying what
    is wrong otherwise."""
    if name is not None:
        problem = WorkerIdentity(id="-", name=name).problem()
        if problem is not None:
            raise ValueError(f"name: {problem}")
    return name


class WorkerRefused(ValueError):
    """The server refuses this worker: no valid token (401) or no grant to work the job
    types it asks for (403). Raised by `Worker.run` with what to do about it; `status` is
    the HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


# What the server's 403 says when the principal lacks a grant to work a job type (or any):
# "NAME may not work 'TYPE': ask for a grant", "NAME may not work jobs: ask for a work grant".
_NO_WORK_GRANT = " may not work "


def _refusal(exc: BaseException, url: str, types: list[str] | None) -> WorkerRefused | None:
    """The WorkerRefused a lease's failure `exc` stands for, or None (worth retrying)."""
    if not isinstance(exc, TidingsHTTPError) or exc.status not in (401, 403):
        return None
    wanted = ", ".join(types) if types else "any type ('*')"
    if exc.status == 401:
        return WorkerRefused(
            f"the server at {url} refused this worker's credentials ({exc.message}). Pass "
            "--token TOKEN (or set TIDINGS_TOKEN) with an API token made by `tidings tokens "
            "create USER --store STORE`, for a user who may work these job types "
            f"(`tidings users add USER --work TYPE --store STORE`); job types: {wanted}",
            401,
        )
    if _NO_WORK_GRANT in exc.message:
        return WorkerRefused(
            f"{exc.message} (the server at {url}, asked to lease jobs of {wanted}): grant "
            "this token's user the work of each type (`tidings users grant USER --work TYPE "
            "--store STORE`), or have the Worker lease fewer types",
            403,
        )
    # Another gate of the server (its Host or Origin checks): what it says is what to fix.
    return WorkerRefused(
        f"{exc.message} (the server at {url} refused a lease request for jobs of {wanted})",
        403,
    )


class LeasedJob(msgspec.Struct, frozen=True, kw_only=True):
    """A job as a worker receives it. `lease_expires_at` is seconds since the epoch;
    `parents` the jobs it was submitted `after`, with their results."""

    id: str
    type: str
    payload: Any = None
    attempt: int = 1
    max_attempts: int = 1
    timeout: float | None = None
    lease_token: str
    lease_expires_at: float | None = None
    parents: list[ParentWire] = msgspec.field(default_factory=list)

    @classmethod
    def from_wire(cls, wire: LeasedJobWire) -> LeasedJob:
        """The job a decoded `LeasedJobWire` stands for (its lease's end in epoch seconds)."""
        return cls(
            id=wire.id,
            type=wire.type,
            payload=wire.payload,
            attempt=wire.attempt,
            max_attempts=wire.max_attempts,
            timeout=wire.timeout,
            lease_token=wire.lease_token,
            lease_expires_at=parse_optional_time(wire.lease_expires_at),
            parents=[] if wire.parents is msgspec.UNSET else wire.parents,
        )


# ---------------------------------------------------------------------------------------
# Backends


class WorkerBackend(Protocol):
    """Where jobs come from and outcomes go: the worker protocol, over HTTP or in-process.

    Every method raises `LeaseLost` for a stale or foreign lease token; any other
    exception is a failure of the backend, retried by the runtime when it is transient.
    """

    async def lease(
        self, types: list[str] | None, max_jobs: int, wait: float, lease: float
    ) -> list[LeasedJob]:
        """Up to `max_jobs` jobs of `types` (None: any), waiting up to `wait` s for one."""
        ...

    async def heartbeat(
        self,
        job_id: str,
        token: str,
        progress: float | None = None,
        message: str | None = None,
        lease: float | None = None,
    ) -> tuple[bool, float]:
        """Extend the lease (record progress); returns (cancel_requested, lease_expires_at)."""
        ...

    async def complete(self, job_id: str, token: str, result: Any) -> None:
        """End the job `succeeded` with `result`."""
        ...

    async def fail(self, job_id: str, token: str, error: Any, retry: bool = True) -> None:
        """End this attempt with `error`; the server retries it when `retry` and attempts remain."""
        ...

    async def report(self, outcomes: list[JobOutcome]) -> list[Exception | None]:
        """Complete or fail several jobs at once (1 to `MAX_REPORT_BATCH`).

        Answers per outcome: None when it was applied, `LeaseLost` when it was refused,
        or another exception when it could not be delivered (retried when transient).
        Raises, like the other methods, when the whole batch failed.
        """
        ...

    async def report_and_lease(
        self, outcomes: list[JobOutcome], types: list[str] | None, max_jobs: int, lease: float
    ) -> tuple[list[Exception | None], list[LeasedJob]]:
        """`report`, then lease up to `max_jobs` ready jobs without waiting — in one round
        trip where the backend can. A failure raises, with nothing known to be applied."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class JobServiceLike(Protocol):
    """The part of the server's `tidings.server.jobs.JobService` that `LocalBackend` uses."""

    async def lease(
        self,
        types: list[str] | None,
        max_jobs: int,
        wait: float,
        lease: float,
        worker: WorkerIdentity | None = None,
    ) -> list[Job]: ...

    async def heartbeat(
        self,
        job_id: str,
        token: str,
        progress: float | None = None,
        message: str | None = None,
        lease: float | None = None,
    ) -> tuple[bool, float]: ...

    async def complete(self, job_id: str, token: str, result: Any) -> Job: ...

    async def fail(self, job_id: str, token: str, error: Any, retry: bool = True) -> Job: ...

    async def report(self, outcomes: list[JobOutcome]) -> list[Job | TidingsError]: ...

    async def parents(self, jobs: list[Job]) -> dict[str, Job]: ...


class LocalBackend:
    """The worker protocol as direct calls on the server's job service (in-process).

    `worker` is who the worker says it is at each lease (None: it does not say).
    """

    def __init__(self, service: JobServiceLike, *, worker: WorkerIdentity | None = None) -> None:
        self.service = service
        self.worker = worker

    async def lease(
        self, types: list[str] | None, max_jobs: int, wait: float, lease: float
    ) -> list[LeasedJob]:
        jobs = await self.service.lease(types, max_jobs, wait, lease, worker=self.worker)
        known = await self.service.parents(jobs)
        budget = ParentBudget()  # as an HTTP lease answer would carry them
        return [
            LeasedJob(
                id=job.id,
                type=job.type,
                payload=job.payload,
                attempt=job.attempt,
                max_attempts=job.max_attempts,
                timeout=job.timeout,
                lease_token=job.lease_token or "",
                lease_expires_at=job.lease_expires_at,
                parents=[] if not job.after else job.lease_to_wire(known, budget).parents or [],
            )
            for job in jobs
        ]

    async def heartbeat(
        self,
        job_id: str,
        token: str,
        progress: float | None = None,
        message: str | None = None,
        lease: float | None = None,
    ) -> tuple[bool, float]:
        try:
            return await self.service.heartbeat(job_id, token, progress, message, lease)
        except (Conflict, NotFound) as exc:
            raise LeaseLost(str(exc)) from exc

    async def complete(self, job_id: str, token: str, result: Any) -> None:
        try:
            await self.service.complete(job_id, token, result)
        except (Conflict, NotFound) as exc:
            raise LeaseLost(str(exc)) from exc

    async def fail(self, job_id: str, token: str, error: Any, retry: bool = True) -> None:
        try:
            await self.service.fail(job_id, token, error, retry)
        except (Conflict, NotFound) as exc:
            raise LeaseLost(str(exc)) from exc

    async def report(self, outcomes: list[JobOutcome]) -> list[Exception | None]:
        answers: list[Exception | None] = []
        for answer in await self.service.report(outcomes):
            if isinstance(answer, Conflict | NotFound):
                answers.append(LeaseLost(str(answer)))
            elif isinstance(answer, Exception):
                answers.append(answer)
            else:
                answers.append(None)
        return answers

    async def report_and_lease(
        self, outcomes: list[JobOutcome], types: list[str] | None, max_jobs: int, lease: float
    ) -> tuple[list[Exception | None], list[LeasedJob]]:
        answers = await self.report(outcomes)
        return answers, await self.lease(types, max_jobs, 0.0, lease)

    async def aclose(self) -> None:
        return None


class HttpBackend:
    """The worker protocol over HTTP: `/v1/workers/lease` and `/v1/jobs/{id}/...`.

    Raises `LeaseLost` on 409 (and 404: the job is gone), `TidingsHTTPError` on other
    error answers and `TidingsConnectionError` when the server cannot be reached.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        worker: WorkerIdentity | None = None,
    ) -> None:
        """
        Args:
            url: Base URL of the server, e.g. `http://127.0.0.1:8000`.
            token: API token sent as `Authorization: Bearer <token>`; None sends none.
            timeout: Seconds for connecting and for each read (long polls add their wait).
            worker: Who this worker is, sent with every lease request (the server lists
                it at `GET /v1/workers`); None says nothing.
        """
        check_url(url)
        self.url = url
        self.timeout = timeout
        self.worker = worker
        # One connection per running job plus the lease loop's: no waiting on the pool.
        self._http = httpx.AsyncClient(
            base_url=url,
            headers=auth_headers(token),
            timeout=timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )

    async def _post(
        self,
        path: str,
        body: dict[str, Any],
        read_timeout: float,
        decoder: msgspec.json.Decoder[T],
        *,
        per_job: bool = True,
    ) -> T:
        """POST `body` as JSON; the answer as `decoder` reads it. `LeaseLost` for a 404 or
        409 when the request is about one job (`per_job`)."""
        try:
            response = await self._http.post(
                path,
                content=encode_json(body),
                headers={"Content-Type": "application/json"},
                timeout=read_timeout,
            )
        except httpx.TransportError as exc:
            raise TidingsConnectionError(f"{self.url}: {exc!r}") from exc
        try:
            return decode(response, decoder)
        except TidingsHTTPError as exc:
            if per_job and exc.status in (404, 409):
                raise LeaseLost(exc.message) from exc
            raise

    async def lease(
        self, types: list[str] | None, max_jobs: int, wait: float, lease: float
    ) -> list[LeasedJob]:
        body: dict[str, Any] = {"max": max_jobs, "wait": wait, "lease": lease}
        if types is not None:
            body["types"] = types
        if self.worker is not None:
            body["worker"] = self.worker
        answer = await self._lease_post(body, max(self.timeout, wait + LEASE_WAIT_MARGIN), types)
        return _leased_jobs(answer)

    async def _lease_post(
        self, body: dict[str, Any], read_timeout: float, types: list[str] | None
    ) -> LeaseAnswerWire:
        """POST a lease request; `WorkerRefused` for a 401 or 403 (no retry helps)."""
        try:
            return await self._post(
                "/v1/workers/lease", body, read_timeout, _LEASE_ANSWER, per_job=False
            )
        except TidingsHTTPError as exc:
            refused = _refusal(exc, self.url, types)
            if refused is not None:
                raise refused from None
            raise

    async def heartbeat(
        self,
        job_id: str,
        token: str,
        progress: float | None = None,
        message: str | None = None,
        lease: float | None = None,
    ) -> tuple[bool, float]:
        body: dict[str, Any] = {"lease_token": token}
        if progress is not None:
            body["progress"] = progress
        if message is not None:
            body["message"] = message
        if lease is not None:
            body["lease"] = lease
        path = job_path(job_id, "/heartbeat")
        answer = await self._post(path, body, self.timeout, _HEARTBEAT_ANSWER)
        return answer.cancel_requested, parse_time(answer.lease_expires_at)

    async def complete(self, job_id: str, token: str, result: Any) -> None:
        body = {"lease_token": token, "result": result}
        await self._post(job_path(job_id, "/complete"), body, self.timeout, OBJECT_DECODER)

    async def fail(self, job_id: str, token: str, error: Any, retry: bool = True) -> None:
        body = {"lease_token": token, "error": error, "retry": retry}
        await self._post(job_path(job_id, "/fail"), body, self.timeout, OBJECT_DECODER)

    async def report(self, outcomes: list[JobOutcome]) -> list[Exception | None]:
        """`POST /v1/workers/report`: one request per `REPORT_MAX_BYTES` of outcomes.

        Each outcome is encoded once, to size the requests, and embedded as it is.
        """
        parts = [_report_item(o) for o in outcomes]
        answers: list[Exception | None] = []
        start = 0
        while start < len(parts):
            end, size = start + 1, len(parts[start])
            while end < len(parts) and size + len(parts[end]) <= REPORT_MAX_BYTES:
                size += len(parts[end])
                end += 1
            body = {"results": _json_array(parts[start:end])}
            try:
                answer = await self._post(
                    "/v1/workers/report", body, self.timeout, _REPORT_ANSWER, per_job=False
                )
            except Exception as exc:
                if start > 0:  # earlier requests were answered: only the rest failed
                    answers.extend([exc] * (len(parts) - start))
                    return answers
                raise
            if len(answer.results) != end - start:
                raise ClientError("the server's report answer does not match the request")
            answers.extend(_report_answer(r) for r in answer.results)
            start = end
        return answers

    async def report_and_lease(
        self, outcomes: list[JobOutcome], types: list[str] | None, max_jobs: int, lease: float
    ) -> tuple[list[Exception | None], list[LeasedJob]]:
        """`POST /v1/workers/lease` carrying `results`, without waiting; outcomes over
        `REPORT_MAX_BYTES` go by `report` alone."""
        parts = [_report_item(o) for o in outcomes]
        if sum(map(len, parts)) > REPORT_MAX_BYTES:
            return await self.report(outcomes), []
        body: dict[str, Any] = {"max": max_jobs, "wait": 0, "lease": lease}
        if types is not None:
            body["types"] = types
        if self.worker is not None:
            body["worker"] = self.worker
        body["results"] = _json_array(parts)
        answer = await self._lease_post(body, self.timeout, types)
        results = answer.results
        if results is msgspec.UNSET or len(results) != len(outcomes):
            raise ClientError("the server's report answer does not match the request")
        return [_report_answer(r) for r in results], _leased_jobs(answer)

    async def aclose(self) -> None:
        await self._http.aclose()


def _leased_jobs(answer: LeaseAnswerWire) -> list[LeasedJob]:
    return [LeasedJob.from_wire(job) for job in answer.jobs]


def _report_item(o: JobOutcome) -> bytes:
    """One outcome of a report as JSON (its size counts towards `REPORT_MAX_BYTES`)."""
    if o.ok:
        item = {"id": o.id, "lease_token": o.lease_token, "result": o.value}
    else:
        item = {"id": o.id, "lease_token": o.lease_token, "error": o.value, "retry": o.retry}
    return encode_json(item)


def _json_array(items: list[bytes]) -> msgspec.Raw:
    """A JSON array of values already encoded, to embed as they are in a request body."""
    return msgspec.Raw(b"[" + b",".join(items) + b"]")


def _report_answer(answer: OutcomeWire) -> Exception | None:
    """One entry of a report's answer: None (applied), LeaseLost (refused), or the error."""
    error = answer.error
    if error is msgspec.UNSET:
        return None
    if error.code in _LEASE_GONE:
        return LeaseLost(error.message)
    return ClientError(f"{error.code}: {error.message}")


def _transient(exc: BaseException) -> bool:
    """True for backend failures that a later attempt may overcome."""
    if isinstance(exc, TidingsHTTPError):
        return exc.retryable
    return isinstance(exc, TidingsConnectionError | StoreError | OSError)


# Where the frames of the runtime itself come from: a handler's traceback starts below them.
_RUNTIME_FILES = (__file__, str(Path(asyncio.__file__).parent) + os.sep)


def _handler_traceback(exc: BaseException) -> str:
    """The formatted traceback of a handler's exception (its last 16 KiB), from the
    handler's frame down: the runtime's frames above it say nothing about the failure."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_RUNTIME_FILES):
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))
    return bound_traceback(text)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------------------
# What a handler sees


class JobContext:
    """One running job, as its handler sees it.

    Attributes:
        id: The job id.
        type: The job type (the handler's name).
        payload: The job's payload, as submitted (any JSON value).
        attempt: 1 on the first delivery, 2 on the first retry, ...
        max_attempts: Attempts the job is allowed in all.
        timeout: Seconds the job may run (None: no limit), as submitted.
        parents: The jobs it was submitted `after` (all succeeded), in that order: each
            with its `id`, `type` and `result`. A lease carries at most 256 KiB of
            parents' results per job (4 MiB per lease answer): a parent whose result did
            not fit has `result` None and `omitted` set (a note saying its size); read
            that result with `Client.get_job(parent.id)` when the handler needs it.
    """

    def __init__(self, leased: LeasedJob, loop: asyncio.AbstractEventLoop) -> None:
        self.id = leased.id
        self.type = leased.type
        self.payload: Any = leased.payload
        self.parents: list[ParentWire] = leased.parents
        self.attempt = leased.attempt
        self.max_attempts = leased.max_attempts
        self.timeout = leased.timeout
        self._loop = loop
        self._wake = asyncio.Event()
        # Set by the runtime while the job runs: starts its heartbeat task (see `_job`).
        self._on_progress: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._report: tuple[float | None, str | None] | None = None
        self._cancelled = False
        self._lease_lost = False

    def __repr__(self) -> str:
        return f"<JobContext {self.type} {self.id} attempt {self.attempt}>"

    @property
    def cancelled(self) -> bool:
        """True once cancellation was requested (seen at a heartbeat) or the job timed out."""
        return self._cancelled

    @property
    def lease_lost(self) -> bool:
        """True once the server refused a heartbeat: whatever the handler returns is discarded."""
        return self._lease_lost

    def raise_if_cancelled(self) -> None:
        """Raise `JobCancelled` if the job was cancelled; call it between steps of work."""
        if self._cancelled:
            raise JobCancelled(f"job {self.id} was cancelled")

    def progress(self, pct: float | None, message: str | None = None) -> None:
        """Report progress (0-100, None to send only a message); sent with the next heartbeat.

        Safe to call from sync handlers (in their thread) and async handlers alike, and as
        often as convenient: the runtime sends the latest report soon, at most a few times
        a second, and never blocks the caller.
        """
        if pct is not None and not (isinstance(pct, int | float) and 0.0 <= pct <= 100.0):
            raise ValueError(f"progress must be a number from 0 to 100, got {pct!r}")
        with self._lock:
            self._report = (None if pct is None else float(pct), message)
        with contextlib.suppress(RuntimeError):  # the loop is gone: the runtime has ended
            self._loop.call_soon_threadsafe(self._progressed)

    def _progressed(self) -> None:
        """On the loop: a report is waiting; wake (or start) the heartbeat."""
        self._wake.set()
        if self._on_progress is not None:
            self._on_progress()

    def _take_report(self) -> tuple[float | None, str | None] | None:
        with self._lock:
            report, self._report = self._report, None
        return report


class SyncHandler(Protocol):
    """A handler run in a thread: returns the job's result (any JSON value)."""

    def __call__(self, job: JobContext, /) -> Any: ...


class AsyncHandler(Protocol):
    """A handler run on the worker's event loop: returns (awaits to) the job's result."""

    def __call__(self, job: JobContext, /) -> Awaitable[Any]: ...


H = TypeVar("H", bound=Callable[[JobContext], Any])


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - callable objects with async __call__
    )


def default_concurrency(handlers: Iterable[Callable[..., Any]]) -> int:
    """Jobs a worker with these handlers runs at once unless told: `ASYNC_CONCURRENCY` when
    every handler is a coroutine function (and when there is none), `SYNC_CONCURRENCY` as
    soon as one runs in a thread."""
    if all(_is_async(fn) for fn in handlers):
        return ASYNC_CONCURRENCY
    return SYNC_CONCURRENCY


class _Threads:
    """Daemon threads for sync handlers.

    Not `asyncio.to_thread`: the default executor's threads are joined when the loop and
    the interpreter end, so one handler stuck past the drain timeout would keep the worker
    process alive forever. These threads are daemons; at most `size` handlers run at once
    because the runtime never runs more jobs than it has threads.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[
            tuple[Callable[[], Any], asyncio.AbstractEventLoop, asyncio.Future[Any]] | None
        ] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        ctx = contextvars.copy_context()
        with self._lock:
            if self._idle == 0:
                thread = threading.Thread(
                    target=self._work, name=f"tidings-worker-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                self._idle += 1
                thread.start()
            self._idle -= 1
        self._queue.put((lambda: ctx.run(fn), loop, future))
        return future

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, loop, future = item
            try:
                result = fn()
            except BaseException as exc:  # handed to the loop, like to_thread does
                with self._lock:
                    self._idle += 1
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, future, None, exc)
            else:
                with self._lock:
                    self._idle += 1
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, future, result, None)

    def shutdown(self) -> None:
        """Tell idle threads to exit (busy ones exit after their handler returns)."""
        for _ in self._threads:
            self._queue.put(None)
        self._threads.clear()
        self._idle = 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else None (asyncio's own)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


# ---------------------------------------------------------------------------------------
# The runtime


class Worker:
    """Runs handlers for jobs of the types registered with `@worker.handler(type)`.

    Handlers are plain functions (run in a thread) or `async def` functions (run on the
    worker's event loop) taking a `JobContext` and returning the job's result, any JSON
    value. An exception fails the attempt (the server retries the job while attempts
    remain); `JobCancelled`, or any exception once the job was cancelled, ends it
    `cancelled`.
    """

    def __init__(
        self,
        concurrency: int | None = None,
        lease: float = 30.0,
        types: Iterable[str] | None = None,
        *,
        drain_timeout: float = 30.0,
        lease_wait: float = LEASE_WAIT,
        name: str | None = None,
    ) -> None:
        """
        Args:
            concurrency: Jobs run at once; the lease loop asks for at most this many
                minus those running. None: by the handlers' kind when the worker starts,
                `ASYNC_CONCURRENCY` (64) if every handler is `async def`, else
                `SYNC_CONCURRENCY` (32) (see `Worker.concurrency`).
            lease: Seconds each lease lasts; the runtime heartbeats every `lease / 3` s,
                so a worker that dies loses its jobs to others after at most `lease` s.
            types: Job types to lease; None leases every type that has a handler. A
                leased job with no handler fails (and is retried, for another worker).
            drain_timeout: On stop (SIGTERM/SIGINT), seconds to let running jobs finish
                before they are abandoned (failed with `retry`, so they run again).
            lease_wait: Seconds each lease request may be held by the server when no job
                is ready (a long poll).
            name: What the server's worker list (`tidings workers`) calls this worker: at
                most 128 printable characters. None: `host:pid` of the process it runs in.
        """
        if not lease > 0:
            raise ValueError(f"lease must be a positive number of seconds, got {lease}")
        self._concurrency: int | None = None
        if concurrency is not None:
            self.concurrency = concurrency
        self.lease = lease
        self.types = None if types is None else list(types)
        self.drain_timeout = drain_timeout
        self.lease_wait = lease_wait
        self.name = checked_name(name)
        self.handlers: dict[str, SyncHandler | AsyncHandler] = {}

    @property
    def concurrency(self) -> int:
        """Jobs run at once: as given (`Worker(concurrency=N)`, or set), else by the kind
        of the handlers registered so far (`default_concurrency`)."""
        if self._concurrency is not None:
            return self._concurrency
        return default_concurrency(self.handlers.values())

    @concurrency.setter
    def concurrency(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"concurrency must be a whole number of at least 1, got {value!r}")
        self._concurrency = value

    def handler(self, type: str) -> Callable[[H], H]:
        """Decorator: register `fn(job: JobContext) -> result` for jobs of `type`."""
        if not type:
            raise ValueError("a handler needs a non-empty job type")

        def register(fn: H) -> H:
            if type in self.handlers:
                raise ValueError(f"a handler for job type {type!r} is already registered")
            self.handlers[type] = fn
            return fn

        return register

    # Entry points -----------------------------------------------------------------------

    def run(self, url: str, *, token: str | None = None) -> None:
        """Work for the server at `url` until SIGTERM or SIGINT, then drain and return.

        A second signal abandons running jobs at once (they are failed with `retry`).
        Runs on uvloop when it is installed (it comes with the server's dependencies).
        """
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(self._run_with_signals(url, token))

    async def _run_with_signals(self, url: str, token: str | None) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        force = asyncio.Event()

        def on_signal(signum: int) -> None:
            if stop.is_set():
                log.warning("second %s: abandoning running jobs", signal.Signals(signum).name)
                force.set()
            else:
                log.info("%s: draining", signal.Signals(signum).name)
                stop.set()

        installed: list[signal.Signals] = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(signum, on_signal, signum)
                installed.append(signum)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        try:
            await self.run_async(url, token=token, stop=stop, force=force)
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)

    async def run_async(
        self,
        url: str,
        *,
        token: str | None = None,
        stop: asyncio.Event | None = None,
        force: asyncio.Event | None = None,
    ) -> None:
        """Work for the server at `url` until `stop` is set, then drain and return.

        Args:
            url: Base URL of the server.
            token: API token (`Authorization: Bearer`), or None.
            stop: Set it to stop leasing and drain; None runs until cancelled.
            force: Set it (after `stop`) to abandon running jobs without waiting.
        """
        identity = self.identity()
        backend = HttpBackend(url, token=token, worker=identity)
        try:
            await self.run_backend(backend, stop or asyncio.Event(), force, identity=identity)
        finally:
            await backend.aclose()

    async def run_local(self, service: JobServiceLike, stop: asyncio.Event) -> None:
        """Work inside the server: lease from its job service until `stop` is set, then drain."""
        identity = self.identity()
        await self.run_backend(LocalBackend(service, worker=identity), stop, identity=identity)

    async def run_backend(
        self,
        backend: WorkerBackend,
        stop: asyncio.Event,
        force: asyncio.Event | None = None,
        *,
        identity: WorkerIdentity | None = None,
    ) -> None:
        """The runtime itself, on any backend: lease, run, drain once `stop` is set.
        `identity` is who the backend tells the server this worker is (for the log)."""
        runner = _Runner(self, backend, stop, force or asyncio.Event(), identity)
        try:
            await runner.run()
        finally:
            runner.threads.shutdown()

    def identity(self) -> WorkerIdentity:
        """Who this worker says it is for one run: a new random id each call, its `name`
        (`host:pid` by default) and its concurrency (left unsaid past the 10,000 the
        server accepts)."""
        name = self.name
        if name is None:
            pid = f":{os.getpid()}"
            name = socket.gethostname()[: MAX_WORKER_NAME - len(pid)] + pid
        concurrency = self.concurrency if self.concurrency <= MAX_WORKER_CONCURRENCY else None
        return WorkerIdentity(id=os.urandom(8).hex(), name=name, concurrency=concurrency)

    def _leased_types(self) -> list[str] | None:
        if self.types is not None:
            return self.types
        return sorted(self.handlers) or None


class _Runner:
    """One run of a `Worker` on one backend: the lease loop and the running jobs."""

    def __init__(
        self,
        worker: Worker,
        backend: WorkerBackend,
        stop: asyncio.Event,
        force: asyncio.Event,
        identity: WorkerIdentity | None = None,
    ) -> None:
        self.worker = worker
        # Resolved once per run: handlers registered later do not change it.
        self.concurrency = worker.concurrency
        self.identity = identity
        self.backend = backend
        self.stop = stop
        self.force = force
        self.running: set[asyncio.Task[None]] = set()
        self.contexts: dict[asyncio.Task[None], JobContext] = {}
        # Per run, not per Worker: threads stuck past a drain must not serve a later run.
        self.threads = _Threads()
        self.failures = 0
        self.reporter = _Reporter(backend)

    async def run(self) -> None:
        types = self.worker._leased_types()
        identity = self.identity
        log.info(
            "worker started: types %s, concurrency %d, lease %gs%s",
            ", ".join(types) if types else "(any)",
            self.concurrency,
            self.worker.lease,
            "" if identity is None else f"; listed as {identity.name}, id {identity.id}",
        )
        try:
            await self._lease_loop(types)
        except WorkerRefused as exc:
            if exc.status == 401:  # without credentials no outcome can be reported either
                self.force.set()
            raise
        finally:
            try:
                await self._drain()
                await self._flush_reports()
            finally:
                await self.reporter.aclose()
        log.info("worker stopped")

    async def _until_stopped(self, aw: Awaitable[Any]) -> tuple[bool, Any]:
        """Await `aw` unless `stop` is set first; (finished, result). Cancels `aw` on stop."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return True, task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return False, None

    async def _lease_loop(self, types: list[str] | None) -> None:
        """Lease for the free slots. Outcomes of finished jobs ride along with the lease
        (one round trip: report and ask for more); the reporter sends them on its own only
        while this loop is parked in a long poll, backing off, or stopped."""
        reporter = self.reporter
        try:
            while not self.stop.is_set():
                if self.running:
                    # A job that ends frees a slot and wakes this loop, which carries its
                    # outcome with the next lease; the others get a moment to end too.
                    reporter.deferred = True
                    if len(self.running) >= self.concurrency:
                        await self._until_stopped(
                            asyncio.wait(set(self.running), return_when=asyncio.FIRST_COMPLETED)
                        )
                    await self._refill_wait()
                free = min(self.concurrency - len(self.running), MAX_LEASE_BATCH)
                if free <= 0:
                    continue
                outcomes = reporter.take()
                if outcomes:
                    reporter.deferred = True
                    # Not stopped midway: a stop would leave it unknown what was applied.
                    try:
                        answers, jobs = await self.backend.report_and_lease(
                            [o.outcome for o in outcomes], types, free, self.worker.lease
                        )
                    except WorkerRefused:
                        reporter.give_back(outcomes)
                        raise
                    except Exception as exc:
                        if _transient(exc):
                            reporter.give_back(outcomes)
                        else:
                            reporter.give_back(await reporter.refused(outcomes, exc))
                        reporter.resume()
                        await self._backoff(exc, "report and lease")
                        continue
                    reporter.give_back(reporter.settle(outcomes, answers))
                else:
                    reporter.resume()
                    try:
                        done, jobs = await self._until_stopped(
                            self.backend.lease(
                                types, free, self.worker.lease_wait, self.worker.lease
                            )
                        )
                    except WorkerRefused:
                        raise
                    except Exception as exc:
                        await self._backoff(exc, "lease")
                        continue
                    if not done:
                        break
                self.failures = 0
                for leased in jobs:
                    self._start(leased)
        finally:
            reporter.resume()

    async def _refill_wait(self) -> None:
        """Before a refill, wait up to REFILL_LINGER for the running jobs to end.

        Short jobs end within moments of each other; asking for one job per freed slot
        made each round trip carry one outcome and lease one job, and refilling as soon as
        half were free kept the batches at half (docs/decisions/0014). A refill beside long
        jobs is delayed by at most the linger.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REFILL_LINGER
        while self.running:
            remaining = deadline - loop.time()
            if remaining <= 0 or self.stop.is_set():
                return
            await asyncio.wait(
                set(self.running), timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )

    async def _backoff(self, exc: Exception, what: str) -> None:
        delay = min(BACKOFF_START * 2.0 ** min(self.failures, 16), BACKOFF_MAX)
        self.failures += 1
        level = logging.WARNING if _transient(exc) else logging.ERROR
        log.log(level, "%s failed (%s); retrying in %.1fs", what, _describe(exc), delay)
        await self._until_stopped(asyncio.sleep(delay))

    def _start(self, leased: LeasedJob) -> None:
        ctx = JobContext(leased, asyncio.get_running_loop())
        task = asyncio.create_task(self._job(ctx, leased), name=f"job-{leased.id}")
        self.running.add(task)
        self.contexts[task] = ctx

        def forget(t: asyncio.Task[None]) -> None:
            self.running.discard(t)
            self.contexts.pop(t, None)

        task.add_done_callback(forget)

    async def _drain(self) -> None:
        if not self.running:
            return
        log.info("draining: %d job(s) running", len(self.running))
        waiting = asyncio.ensure_future(
            asyncio.wait(set(self.running), timeout=self.worker.drain_timeout)
        )
        forced = asyncio.ensure_future(self.force.wait())
        try:
            await asyncio.wait({waiting, forced}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
            forced.cancel()
        if not self.running:
            return
        log.warning("drain: abandoning %d job(s) still running", len(self.running))
        for task in list(self.running):
            task.cancel()
        await asyncio.wait(set(self.running), timeout=10.0)

    async def _flush_reports(self) -> None:
        """Wait until every outcome was sent (each is dropped once its lease has ended);
        after a forced stop, give them a few seconds."""
        flushed = asyncio.ensure_future(self.reporter.flush())
        forced = asyncio.ensure_future(self.force.wait())
        try:
            await asyncio.wait({flushed, forced}, return_when=asyncio.FIRST_COMPLETED)
            if not flushed.done():
                await asyncio.wait({flushed}, timeout=5.0)
            if not flushed.done():
                log.warning("drain: %d outcome(s) not reported", self.reporter.pending)
        finally:
            flushed.cancel()
            forced.cancel()

    # One job ----------------------------------------------------------------------------

    async def _job(self, ctx: JobContext, leased: LeasedJob) -> None:
        started = time.monotonic()
        lease_until = started + self.worker.lease
        if leased.lease_expires_at is not None:
            lease_until = started + max(0.0, leased.lease_expires_at - time.time())
        state = _JobState(lease_until)
        # The heartbeat task starts when the first heartbeat is due (lease / 3 after the
        # start) or at the first progress report, whichever comes first: most jobs end
        # before either, and then cost a timer instead of a task.
        heartbeat: asyncio.Task[None] | None = None

        def start_heartbeat() -> None:
            nonlocal heartbeat
            if heartbeat is None and not state.ended:
                heartbeat = asyncio.create_task(self._heartbeat(ctx, leased, state, started))

        timer = asyncio.get_running_loop().call_later(self.worker.lease / 3.0, start_heartbeat)
        ctx._on_progress = start_heartbeat
        handler = self.worker.handlers.get(leased.type)
        outcome: tuple[str, Any]
        try:
            if handler is None:
                outcome = (
                    "retry",
                    {
                        "type": "NoHandler",
                        "message": f"this worker has no handler for job type {leased.type!r}",
                    },
                )
            else:
                outcome = await self._call(handler, ctx)
        except asyncio.CancelledError:
            # Abandoned at the end of a drain: fail it with `retry` so it runs again.
            shutdown = {"type": "WorkerShutdown", "message": "worker stopped"}
            self._report(ctx, leased, state, ("retry", shutdown), started)
            raise
        finally:
            state.ended = True
            timer.cancel()
            ctx._on_progress = None
            ctx._wake.set()  # a heartbeat that missed its cancellation wakes and sees `ended`
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
        try:
            if outcome[0] == "complete" and not ctx.lease_lost:
                await self._last_progress(ctx, leased, state)
        finally:
            self._report(ctx, leased, state, outcome, started)

    async def _last_progress(self, ctx: JobContext, leased: LeasedJob, state: _JobState) -> None:
        """Send a progress report the throttle held back (e.g. "100%, done") before the
        outcome, so the job's last message is the handler's last word. Best effort."""
        report = ctx._take_report() or state.pending
        if report is None:
            return
        with contextlib.suppress(Exception):
            await self.backend.heartbeat(ctx.id, leased.lease_token, *report, self.worker.lease)

    async def _call(self, handler: SyncHandler | AsyncHandler, ctx: JobContext) -> tuple[str, Any]:
        """Run the handler; (kind, value) where kind is complete | retry | fail."""
        if _is_async(handler):
            call: asyncio.Future[Any] = asyncio.ensure_future(handler(ctx))
        else:
            call = self.threads.run(lambda: handler(ctx))
        try:
            done, _ = await asyncio.wait({call}, timeout=ctx.timeout)
        except asyncio.CancelledError:
            call.cancel()
            raise
        if not done:
            # Over its time: async handlers are cancelled, sync ones told via `cancelled`;
            # the slot stays taken until a sync handler's thread returns.
            ctx._cancelled = True
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
            return "retry", {
                "type": "JobTimeout",
                "message": f"the handler ran longer than the job's timeout of {ctx.timeout}s",
            }
        try:
            result = call.result()
            if inspect.isawaitable(result):  # a sync callable that returned a coroutine
                result = await result
        except JobCancelled as exc:
            return "fail", {"type": "JobCancelled", "message": str(exc) or "cancelled"}
        except asyncio.CancelledError:
            # The handler cancelled itself (or a task it awaited): treat as cancellation
            # only if the job was cancelled, else as an ordinary failure.
            return ("fail" if ctx.cancelled else "retry"), {
                "type": "CancelledError",
                "message": "the handler was cancelled",
            }
        except Exception as exc:
            return ("fail" if ctx.cancelled else "retry"), {
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": _handler_traceback(exc),
            }
        try:
            encode_json(result)
        except (TypeError, msgspec.EncodeError) as exc:
            return "fail", {
                "type": "TypeError",
                "message": f"the handler's result is not JSON-serialisable: {exc}",
            }
        return "complete", result

    async def _heartbeat(
        self, ctx: JobContext, leased: LeasedJob, state: _JobState, started: float
    ) -> None:
        """Keep the lease, send progress, learn about cancellation; until cancelled.

        Counts from the job's start (`started`, monotonic): started by its timer, it beats
        at once.
        """
        interval = self.worker.lease / 3.0
        min_gap = 1.0 / MAX_HEARTBEATS_PER_SECOND
        last = started
        failures = 0
        while True:
            due = (
                last + interval
                if failures == 0
                else last + min(BACKOFF_START * 2.0**failures, interval)
            )
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # lands in the step where the wake-up arrives, and the job then never ends.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, due - time.monotonic())):
                    await ctx._wake.wait()
            if state.ended:
                return
            ctx._wake.clear()
            gap = time.monotonic() - last
            if gap < min_gap:
                await asyncio.sleep(min_gap - gap)
            report = ctx._take_report()
            if report is not None:
                state.pending = report
            progress, message = state.pending or (None, None)
            last = time.monotonic()
            try:
                cancel, expires = await self.backend.heartbeat(
                    ctx.id, leased.lease_token, progress, message, self.worker.lease
                )
            except LeaseLost as exc:
                ctx._lease_lost = True
                log.warning(
                    "job %s %s: lease lost (%s); its outcome will be discarded",
                    ctx.type,
                    ctx.id,
                    exc,
                )
                return
            except Exception as exc:
                failures += 1
                log.warning("job %s: heartbeat failed (%s)", ctx.id, _describe(exc))
                continue
            failures = 0
            state.pending = None
            state.lease_until = last + max(0.0, expires - time.time()) if expires else last
            if cancel and not ctx._cancelled:
                log.info("job %s %s: cancel requested", ctx.type, ctx.id)
                ctx._cancelled = True

    def _report(
        self,
        ctx: JobContext,
        leased: LeasedJob,
        state: _JobState,
        outcome: tuple[str, Any],
        started: float,
    ) -> None:
        """Hand the outcome to the reporter (once), unless the lease was lost."""
        if state.reported:
            return
        state.reported = True
        kind, value = outcome
        took = time.monotonic() - started
        label = f"job {ctx.type} {ctx.id} attempt {ctx.attempt}"
        if ctx.lease_lost:
            log.warning(
                "%s: handler ended after %.2fs; outcome discarded (lease lost)", label, took
            )
            return
        word = JobOutcome(ctx.id, leased.lease_token, kind == "complete", value, kind == "retry")
        last = kind != "retry" or ctx.attempt >= ctx.max_attempts
        self.reporter.put(_Outcome(word, label, kind, took, state.lease_until, ctx.cancelled, last))


class _Outcome:
    """A finished job's outcome waiting for the reporter, with what its log line needs."""

    __slots__ = ("cancelled", "kind", "label", "last", "lease_until", "outcome", "took")

    def __init__(
        self,
        outcome: JobOutcome,
        label: str,
        kind: str,
        took: float,
        lease_until: float,
        cancelled: bool,
        last: bool,
    ) -> None:
        self.outcome = outcome
        self.label = label
        self.kind = kind
        self.took = took
        self.lease_until = lease_until
        self.cancelled = cancelled
        # True when the server will not run the job again after this outcome.
        self.last = last

    def refused(self, why: Exception) -> _Outcome:
        """This job's failure (not retried) in place of a result the server refused."""
        error = {"type": "ResultRefused", "message": f"the server refused the result: {why}"}
        failure = JobOutcome(self.outcome.id, self.outcome.lease_token, False, error, False)
        return _Outcome(failure, self.label, "fail", self.took, self.lease_until, False, True)

    def log_reported(self) -> None:
        """The outcome's log line: INFO for a success or a cancellation; a failure with its
        traceback, a WARNING while the job will be retried, an ERROR when it will not."""
        if self.kind == "complete":
            log.info("%s: succeeded in %.2fs", self.label, self.took)
        elif self.kind == "fail" and self.cancelled:
            log.info("%s: cancelled after %.2fs", self.label, self.took)
        else:
            value = self.outcome.value
            err = value if isinstance(value, dict) else {}
            tb = err.get("traceback")
            level = logging.ERROR if self.last else logging.WARNING
            if not log.isEnabledFor(level):
                return
            record = log.makeRecord(
                log.name,
                level,
                __file__,
                0,
                "%s: failed after %.2fs (%s: %s)%s",
                (
                    self.label,
                    self.took,
                    err.get("type"),
                    err.get("message"),
                    ", not retried" if self.last else ", to be retried",
                ),
                None,
                func="log_reported",
            )
            # The traceback as the handler's text: formatters put `exc_text` where they put
            # an exception (after the line, or the JSON format's `exception` field).
            if isinstance(tb, str):
                record.exc_text = tb.rstrip()
            log.handle(record)


class _Reporter:
    """Sends finished jobs' outcomes to the backend in batches: whatever is queued goes in
    one `report`, and what finishes while it is in flight goes in the next.

    A refused outcome (lease lost) is logged and dropped; a batch that fails transiently
    is retried with backoff, each outcome until its lease ends (after that the server
    retries the job anyway).
    """

    def __init__(self, backend: WorkerBackend) -> None:
        self.backend = backend
        self._queue: list[_Outcome] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._sending = 0
        # True while the lease loop will carry queued outcomes with its next request.
        self.deferred = False

    @property
    def pending(self) -> int:
        """Outcomes not yet answered by the backend."""
        return len(self._queue) + self._sending

    def put(self, item: _Outcome) -> None:
        self._queue.append(item)
        self._idle.clear()
        if not self.deferred:
            self._wake.set()
        self._ensure_task()

    def _ensure_task(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name="tidings-worker-reporter"
            )

    def take(self) -> list[_Outcome]:
        """Hand up to a batch of queued outcomes to a caller that sends them itself (then
        `settle` and `give_back`); those whose lease has ended are dropped."""
        batch = self._live(self._queue[:MAX_REPORT_BATCH])
        del self._queue[:MAX_REPORT_BATCH]
        return batch

    def give_back(self, items: list[_Outcome]) -> None:
        """Queue again, first, outcomes that could not be delivered."""
        if items:
            self._queue[:0] = items
            self._idle.clear()
            self._ensure_task()
        if not self.deferred:
            self._wake.set()

    def resume(self) -> None:
        """Send queued outcomes from here on (the lease loop is not about to carry them)."""
        self.deferred = False
        if self._queue:
            self._wake.set()

    async def flush(self) -> None:
        """Return once every outcome put so far was answered (or dropped)."""
        self.resume()
        if self._queue or self._sending:
            await self._idle.wait()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and not self.deferred:
                batch = self._queue[:MAX_REPORT_BATCH]
                del self._queue[:MAX_REPORT_BATCH]
                self._sending = len(batch)
                try:
                    again = await self._send(batch)
                finally:
                    self._sending = 0
                if not again:
                    failures = 0
                    continue
                self._queue[:0] = again
                delay = min(BACKOFF_START * 2.0**failures, BACKOFF_MAX)
                failures += 1
                last = max(o.lease_until for o in again)
                await asyncio.sleep(min(delay, max(0.0, last - time.monotonic())))
            if not self._queue:
                self._idle.set()

    @staticmethod
    def _live(batch: list[_Outcome]) -> list[_Outcome]:
        now = time.monotonic()
        live = []
        for o in batch:
            if now >= o.lease_until:
                log.error("%s: could not report %s before its lease ended", o.label, o.kind)
            else:
                live.append(o)
        return live

    async def _send(self, batch: list[_Outcome]) -> list[_Outcome]:
        """Report a batch; returns the outcomes to try again."""
        live = self._live(batch)
        if not live:
            return []
        try:
            answers = await self.backend.report([o.outcome for o in live])
        except Exception as exc:
            if _transient(exc):
                log.warning(
                    "reporting %d outcome(s) failed (%s), retrying", len(live), _describe(exc)
                )
                return live
            return await self.refused(live, exc)
        return self.settle(live, answers)

    async def refused(self, batch: list[_Outcome], exc: Exception) -> list[_Outcome]:
        """A report the server refused as a whole (not a transient failure): returns the
        outcomes to try again.

        One outcome the server will not take (a result nested too deep) refuses the whole
        request, so several are sent again one by one: the others land, and the refused
        one is found. A refused result fails its job at once, saying why, rather than
        leaving it running until its lease ends and it runs again to the same result.
        """
        if len(batch) > 1:
            again: list[_Outcome] = []
            for o in batch:
                again.extend(await self._send([o]))
            return again
        o = batch[0]
        if o.outcome.ok:
            log.error("%s: result refused (%s); failing the job", o.label, _describe(exc))
            return [o.refused(exc)]
        # The cause is in the message; a traceback of an HTTP error adds nothing.
        log.error("%s: could not report %s (%s)", o.label, o.kind, _describe(exc))
        return []

    def settle(self, batch: list[_Outcome], answers: list[Exception | None]) -> list[_Outcome]:
        """Log the backend's answer on each outcome; returns those to try again."""
        again = []
        retried = 0
        for o, answer in zip(batch, answers, strict=True):
            if answer is None:
                o.log_reported()
            elif isinstance(answer, LeaseLost):
                log.warning("%s: outcome refused after %.2fs (%s)", o.label, o.took, answer)
            elif _transient(answer):
                again.append(o)
                retried += 1
            elif o.outcome.ok:
                # The server refused the result itself (nested too deep, not encodable):
                # the job fails now, saying why, instead of waiting out its lease to run
                # again and produce the same result.
                log.error("%s: result refused (%s); failing the job", o.label, _describe(answer))
                again.append(o.refused(answer))
            else:
                log.error("%s: could not report %s (%s)", o.label, o.kind, _describe(answer))
        if retried:
            log.warning("reporting %d outcome(s) failed, retrying", retried)
        return again


class _JobState:
    """What the job task and its heartbeat share: the lease deadline, the progress report
    not yet sent, whether the outcome was reported."""

    __slots__ = ("ended", "lease_until", "pending", "reported")

    def __init__(self, lease_until: float) -> None:
        self.lease_until = lease_until
        self.pending: tuple[float | None, str | None] | None = None
        self.reported = False
        # Set when the handler is done: the heartbeat stops even if its cancellation is
        # lost (on 3.11 asyncio.timeout can swallow a cancel that lands as it expires).
        self.ended = False
