"""Jobs as they travel: statuses, the job record, its channel, a worker's outcome.

`Job` is the record stores keep. Its two wire shapes are one Struct each: `JobWire` (the
public form every job answer and job event carries) and `LeasedJobWire` (what a worker
receives for a leased job). The server encodes them, the SDK decodes them and the OpenAPI
document describes them, as it does the answers built around them (`JobListWire`,
`LeaseAnswerWire`, `ReportAnswerWire`, `HeartbeatAnswerWire`).

A job type's limits, as `PUT /v1/queues/{type}` takes them, are `QueueLimits` (with its
`RateLimit`). A worker says who it is in its lease requests (`WorkerIdentity`); the
worker list (`GET /v1/workers`) answers `WorkerListWire`: each worker (`WorkerWire`) with
the jobs it is running (`RunningJobWire`).
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

import msgspec
from msgspec import UNSET, UnsetType

from tidings.protocol.codecs import Time, encode_json, format_time
from tidings.protocol.errors import ErrorDetail

JobStatus = Literal["waiting", "queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[str, ...] = get_args(JobStatus)
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATUSES = frozenset({"queued", "running"})
# The statuses in which a job holds its `unique_key`: a job waiting for its parents
# (`after`) holds it too, so that a second submit of the same work while the first waits
# is deduplicated to it.
UNIQUE_STATUSES = frozenset({"waiting", "queued", "running"})
# The fields of `JobWire` that hold a time (`Time`, or null where the job has none yet).
JOB_TIME_FIELDS = (
    "created_at",
    "updated_at",
    "run_at",
    "started_at",
    "finished_at",
    "lease_expires_at",
)


JOB_CHANNEL_PREFIX = "job."

# A failed attempt's traceback is kept to this many bytes of UTF-8: its end, where the
# innermost frames and the exception are, after a line saying how much was cut.
MAX_TRACEBACK_BYTES = 16 * 1024
# The failures a job keeps in `errors`: the last attempts', oldest first.
KEPT_ERRORS = 5

# A worker's identity (`WorkerIdentity`): its id is 1-64 of these characters, its name at
# most MAX_WORKER_NAME printable characters (none of the control characters and line
# separators of WORKER_NAME_UNPRINTABLE, a regex character class body), its concurrency 1
# to MAX_WORKER_CONCURRENCY.
WORKER_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,64}")
WORKER_NAME_UNPRINTABLE = r"\x00-\x1f\x7f-\x9f\u2028\u2029"
_UNPRINTABLE_RE = re.compile(f"[{WORKER_NAME_UNPRINTABLE}]")
MAX_WORKER_NAME = 128
MAX_WORKER_CONCURRENCY = 10_000
# A job's `unique_key` (at most one queued or running job of a type holds each) is 1 to
# MAX_UNIQUE_KEY printable characters.
MAX_UNIQUE_KEY = 200


# A job's `group` (what a queue's `group_concurrency` counts by) is 1 to MAX_GROUP
# printable characters.
MAX_GROUP = 200


def key_problem(name: str, key: str, longest: int = MAX_UNIQUE_KEY) -> str | None:
    """What is wrong with a `unique_key` or `group` (`name`), said as what to fix; None
    when it is valid: 1 to `longest` printable characters."""
    if not 0 < len(key) <= longest or _UNPRINTABLE_RE.search(key):
        return (
            f'"{name}" must be 1-{longest} printable characters (no control characters or '
            f"line breaks), got {key[:80]!r}"
        )
    return None


def unique_key_problem(key: str) -> str | None:
    """What is wrong with a `unique_key`, said as what to fix; None when it is valid."""
    return key_problem("unique_key", key)


def without_traceback(error: Any) -> Any:
    """An error object without its `traceback` (any other value as it is): what job events,
    listings, `errors` and those who may not see tracebacks get."""
    if isinstance(error, dict) and "traceback" in error:
        return {k: v for k, v in error.items() if k != "traceback"}
    return error


def job_channel(job_id: str) -> str:
    """The channel every state change and progress report of a job is published on."""
    return JOB_CHANNEL_PREFIX + job_id


def bound_traceback(text: str, limit: int = MAX_TRACEBACK_BYTES) -> str:
    """`text` if it fits in `limit` bytes of UTF-8, else its end (from a line start) after a
    line saying that the outer frames were cut."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= limit:
        return text
    marker = f"[traceback cut to its last {limit // 1024} KiB: the outer frames are left out]\n"
    tail = raw[len(raw) - (limit - len(marker.encode())) :]
    cut = tail.find(b"\n")
    if 0 <= cut < len(tail) - 1:  # start at a line, unless the tail is one line
        tail = tail[cut + 1 :]
    return marker + tail.decode("utf-8", "ignore")


def _opt_time(ts: float | None) -> str | None:
    return None if ts is None else format_time(ts)


class JobLinks(msgspec.Struct, frozen=True, gc=False):
    """Where to follow a job: itself, its SSE and WebSocket streams, its channel."""

    self_: str = msgspec.field(name="self")
    events: str
    ws: str
    channel: str


class JobWire(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A job's public form: everything but the lease token, with links.

    `error` is the last failed attempt's `{"type", "message", "traceback"?, "attempt"}`;
    `errors` the last `KEPT_ERRORS` of them, oldest first, without their tracebacks. Job
    events (the messages of the job's channel) carry it without `payload`, `errors` and
    the traceback; listings and answers to workers without `errors` and the traceback.
    `served` is in the answer of `POST /v1/jobs` only: whether a worker asked for jobs of
    this type lately; so is `deduplicated`: true when the submit made no job because this
    waiting, queued or running one holds its `unique_key`. `ref` is in the answer of
    `POST /v1/jobs/batch` only: the job's name in the batch. `after` (left out when
    empty) names the jobs it waits for. `worker` is the id of the worker
    holding the job, or that last held it (null: none did, or it did not say who it is).
    """

    id: str
    type: str
    status: JobStatus
    payload: Any | UnsetType = UNSET
    progress: float | None
    message: str | None
    result: Any
    error: Any
    errors: list[Any] | UnsetType = UNSET
    attempt: int
    max_attempts: int
    priority: int
    timeout: float | None
    cancel_requested: bool
    submitted_by: str | None
    worker: str | None = None
    unique_key: str | None = None
    group: str | None = None
    after: list[str] | UnsetType = UNSET
    created_at: Time
    updated_at: Time
    run_at: Time
    started_at: Time | None
    finished_at: Time | None
    lease_expires_at: Time | None
    links: JobLinks
    served: bool | UnsetType = UNSET
    deduplicated: bool | UnsetType = UNSET
    ref: str | UnsetType = UNSET


class BatchJob(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One job of `POST /v1/jobs/batch`: a submit's fields, and `ref`, the name the
    batch's other jobs give it in their `after` (which may also name existing jobs)."""

    ref: str
    type: str
    payload: Any = None
    max_attempts: int = 3
    timeout: float | None = None
    delay: float = 0.0
    priority: int = 0
    unique_key: str | None = None
    group: str | None = None
    after: list[str] | None = None


class BatchAnswerWire(msgspec.Struct, frozen=True, gc=False):
    """The answer of `POST /v1/jobs/batch`: every job made, in the batch's order, each
    with its `ref`."""

    jobs: list[JobWire]


# A lease answer carries the results of a leased job's parents up to
# MAX_PARENT_RESULTS_BYTES of JSON for that job, and up to MAX_LEASE_PARENT_RESULTS_BYTES
# for all its jobs: 100 jobs of 100 parents each could otherwise make one answer of
# gigabytes. A result past them is left out, its parent marked `omitted`.
MAX_PARENT_RESULTS_BYTES = 256 * 1024
MAX_LEASE_PARENT_RESULTS_BYTES = 4 * 1024 * 1024


class ParentWire(msgspec.Struct, frozen=True, gc=False):
    """A parent of a leased job (one it was submitted `after`): its id, type and result
    (null when it is gone, which only a job leased after its parents' TTL sees).

    `omitted` (absent otherwise) says that the result was left out of the lease answer,
    its `result` null: it is larger than what the answer carries of parents' results
    (MAX_PARENT_RESULTS_BYTES per job, MAX_LEASE_PARENT_RESULTS_BYTES per answer); it
    says how big it is and that `GET /v1/jobs/{id}` reads it."""

    id: str
    type: str
    result: Any
    omitted: str | UnsetType = UNSET


class ParentBudget:
    """What is left of the bytes of parents' results one lease answer may carry."""

    __slots__ = ("left",)

    def __init__(self, total: int = MAX_LEASE_PARENT_RESULTS_BYTES) -> None:
        self.left = total


def _parent_wire(parent: Job, job_left: int, budget: ParentBudget) -> tuple[ParentWire, int]:
    """A parent as a lease answer shows it, and the bytes of its result it takes: its
    result when it fits in `job_left` and `budget`, else the result left out, said why."""
    size = len(encode_json(parent.result))
    if size <= min(job_left, budget.left):
        budget.left -= size
        return ParentWire(parent.id, parent.type, parent.result), size
    note = (
        f"its result ({size} bytes of JSON) was left out of the lease answer, which carries"
        f" at most {MAX_PARENT_RESULTS_BYTES} bytes of parents' results per job and"
        f" {MAX_LEASE_PARENT_RESULTS_BYTES} per answer: read it with GET /v1/jobs/{parent.id}"
    )
    return ParentWire(parent.id, parent.type, None, note), 0


class LeasedJobWire(msgspec.Struct, frozen=True, gc=False):
    """A job as a lease answer hands it to a worker, with the lease's token and end, and
    for a job submitted `after` others, those parents with their results (in `after`'s
    order)."""

    id: str
    type: str
    payload: Any
    attempt: int
    max_attempts: int
    timeout: float | None
    lease_token: str
    lease_expires_at: Time | None
    parents: list[ParentWire] | UnsetType = UNSET


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A job as stored. Times are seconds since the epoch (RFC 3339 on the wire).

    `run_at` is when a queued job may next be leased (its delay or retry backoff);
    `lease_token` and `lease_expires_at` belong to the worker holding it while running.
    `error` is the last failed attempt's error, `errors` the last `KEPT_ERRORS` (oldest
    first, `error` last, without tracebacks): a retry that is queued or running still
    shows why the attempts before it failed. `unique_key`: while this job is queued or
    running, no other job of its type holds the same key (stores enforce it).
    """

    id: str
    type: str
    payload: Any = None
    status: str = "queued"
    progress: float | None = None
    message: str | None = None
    result: Any = None
    error: Any = None
    errors: list[Any] = msgspec.field(default_factory=list)
    attempt: int = 0
    max_attempts: int = 3
    priority: int = 0
    timeout: float | None = None
    idempotency_key: str | None = None
    cancel_requested: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    run_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    lease_seconds: float | None = None
    submitted_by: str | None = None  # the principal that submitted it (None: anonymous)
    # The id of the worker that leased it last (None: none, or one that did not say).
    worker: str | None = None
    unique_key: str | None = None
    # What its queue's `group_concurrency` counts it by (None: no group).
    group: str | None = None
    # Its parents: the jobs that must all succeed before it is queued (it waits meanwhile).
    after: list[str] = msgspec.field(default_factory=list)

    @property
    def terminal(self) -> bool:
        """True once the job has ended (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    @property
    def active(self) -> bool:
        """True while the job is queued or running: when its `unique_key` is held."""
        return self.status in ACTIVE_STATUSES

    @property
    def holds_unique(self) -> bool:
        """True while the job holds its `unique_key` (if it has one): waiting, queued or
        running."""
        return self.unique_key is not None and self.status in UNIQUE_STATUSES

    def to_wire(
        self,
        *,
        with_payload: bool = True,
        with_errors: bool = True,
        with_traceback: bool = True,
        served: bool | UnsetType = UNSET,
        deduplicated: bool | UnsetType = UNSET,
        ref: str | UnsetType = UNSET,
    ) -> JobWire:
        """The public form: with or without the payload, `errors` and the last error's
        traceback. `served` and `deduplicated` are given by the answer of a submit."""
        job_id = self.id
        return JobWire(
            id=job_id,
            type=self.type,
            status=self.status,  # type: ignore[arg-type]  # stores keep only JOB_STATUSES
            payload=self.payload if with_payload else UNSET,
            progress=self.progress,
            message=self.message,
            result=self.result,
            error=self.error if with_traceback else without_traceback(self.error),
            errors=self.errors if with_errors else UNSET,
            attempt=self.attempt,
            max_attempts=self.max_attempts,
            priority=self.priority,
            timeout=self.timeout,
            cancel_requested=self.cancel_requested,
            submitted_by=self.submitted_by,
            worker=self.worker,
            unique_key=self.unique_key,
            group=self.group,
            after=self.after if self.after else UNSET,
            created_at=format_time(self.created_at),
            updated_at=format_time(self.updated_at),
            run_at=format_time(self.run_at),
            started_at=_opt_time(self.started_at),
            finished_at=_opt_time(self.finished_at),
            lease_expires_at=_opt_time(self.lease_expires_at),
            links=JobLinks(
                f"/v1/jobs/{job_id}",
                f"/v1/jobs/{job_id}/events",
                f"/v1/jobs/{job_id}/ws",
                f"/v1/channels/{JOB_CHANNEL_PREFIX}{job_id}/messages",
            ),
            served=served,
            deduplicated=deduplicated,
            ref=ref,
        )

    def event_wire(self) -> JobWire:
        """What a job event (a message of the job's channel) carries: the public form
        without the payload, `errors` and the traceback, so that a large payload or
        traceback is not copied into every later event of the job."""
        return self.to_wire(with_payload=False, with_errors=False, with_traceback=False)

    def running_wire(self) -> RunningJobWire:
        """A running job as the worker list shows it."""
        return RunningJobWire(
            self.id,
            self.type,
            self.attempt,
            _opt_time(self.started_at),
            _opt_time(self.lease_expires_at),
            self.progress,
            self.message,
        )

    def lease_to_wire(
        self, parents: dict[str, Job] | None = None, budget: ParentBudget | None = None
    ) -> LeasedJobWire:
        """What a worker receives for a leased job; `parents` holds (at least) the jobs of
        its `after` that still exist, by id. Their results are shown while they fit in
        MAX_PARENT_RESULTS_BYTES and in `budget` (what is left for the whole answer:
        share one among the jobs of an answer; None: a budget of this job's own), in
        `after`'s order; a result that does not fit is left out, marked `omitted`."""
        known = parents or {}
        shown: list[ParentWire] | UnsetType = UNSET
        if self.after:
            shown = []
            budget = ParentBudget() if budget is None else budget
            job_left = MAX_PARENT_RESULTS_BYTES
            for parent_id in self.after:
                parent = known.get(parent_id)
                if parent is None:
                    shown.append(ParentWire(parent_id, "", None))
                else:
                    wire, size = _parent_wire(parent, job_left, budget)
                    job_left -= size
                    shown.append(wire)
        return LeasedJobWire(
            self.id,
            self.type,
            self.payload,
            self.attempt,
            self.max_attempts,
            self.timeout,
            self.lease_token or "",
            _opt_time(self.lease_expires_at),
            shown,
        )


# Bounds of a queue's limits (`QueueLimits`).
MAX_RATE_LIMIT = 1_000_000
MIN_RATE_PER = 0.001
MAX_RATE_PER = 7 * 24 * 3600.0
MAX_QUEUE_CONCURRENCY = 1_000_000


class RateLimit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """At most `limit` leases of a job type per `per` seconds on average: a token bucket
    of `limit` tokens refilled at limit/per (GCRA), so a burst takes at most `limit` at
    once after an idle spell."""

    limit: int
    per: float = 1.0

    @property
    def interval(self) -> float:
        """Seconds between two leases at the steady rate."""
        return self.per / self.limit


class QueueLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=False):
    """What `PUT /v1/queues/{type}` sets on a job type, each null for no limit: `rate`
    (leases per time), `concurrency` (its running jobs at once, across nodes) and
    `group_concurrency` (its running jobs at once per `group` given on submit)."""

    rate: RateLimit | None = None
    concurrency: int | None = None
    group_concurrency: int | None = None

    @property
    def empty(self) -> bool:
        """True when no limit is set (PUT with every limit null lifts them all)."""
        return self.rate is None and self.concurrency is None and self.group_concurrency is None

    def problem(self) -> str | None:
        """What is wrong with these limits, said as what to fix; None when they are valid."""
        rate = self.rate
        if rate is not None:
            if not 1 <= rate.limit <= MAX_RATE_LIMIT:
                return (
                    f'"rate.limit" must be 1 to {MAX_RATE_LIMIT} (jobs per "per" seconds), got '
                    f'{rate.limit}; to lift the rate limit send "rate": null'
                )
            if not MIN_RATE_PER <= rate.per <= MAX_RATE_PER:
                return (
                    f'"rate.per" must be {MIN_RATE_PER} to {MAX_RATE_PER:.0f} seconds, got '
                    f"{rate.per!r}"
                )
        for name in ("concurrency", "group_concurrency"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_QUEUE_CONCURRENCY:
                return (
                    f'"{name}" must be 1 to {MAX_QUEUE_CONCURRENCY} running jobs, got {value}; '
                    f'to lift it send "{name}": null'
                )
        return None


class WorkerIdentity(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Who a worker is, as its lease requests say (`worker`): `id` its own, random per
    run (1-64 of A-Z a-z 0-9 . _ : -); `name` for people (`host:pid` by default, at most
    128 printable characters); `concurrency` the jobs it runs at once (1 to 10,000; null:
    not said)."""

    id: str
    name: str = ""
    concurrency: int | None = None

    def problem(self) -> str | None:
        """What is wrong with this identity, said as what to fix; None when it is valid."""
        if WORKER_ID_RE.fullmatch(self.id) is None:
            return f'"id" must be 1-64 characters of A-Z a-z 0-9 . _ : -, got {self.id[:80]!r}'
        if len(self.name) > MAX_WORKER_NAME or _UNPRINTABLE_RE.search(self.name):
            return (
                f'"name" must be at most {MAX_WORKER_NAME} printable characters (no control '
                f"characters or line breaks), got {self.name[:80]!r}"
            )
        c = self.concurrency
        if c is not None and not 1 <= c <= MAX_WORKER_CONCURRENCY:
            return f'"concurrency" must be 1 to {MAX_WORKER_CONCURRENCY}, or null; got {c}'
        return None


class RunningJobWire(msgspec.Struct, frozen=True, gc=False):
    """A running job as the worker list shows it."""

    id: str
    type: str
    attempt: int
    started_at: Time | None
    lease_expires_at: Time | None
    progress: float | None
    message: str | None


class WorkerWire(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A worker of the worker list: who it says it is (`types` null: every type), the
    principal it authenticates as (`user` null: anonymous), when it was first and last seen
    (a lease request or a heartbeat), and the jobs it is running."""

    id: str
    name: str
    user: str | None
    types: list[str] | None
    concurrency: int | None
    first_seen: Time
    last_seen: Time
    running: list[RunningJobWire]


class WorkerListWire(msgspec.Struct, frozen=True, gc=False):
    """The answer of `GET /v1/workers`: the workers seen lately, most recently seen first,
    and `unidentified`: the running jobs of no listed worker."""

    workers: list[WorkerWire]
    unidentified: list[RunningJobWire]


class JobListWire(msgspec.Struct, frozen=True, gc=False):
    """The answer of `GET /v1/jobs`: a page, and the `before` cursor of the next (null:
    this is the last)."""

    jobs: list[JobWire]
    next: str | None = None


class OutcomeWire(msgspec.Struct, frozen=True, gc=False):
    """The server's word on one reported outcome: the job's new `status` when it was
    applied, or the `error` that refused it (`conflict`, `not_found`, ...)."""

    id: str
    status: str | UnsetType = UNSET
    error: ErrorDetail | UnsetType = UNSET


class LeaseAnswerWire(msgspec.Struct, frozen=True, gc=False):
    """The answer of `POST /v1/workers/lease`: the leased jobs and, when the request
    carried results, their outcomes in order."""

    jobs: list[LeasedJobWire]
    results: list[OutcomeWire] | UnsetType = UNSET


class ReportAnswerWire(msgspec.Struct, frozen=True, gc=False):
    """The answer of `POST /v1/workers/report`: one outcome per result, in order."""

    results: list[OutcomeWire]


class HeartbeatAnswerWire(msgspec.Struct, frozen=True, gc=False):
    """The answer of a heartbeat: whether cancellation was asked, and the lease's new end."""

    cancel_requested: bool
    lease_expires_at: Time


class JobOutcome(msgspec.Struct, frozen=True):
    """A worker's word on one leased job: `ok` completes it with `value` as its result;
    otherwise the attempt fails with `value` as its error (retried when `retry`)."""

    id: str
    lease_token: str
    ok: bool
    value: Any = None
    retry: bool = True
