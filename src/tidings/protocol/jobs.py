"""Jobs as they travel: statuses, the job record, its channel, a worker's outcome."""

from __future__ import annotations

from typing import Any

import msgspec

from tidings.protocol.codecs import format_time

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


JOB_CHANNEL_PREFIX = "job."


def job_channel(job_id: str) -> str:
    """The channel every state change and progress report of a job is published on."""
    return JOB_CHANNEL_PREFIX + job_id


def _opt_time(ts: float | None) -> str | None:
    return None if ts is None else format_time(ts)


class Job(msgspec.Struct, frozen=True, kw_only=True):
    """A job as stored. Times are seconds since the epoch (RFC 3339 on the wire).

    `run_at` is when a queued job may next be leased (its delay or retry backoff);
    `lease_token` and `lease_expires_at` belong to the worker holding it while running.
    """

    id: str
    type: str
    payload: Any = None
    status: str = "queued"
    progress: float | None = None
    message: str | None = None
    result: Any = None
    error: Any = None
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

    @property
    def terminal(self) -> bool:
        """True once the job has ended (succeeded, failed or cancelled)."""
        return self.status in TERMINAL_STATUSES

    def to_wire(self) -> dict[str, Any]:
        """The public form: everything but the lease token, with links."""
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "payload": self.payload,
            "progress": self.progress,
            "message": self.message,
            "result": self.result,
            "error": self.error,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "priority": self.priority,
            "timeout": self.timeout,
            "cancel_requested": self.cancel_requested,
            "submitted_by": self.submitted_by,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "run_at": format_time(self.run_at),
            "started_at": _opt_time(self.started_at),
            "finished_at": _opt_time(self.finished_at),
            "lease_expires_at": _opt_time(self.lease_expires_at),
            "links": {
                "self": f"/v1/jobs/{self.id}",
                "events": f"/v1/jobs/{self.id}/events",
                "ws": f"/v1/jobs/{self.id}/ws",
                "channel": f"/v1/channels/{job_channel(self.id)}/messages",
            },
        }

    def lease_to_wire(self) -> dict[str, Any]:
        """What a worker receives for a leased job."""
        return {
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "timeout": self.timeout,
            "lease_token": self.lease_token,
            "lease_expires_at": _opt_time(self.lease_expires_at),
        }


class JobOutcome(msgspec.Struct, frozen=True):
    """A worker's word on one leased job: `ok` completes it with `value` as its result;
    otherwise the attempt fails with `value` as its error (retried when `retry`)."""

    id: str
    lease_token: str
    ok: bool
    value: Any = None
    retry: bool = True
