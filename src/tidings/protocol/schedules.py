"""Schedules as they travel: the stored record, its public form, a listing.

A schedule submits a job of its `type` at each of its slots: the times its `cron`
expression (five fields, evaluated in its `timezone`) names, or every `every` seconds.
Each firing is a normal job whose id names the schedule and the slot
(`slot_job_id`: `sched:{name}:{YYYYmmddTHHMMSSZ}`, the slot in UTC), so every node that
fires a slot submits the same job.
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Any, Literal, get_args

import msgspec

from tidings.protocol.codecs import Time, format_time

__all__ = [
    "CATCH_UP_POLICIES",
    "MAX_SCHEDULE_NAME",
    "SCHEDULE_JOB_PREFIX",
    "SCHEDULE_NAME_RE",
    "CatchUp",
    "Schedule",
    "ScheduleLinks",
    "ScheduleListWire",
    "ScheduleWire",
    "slot_job_id",
    "slot_of_job_id",
]

# A schedule's name: the characters of a channel name, short enough that the job id of a
# firing (`sched:{name}:{slot}`) is a job id whose channel `job.{id}` is a channel name.
MAX_SCHEDULE_NAME = 128
SCHEDULE_NAME_RE = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_SCHEDULE_NAME}}}")
# Job ids (and idempotency keys) of firings start with this; clients may not use it.
SCHEDULE_JOB_PREFIX = "sched:"
_SLOT_FORMAT = "%Y%m%dT%H%M%SZ"

# What a schedule does about the slots it missed while no server ran it (slots more than
# the server's grace late; later ones are all fired): "latest" fires the most recent
# missed slot once, then goes on at the next; "skip" fires none of them.
CatchUp = Literal["latest", "skip"]
CATCH_UP_POLICIES: tuple[str, ...] = get_args(CatchUp)


def slot_job_id(name: str, slot: float) -> str:
    """The id of the job a schedule's firing at `slot` submits (whole seconds, UTC)."""
    return f"{SCHEDULE_JOB_PREFIX}{name}:{time.strftime(_SLOT_FORMAT, time.gmtime(slot))}"


def slot_of_job_id(job_id: str) -> tuple[str, float] | None:
    """(schedule name, slot) of a firing's job id, or None for any other job id."""
    if not job_id.startswith(SCHEDULE_JOB_PREFIX):
        return None
    name, sep, stamp = job_id[len(SCHEDULE_JOB_PREFIX) :].rpartition(":")
    if not sep or not name:
        return None
    try:
        parsed = time.strptime(stamp, _SLOT_FORMAT)
    except ValueError:
        return None
    return name, float(calendar.timegm(parsed))


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as stored. Times are seconds since the epoch (RFC 3339 on the wire).

    Exactly one of `cron` (five fields, in `timezone`) and `every` (whole seconds) is set.
    `next_run_at` is the next slot to fire; `last_run_at` the slot fired last and
    `last_job_id` its job. `owner` is the principal that put it (None: anonymous):
    its firings are submitted as that principal's jobs. `owner_is_user` says the owner is
    a user of the store (not an application JWT's subject), whose grant to submit `type`
    is checked again at each firing.
    """

    name: str
    type: str
    payload: Any = None
    cron: str | None = None
    every: int | None = None
    timezone: str | None = None
    max_attempts: int = 3
    timeout: float | None = None
    priority: int = 0
    catch_up: str = "latest"
    next_run_at: float = 0.0
    last_run_at: float | None = None
    last_job_id: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    owner: str | None = None
    owner_is_user: bool = False

    def to_wire(self) -> ScheduleWire:
        """The public form."""
        return ScheduleWire(
            name=self.name,
            type=self.type,
            payload=self.payload,
            cron=self.cron,
            every=self.every,
            timezone=self.timezone,
            max_attempts=self.max_attempts,
            timeout=self.timeout,
            priority=self.priority,
            catch_up=self.catch_up,  # type: ignore[arg-type]  # checked when put
            next_run_at=format_time(self.next_run_at),
            last_run_at=None if self.last_run_at is None else format_time(self.last_run_at),
            last_job_id=self.last_job_id,
            created_at=format_time(self.created_at),
            updated_at=format_time(self.updated_at),
            owner=self.owner,
            links=ScheduleLinks(f"/v1/schedules/{self.name}", f"/v1/jobs?type={self.type}"),
        )


class ScheduleLinks(msgspec.Struct, frozen=True, gc=False):
    """Where to find a schedule, and the jobs of its type."""

    self_: str = msgspec.field(name="self")
    jobs: str


class ScheduleWire(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A schedule's public form: what was put, and when it fires next (`next_run_at`),
    which slot fired last (`last_run_at`) and its job (`last_job_id`)."""

    name: str
    type: str
    payload: Any
    cron: str | None
    every: int | None
    timezone: str | None
    max_attempts: int
    timeout: float | None
    priority: int
    catch_up: CatchUp
    next_run_at: Time
    last_run_at: Time | None
    last_job_id: str | None
    created_at: Time
    updated_at: Time
    owner: str | None
    links: ScheduleLinks


class ScheduleListWire(msgspec.Struct, frozen=True, gc=False):
    """The answer of `GET /v1/schedules`: a page by name, and the `after` of the next
    (null: this is the last)."""

    schedules: list[ScheduleWire]
    next: str | None = None
