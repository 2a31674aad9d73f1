"""The schedule service: schedules put, read, listed and removed, and the scheduler that
fires them on every node.

A schedule names its slots with a cron expression (five fields, evaluated in its IANA
time zone by croniter, daylight-saving changes included) or an interval of whole seconds
(slots `every` apart from its first, `every` after the put). At each slot the scheduler
submits a normal job through the job service, whose id names the schedule and the slot
(`sched:{name}:{YYYYmmddTHHMMSSZ}`) and whose idempotency key is that id.

A firing is submit-then-advance. Every node that sees the slot due submits the same job
(a repeat answers the job already there), then advances the schedule with a
compare-and-set on the schedule as it read it (`ScheduleStore.advance_schedule`,
recording the slot as `last_run_at`): one node moves it to its next slot, the others
find it moved. A crash between the two leaves the slot due for the next look, whose
submit again answers the same job. A slot at or before `last_run_at` is never submitted.

The guarantee, however many nodes share the store and across restarts: each slot is
written as at most one job, provided some node's scheduler advances the schedule past
the slot within `--job-ttl` seconds of the slot's job finishing (a repeat finds the job
by its id only while the job is kept). Every running node's scheduler looks at least
every SCHEDULE_POLL seconds, and at start looks before its node's first job sweep
(JOB_SWEEP_INTERVAL later), so even a restart after any downtime advances past the slot
(firing it again, or passing over it in a catch-up) while its job is still there. A
second job for one slot needs all of: a node stopping (or its advance failing) between
the slot's submit and its advance, the job finishing, and then every scheduler's look
failing for `--job-ttl` seconds while a node sweeps jobs. A slot is not written at all
only when skipped: a downtime's catch-up, an owner who lost the grant, a payload the
server no longer accepts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from datetime import datetime
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, CroniterError, croniter
from msgspec.structs import replace

from tidings.protocol.errors import (
    BadRequest,
    Conflict,
    InvalidBody,
    NotFound,
    StoreError,
    TidingsError,
)
from tidings.protocol.schedules import (
    CATCH_UP_POLICIES,
    MAX_SCHEDULE_NAME,
    SCHEDULE_NAME_RE,
    Schedule,
    slot_job_id,
)
from tidings.server.constants import (
    DEFAULT_MAX_DEPTH,
    MAX_SCHEDULE_EVERY,
    MAX_SCHEDULES_PER_OWNER,
    SCHEDULE_BATCH,
    SCHEDULE_GRACE,
    SCHEDULE_POLL,
)
from tidings.server.job_timings import JobTimings
from tidings.server.jobs import JobService, check_job_fields
from tidings.server.principals import Principal
from tidings.server.stores.base import Store

__all__ = ["CronSlots", "Plan", "ScheduleCounters", "ScheduleService", "check_name", "plan"]

log = logging.getLogger("tidings.schedules")

# The longest cron expression and time zone name accepted.
MAX_CRON_LEN = 200
MAX_TIMEZONE_LEN = 64
# Seconds added to the scheduler's sleep: the loop's timers may fire before the wall
# clock reaches the slot, and a look too early finds nothing due.
TIMER_SLACK = 0.002
# The most slots of a cron schedule counted as skipped by one catch-up (counted one by
# one: a year of minutes would take seconds).
MAX_COUNTED_SLOTS = 10_000


def check_name(name: str) -> str:
    """`name`, or BadRequest saying what a schedule name may hold."""
    if SCHEDULE_NAME_RE.fullmatch(name) is None:
        raise BadRequest(
            f"schedule name {name[:80]!r}: use 1-{MAX_SCHEDULE_NAME} characters of "
            "A-Z a-z 0-9 . _ : -"
        )
    return name


class CronSlots:
    """The slots of a five-field cron expression in a time zone.

    Args:
        expression: e.g. `*/5 * * * *` (minute, hour, day of month, month, day of week).
        timezone: an IANA name (`Europe/Paris`, `UTC`).

    Raises InvalidBody saying what to fix for an expression that is not one, one that
    never fires, or an unknown time zone.
    """

    __slots__ = ("expression", "zone")

    def __init__(self, expression: str, timezone: str) -> None:
        if len(timezone) > MAX_TIMEZONE_LEN:
            raise InvalidBody(f'"timezone" must be at most {MAX_TIMEZONE_LEN} characters')
        try:
            self.zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: "Europe", a folder
            raise InvalidBody(
                f'"timezone": {timezone[:80]!r} is not a time zone this server knows: use an '
                "IANA name such as UTC, Europe/Paris or America/New_York"
            ) from None
        fields = expression.split()
        if len(expression) > MAX_CRON_LEN or len(fields) != 5:
            raise InvalidBody(
                f'"cron": {expression[:80]!r} must be five fields separated by spaces '
                '(minute hour day-of-month month day-of-week), e.g. "*/5 * * * *"'
            )
        self.expression = " ".join(fields)
        try:
            croniter(self.expression)
        except (CroniterError, ValueError, TypeError, KeyError) as exc:
            raise InvalidBody(
                f'"cron": {expression[:80]!r} is not a cron expression ({exc}): write five '
                'fields of numbers, ranges (1-5), lists (1,3), steps (*/15) or *, e.g. "0 3 * * *"'
            ) from None

    def _at(self, ts: float) -> datetime:
        return datetime.fromtimestamp(ts, self.zone)

    def next_after(self, ts: float) -> float:
        """The first slot strictly after `ts`; InvalidBody when there is none."""
        try:
            return float(croniter(self.expression, self._at(ts)).get_next(float))
        except CroniterBadDateError:
            raise InvalidBody(
                f'"cron": {self.expression!r} never fires (no such date within 50 years): '
                "check its day of month against its month"
            ) from None

    def latest_at_or_before(self, ts: float) -> float:
        """The last slot at or before `ts`."""
        prev = float(croniter(self.expression, self._at(ts)).get_prev(float))
        following = self.next_after(prev)
        return following if following <= ts else prev


def _slots(schedule: Schedule) -> CronSlots | None:
    if schedule.cron is None:
        return None
    return CronSlots(schedule.cron, schedule.timezone or "UTC")


class Plan(NamedTuple):
    """What a due schedule does at one look: fire `slot` (None: none), move on to
    `following`, and count `skipped` slots as never fired."""

    slot: float | None
    following: float
    skipped: int


def _count_slots(schedule: Schedule, cron: CronSlots | None, start: float, end: float) -> int:
    """How many slots of `schedule` fall in [start, end): exact for an interval; for a cron
    expression at most MAX_COUNTED_SLOTS (counted one by one)."""
    if end <= start:
        return 0
    if cron is None:
        return math.ceil((end - start) / (schedule.every or 1))
    count, t = 0, start
    while t < end and count < MAX_COUNTED_SLOTS:
        count += 1
        t = cron.next_after(t)
    return count


def plan(schedule: Schedule, now: float, grace: float = SCHEDULE_GRACE) -> Plan:
    """What a due schedule does at `now`: `_plan`, except that a slot at or before the
    last slot fired (`last_run_at`) is skipped, never fired again (a schedule replaced
    while a node's clock is behind the one that fired could name it)."""
    planned = _plan(schedule, now, grace)
    last = schedule.last_run_at
    if planned.slot is not None and last is not None and planned.slot <= last:
        return Plan(None, planned.following, planned.skipped + 1)
    return planned


def _plan(schedule: Schedule, now: float, grace: float) -> Plan:
    """What a due schedule does at `now`.

    A slot at most `grace` seconds late (a look delayed by a loaded machine or a slow
    store) is fired: the schedule's stored slot, then at the following looks each later
    due slot in order, each once. When the stored slot is more than `grace` late, no node
    ran the schedule for a while (downtime): with `catch_up` "latest" the most recent slot
    at or before `now` is fired once for all of them and the older ones are counted as
    skipped; with "skip" the slots more than `grace` late are skipped and the schedule
    goes on at the first slot that is not (fired at once when already due).
    """
    due = schedule.next_run_at
    cron = _slots(schedule)

    def after(ts: float) -> float:
        return ts + (schedule.every or 1) if cron is None else cron.next_after(ts)

    if now - due <= grace:
        return Plan(due, after(due), 0)
    if schedule.catch_up == "skip":
        # The first slot not more than `grace` late.
        horizon = now - grace
        if cron is None:
            every = schedule.every or 1
            resume = due + math.ceil((horizon - due) / every) * every
        else:
            on = cron.latest_at_or_before(horizon) == horizon
            resume = horizon if on else cron.next_after(horizon)
        return Plan(None, resume, _count_slots(schedule, cron, due, resume))
    if cron is None:
        every = schedule.every or 1
        latest = due + math.floor((now - due) / every) * every
    else:
        latest = max(due, cron.latest_at_or_before(now))
    return Plan(latest, after(latest), _count_slots(schedule, cron, due, latest))


class ScheduleCounters:
    """The slots this node fired and skipped (those it advanced the schedule past: one node
    per slot), and how late each firing's job was made (its creation minus its slot). Read
    by /metrics at scrape time."""

    __slots__ = ("drift", "fired", "skipped")

    def __init__(self) -> None:
        self.fired = 0
        self.skipped = 0
        self.drift = JobTimings()


class ScheduleService:
    """Schedules on top of a store, fired through the job service.

    Args:
        store: where schedules live.
        jobs: submits each firing (so parked lease requests wake and metrics count it).
        max_depth: the deepest nesting a payload may have.
    """

    def __init__(self, store: Store, jobs: JobService, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.store = store
        self.jobs = jobs
        self.max_depth = max_depth
        self.counters = ScheduleCounters()
        # Set by a put on this node: the scheduler looks again at once.
        self._changed = asyncio.Event()

    # -- management -------------------------------------------------------------------

    def build(
        self,
        name: str,
        type_: str,
        payload: Any = None,
        *,
        cron: str | None = None,
        every: int | None = None,
        timezone: str | None = None,
        max_attempts: int = 3,
        timeout: float | None = None,
        priority: int = 0,
        catch_up: str = "latest",
        owner: str | None = None,
        owner_is_user: bool = False,
        now: float | None = None,
        known: Schedule | None = None,
    ) -> Schedule:
        """A schedule as put now (its first slot the first after `now`), or InvalidBody
        saying what to fix. `known` is the schedule it replaces (its creation time stays)."""
        check_name(name)
        # A firing is a submit of these fields: checked as a submit checks them.
        check_job_fields(
            type_,
            payload,
            max_depth=self.max_depth,
            max_attempts=max_attempts,
            timeout=timeout,
            priority=priority,
        )
        if (cron is None) == (every is None):
            raise InvalidBody(
                'give exactly one of "cron" (five fields in "timezone", e.g. "*/5 * * * *") '
                'or "every" (whole seconds between firings, e.g. 60)'
            )
        if every is not None and not 1 <= every <= MAX_SCHEDULE_EVERY:
            raise InvalidBody(f'"every" must be 1 to {MAX_SCHEDULE_EVERY} seconds (a year)')
        if every is not None and timezone is not None:
            raise InvalidBody('"timezone" applies to "cron" only: leave it out with "every"')
        if catch_up not in CATCH_UP_POLICIES:
            raise InvalidBody(
                f'"catch_up" must be "latest" (after downtime, fire the most recent missed '
                f'slot once) or "skip" (fire no slot more than {SCHEDULE_GRACE:g} s late)'
            )
        now = time.time() if now is None else now
        if cron is not None:
            timezone = timezone or "UTC"
            slots = CronSlots(cron, timezone)
            cron = slots.expression
            first = slots.next_after(now)
        else:
            first = float(math.floor(now) + (every or 1))
        return Schedule(
            name=name,
            type=type_,
            payload=payload,
            cron=cron,
            every=every,
            timezone=timezone,
            max_attempts=max_attempts,
            timeout=timeout,
            priority=priority,
            catch_up=catch_up,
            next_run_at=first,
            last_run_at=None if known is None else known.last_run_at,
            last_job_id=None if known is None else known.last_job_id,
            created_at=now if known is None else known.created_at,
            updated_at=now,
            owner=owner,
            owner_is_user=owner_is_user,
        )

    async def find(self, name: str) -> Schedule | None:
        """One schedule, or None."""
        return await self.store.schedules.get_schedule(check_name(name))

    async def get(self, name: str) -> Schedule:
        """One schedule; NotFound when there is none."""
        schedule = await self.find(name)
        if schedule is None:
            raise NotFound(f"no schedule {name!r}: PUT /v1/schedules/{name} creates it")
        return schedule

    async def put(self, schedule: Schedule, known: Schedule | None, *, admin: bool = False) -> bool:
        """Create or replace a schedule (`build` made it) if the stored one is still `known`
        (None: there is none), the one the caller read and checked; True when it is new.
        Conflict when another request created, replaced or deleted it since, or when it is
        new to an owner who has MAX_SCHEDULES_PER_OWNER (`admin`: an admin put it, bounded
        by the store's cap only)."""
        owner_cap = None if admin else MAX_SCHEDULES_PER_OWNER
        if not await self.store.schedules.put_schedule(schedule, known, owner_cap):
            verb = "created" if known is None else "replaced or deleted"
            raise Conflict(
                f"schedule {schedule.name!r} was {verb} by another request while this one "
                f"was handled: read it (GET /v1/schedules/{schedule.name}) and put it again"
            )
        self._changed.set()
        return known is None

    async def list_schedules(self, after: str = "", limit: int = 1000) -> list[Schedule]:
        """Up to `limit` schedules whose names sort after `after`, by name."""
        return await self.store.schedules.list_schedules(after, limit)

    async def delete(self, name: str) -> None:
        """Remove a schedule; NotFound when there is none."""
        if not await self.store.schedules.delete_schedule(check_name(name)):
            raise NotFound(f"no schedule {name!r}")

    # -- the scheduler ----------------------------------------------------------------

    async def run(self) -> None:
        """Fire due schedules until cancelled: look when the earliest slot comes, at least
        every SCHEDULE_POLL seconds (schedules put on other nodes), and at once after a
        put here."""
        while True:
            self._changed.clear()
            try:
                delay = await self.tick()
            except Exception:
                log.exception("the scheduler failed; it looks again in %g s", SCHEDULE_POLL)
                delay = SCHEDULE_POLL
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), delay)

    async def tick(self) -> float:
        """Fire the schedules due now; the seconds until the scheduler should look again."""
        now = time.time()
        due = await self.store.schedules.due_schedules(now, SCHEDULE_BATCH)
        # Fired together: a store's writes share transactions (SQLite's group commit) and
        # round trips, so a hundred schedules due at one minute are not fired one by one.
        outcomes = await asyncio.gather(
            *(self.fire(schedule, now) for schedule in due), return_exceptions=True
        )
        failed = False
        for schedule, outcome in zip(due, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome  # cancelled: the server stops
                failed = True
                log.error(
                    "schedule %s: firing failed; the scheduler tries again in %g s: %r",
                    schedule.name,
                    SCHEDULE_POLL,
                    outcome,
                )
        if failed:
            return SCHEDULE_POLL
        if len(due) == SCHEDULE_BATCH:
            return 0.0
        first = await self.store.schedules.next_schedule_at()
        if first is None:
            return SCHEDULE_POLL
        return min(SCHEDULE_POLL, max(0.0, first - time.time()) + TIMER_SLACK)

    async def _owner_may_submit(self, schedule: Schedule) -> bool:
        """Whether the schedule's owner, when a user of the store, still exists and may
        submit its type (a grant revoked or a user removed stops their schedules' firings);
        an anonymous owner or an application JWT's subject keeps the right it put it with."""
        if not schedule.owner_is_user or schedule.owner is None:
            return True
        user = await self.store.auth.get_user(schedule.owner)
        return user is not None and Principal(user.name, user.permissions).may(
            "submit", schedule.type
        )

    async def fire(self, schedule: Schedule, now: float) -> bool:
        """Submit the job of a due schedule's slot (none for a slot skipped), then advance
        the schedule past it; True when this call advanced it (False: another node did, or
        it was replaced or deleted meanwhile). StoreError when the store failed: nothing
        is advanced, and the next look fires the same slot.

        The node whose advance wins counts the firing (or the skip) and its drift: the
        store's answer to a submit cannot tell which of several nodes submitting the same
        job at the same instant wrote it, the compare-and-set can."""
        planned, following, skipped = plan(schedule, now)
        slot = planned
        job_id = None
        created_at = None
        if slot is not None and not await self._owner_may_submit(schedule):
            log.warning(
                "schedule %s: slot skipped: its owner %s may no longer submit jobs of type %r",
                schedule.name,
                schedule.owner,
                schedule.type,
            )
            slot = None
        if slot is not None:
            job_id = slot_job_id(schedule.name, slot)
            try:
                job, _created = await self.jobs.submit(
                    schedule.type,
                    schedule.payload,
                    max_attempts=schedule.max_attempts,
                    timeout=schedule.timeout,
                    priority=schedule.priority,
                    idempotency_key=job_id,
                    submitted_by=schedule.owner,
                    job_id=job_id,
                )
            except StoreError:
                raise
            except TidingsError as exc:
                # A payload this server no longer accepts (a lower --max-depth): the slot is
                # skipped rather than tried again at every look.
                log.warning("schedule %s: slot %s not fired: %s", schedule.name, job_id, exc)
                slot = job_id = None
            else:
                created_at = job.created_at
        advanced = replace(
            schedule,
            next_run_at=following,
            last_run_at=schedule.last_run_at if slot is None else slot,
            last_job_id=schedule.last_job_id if job_id is None else job_id,
        )
        if not await self.store.schedules.advance_schedule(schedule, advanced):
            return False
        # The slots a catch-up passed over, and the planned slot when it was not fired.
        self.counters.skipped += skipped + (planned is not None and created_at is None)
        if slot is not None and created_at is not None:
            self.counters.fired += 1
            self.counters.drift.observe(schedule.type, created_at - slot)
        return True
