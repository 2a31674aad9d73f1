"""A job's state machine as pure transitions: `(job, now) -> (job', event)`.

    queued ──lease──▶ running ──complete──▶ succeeded
      ▲  │              │ │
      │  cancel         │ └─fail / lease expired─▶ queued (attempt < max, after backoff)
      │  ▼              │                      └─▶ failed (attempts used up: dead letter)
      │ cancelled ◀─────┘ (cancel requested, then the worker fails or its lease ends)
      └──retry── failed | cancelled

    waiting ──settle: every parent succeeded──▶ queued
       └────settle: a parent failed, was cancelled or is gone──▶ cancelled (why: `error`)

A job submitted `after` parents waits until `settle` (applied when a parent ends, and
right after the job is stored) finds them all succeeded; cancelling it ends it at once.
A retried job with parents waits again, and is settled again.

A transition (`tidings.server.stores.base.Transition`) takes a job as the store holds it
and the store's clock, and returns the job to store and the event to publish on the job's
channel `job.{id}` (None: store the change, publish nothing). A store applies it
atomically with that message; a transition that raises (Conflict) leaves the job as it
was. Nothing here does I/O or reads a clock, so each is tested with plain values.

`cancel` and `retry` are transitions; the others build one from a request's arguments.
"""

from __future__ import annotations

import secrets
from typing import Any

from msgspec.structs import replace

from tidings.protocol.errors import Conflict
from tidings.protocol.jobs import KEPT_ERRORS, Job, without_traceback
from tidings.server.stores.base import Transition

# The shortest lease a worker may ask for (seconds); a heartbeat extends a lease by its
# last length, or by this when the job records none.
MIN_LEASE = 0.1

__all__ = [
    "MIN_LEASE",
    "Backoff",
    "after_failure",
    "cancel",
    "cancel_queued",
    "check_lease",
    "complete",
    "expire",
    "fail",
    "heartbeat",
    "lease",
    "lease_end",
    "parent_problem",
    "ready",
    "release",
    "retry",
    "settle",
    "stamp_error",
]


class Backoff:
    """The delay before a failed job's next attempt: `first` seconds after the first
    attempt, doubling per attempt, never more than `cap`."""

    __slots__ = ("cap", "first")

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap

    def delay(self, attempt: int) -> float:
        """Seconds to wait after attempt number `attempt` (1 for the first) failed."""
        return float(min(self.cap, self.first * 2 ** max(0, attempt - 1)))


def check_lease(job: Job, token: str) -> None:
    """Conflict unless `token` is the lease `job` is running under."""
    if job.status != "running" or job.lease_token is None:
        raise Conflict(f"job {job.id} is {job.status}, not leased: its lease is gone")
    # As bytes: compare_digest refuses a str with characters beyond ASCII.
    if not secrets.compare_digest(job.lease_token.encode(), token.encode()):
        raise Conflict(f"lease token does not hold job {job.id}: it was leased again")


def lease_end(job: Job, now: float, seconds: float) -> float:
    """When a lease of `seconds` taken at `now` ends: never past the attempt's `timeout`."""
    end = now + seconds
    if job.timeout is not None and job.started_at is not None:
        end = min(end, job.started_at + job.timeout)
    return end


def lease(seconds: float, worker: str | None = None) -> Transition:
    """A queued job handed to a worker for `seconds`: a new attempt under a new token. The
    job records `worker` (the id the worker gave, None if it gave none) and keeps it after
    it ends: who held it last."""

    def take(job: Job, now: float) -> tuple[Job, str | None]:
        started = replace(job, started_at=now)
        return replace(
            started,
            status="running",
            attempt=job.attempt + 1,
            worker=worker,
            lease_token=secrets.token_urlsafe(18),
            lease_seconds=seconds,
            lease_expires_at=lease_end(started, now, seconds),
            updated_at=now,
            progress=None,
            message=None,
        ), "running"

    return take


def release(token: str) -> Transition:
    """A lease given back unused: the job is queued again, its attempt uncounted. A job
    no longer running under `token` (completed, or taken back) is left alone."""

    def give_back(job: Job, now: float) -> tuple[Job, str | None]:
        if job.status != "running" or job.lease_token != token:
            return job, None
        return replace(
            job,
            status="queued",
            attempt=job.attempt - 1,
            lease_token=None,
            lease_expires_at=None,
            started_at=None,
            updated_at=now,
        ), "queued"

    return give_back


def heartbeat(
    token: str, progress: float | None, message: str | None, seconds: float | None
) -> Transition:
    """The lease extended by `seconds` (None: by its last length) and progress recorded;
    published as `progress` only when the worker reported some."""
    reported = progress is not None or message is not None

    def beat(job: Job, now: float) -> tuple[Job, str | None]:
        check_lease(job, token)
        length = seconds if seconds is not None else (job.lease_seconds or MIN_LEASE)
        return replace(
            job,
            lease_expires_at=lease_end(job, now, length),
            lease_seconds=length,
            progress=job.progress if progress is None else progress,
            message=job.message if message is None else message,
            updated_at=now,
        ), "progress" if reported else None

    return beat


def complete(token: str, result: Any) -> Transition:
    """The attempt under `token` succeeded with `result`."""

    def done(job: Job, now: float) -> tuple[Job, str | None]:
        check_lease(job, token)
        return replace(
            job,
            status="succeeded",
            result=result,
            progress=100.0,
            lease_token=None,
            lease_expires_at=None,
            finished_at=now,
            updated_at=now,
        ), "succeeded"

    return done


def stamp_error(job: Job, error: dict[str, Any]) -> Job:
    """`job` with `error` (an error object) as the failure of its current attempt: `error`
    with `attempt` set, and appended without its traceback to `errors`, of which the last
    KEPT_ERRORS stay (only the last failure keeps its traceback)."""
    stamped = {**error, "attempt": job.attempt}
    kept = [*job.errors, without_traceback(stamped)][-KEPT_ERRORS:]
    return replace(job, error=stamped, errors=kept)


def after_failure(
    job: Job, now: float, error: dict[str, Any], retry: bool, backoff: Backoff
) -> tuple[Job, str]:
    """Where a failed attempt leaves its job: cancelled if a cancel was requested, queued
    after the backoff if `retry` and attempts remain, else failed (the dead letter). The
    attempt's `error` is kept with its number (`stamp_error`)."""
    base = replace(stamp_error(job, error), lease_token=None, lease_expires_at=None, updated_at=now)
    if job.cancel_requested:
        return replace(base, status="cancelled", finished_at=now), "cancelled"
    if retry and job.attempt < job.max_attempts:
        return replace(base, status="queued", run_at=now + backoff.delay(job.attempt)), "queued"
    return replace(base, status="failed", finished_at=now), "failed"


def fail(token: str, error: dict[str, Any], retry: bool, backoff: Backoff) -> Transition:
    """The attempt under `token` failed with `error`, an error object as
    `tidings.server.jobs.error_object` makes it (see `after_failure`)."""

    def failed(job: Job, now: float) -> tuple[Job, str | None]:
        check_lease(job, token)
        return after_failure(job, now, error, retry, backoff)

    return failed


def expire(backoff: Backoff) -> Transition:
    """A running job whose lease ended without a word from its worker: a failed attempt
    (stores apply it only to jobs whose lease has ended)."""

    def expired(job: Job, now: float) -> tuple[Job, str | None]:
        error = {
            "type": "LeaseExpired",
            "message": f"attempt {job.attempt} stopped heartbeating; its lease ended",
        }
        return after_failure(job, now, error, True, backoff)

    return expired


def cancel(job: Job, now: float) -> tuple[Job, str | None]:
    """A queued or waiting job ends cancelled at once; a running one's worker is asked to
    stop (the job ends cancelled when that attempt fails or its lease ends)."""
    if job.status in ("queued", "waiting"):
        return replace(job, status="cancelled", finished_at=now, updated_at=now), "cancelled"
    if job.status == "running":
        if job.cancel_requested:
            return job, None
        return replace(job, cancel_requested=True, updated_at=now), "cancel_requested"
    raise Conflict(f"job {job.id} already ended {job.status}: nothing to cancel")


def cancel_queued(job: Job, now: float) -> tuple[Job, str | None]:
    """A queued or waiting job ends cancelled; any other is left as it is (a running job
    goes on)."""
    if job.status in ("queued", "waiting"):
        return replace(job, status="cancelled", finished_at=now, updated_at=now), "cancelled"
    return job, None


def retry(job: Job, now: float) -> tuple[Job, str | None]:
    """A failed (dead) or cancelled job queued again with a fresh set of attempts; one
    with parents waits again (its parents are settled anew: `settle`)."""
    if job.status not in ("failed", "cancelled"):
        raise Conflict(f"job {job.id} is {job.status}: only failed or cancelled jobs retry")
    status = "waiting" if job.after else "queued"
    return replace(
        job,
        status=status,
        attempt=0,
        cancel_requested=False,
        result=None,
        finished_at=None,
        run_at=now,
        updated_at=now,
    ), status


def parent_problem(job: Job, parents: dict[str, Job]) -> dict[str, Any] | None:
    """Why a job with parents (`after`) cannot run, as the error it is cancelled with: a
    parent failed, was cancelled, or is gone (`parents` holds those that exist, by id).
    None when none of that holds (they all succeeded, or some have yet to end)."""
    for parent_id in job.after:
        parent = parents.get(parent_id)
        if parent is None:
            return {
                "type": "ParentGone",
                "message": f"parent job {parent_id} no longer exists",
                "parent": parent_id,
            }
        if parent.status in ("failed", "cancelled"):
            return {
                "type": "ParentFailed" if parent.status == "failed" else "ParentCancelled",
                "message": f"parent job {parent_id} ended {parent.status}",
                "parent": parent_id,
            }
    return None


def ready(job: Job, parents: dict[str, Job]) -> bool:
    """True when every parent of `job` succeeded."""
    return all(
        (parent := parents.get(p)) is not None and parent.status == "succeeded" for p in job.after
    )


def settle(parents: dict[str, Job]) -> Transition:
    """A waiting job queued once its parents (`parents`: those that exist, by id, as read
    after the change that made them what they are) all succeeded, or cancelled with the
    reason (`parent_problem`) when one failed, was cancelled or is gone. Any other job, and
    a waiting one whose parents have yet to end, is left as it is (nothing published)."""

    def settled(job: Job, now: float) -> tuple[Job, str | None]:
        if job.status != "waiting":
            return job, None
        problem = parent_problem(job, parents)
        if problem is not None:
            ended = replace(job, status="cancelled", finished_at=now, updated_at=now)
            return stamp_error(ended, problem), "cancelled"
        if ready(job, parents):
            return replace(
                job, status="queued", run_at=max(job.run_at, now), updated_at=now
            ), "queued"
        return job, None

    return settled
