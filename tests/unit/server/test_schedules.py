"""The schedule service's pure parts: slots of cron expressions and intervals, what a due
schedule fires (catch-up policies), ids of firings, and the refusals of bad schedules."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from msgspec.structs import replace

from tidings.protocol.errors import BadRequest, Conflict, InvalidBody
from tidings.protocol.messages import CHANNEL_RE
from tidings.protocol.schedules import Schedule, slot_job_id, slot_of_job_id
from tidings.server.hub import Hub
from tidings.server.jobs import JobService
from tidings.server.schedules import CronSlots, ScheduleService, check_name, plan
from tidings.server.stores.base import Retention
from tidings.server.stores.memory import MemoryStore

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC).timestamp()  # a Monday, 10:00 UTC


def service_on(store: MemoryStore) -> ScheduleService:
    return ScheduleService(store, JobService(store, Hub(store.channels.cursor_key)))


def service() -> ScheduleService:
    return service_on(MemoryStore(Retention(100, 3600.0)))


def at(*args: int, tz: str = "UTC") -> float:
    return datetime(*args, tzinfo=ZoneInfo(tz)).timestamp()  # type: ignore[misc]


def every(seconds: int, due: float, catch_up: str = "latest") -> Schedule:
    return Schedule(name="s", type="t", every=seconds, next_run_at=due, catch_up=catch_up)


def cron(expr: str, due: float, tz: str = "UTC", catch_up: str = "latest") -> Schedule:
    return Schedule(name="s", type="t", cron=expr, timezone=tz, next_run_at=due, catch_up=catch_up)


def test_a_cron_expression_steps_through_its_slots_in_its_time_zone():
    slots = CronSlots("30 2 * * *", "Europe/Paris")
    first = slots.next_after(at(2026, 1, 5, 12, 0, tz="Europe/Paris"))
    assert first == at(2026, 1, 6, 2, 30, tz="Europe/Paris")
    assert slots.latest_at_or_before(first) == first
    assert slots.latest_at_or_before(first - 1) == first - 86_400


def test_a_slot_in_the_hour_a_spring_dst_change_skips_fires_once_that_day():
    slots = CronSlots("30 2 * * *", "Europe/Paris")
    # 2026-03-29 02:00 -> 03:00 in Paris: 02:30 does not exist that day.
    day = slots.next_after(at(2026, 3, 29, 0, 0, tz="Europe/Paris"))
    after = slots.next_after(day)
    assert after - day >= 22 * 3600
    assert datetime.fromtimestamp(after, ZoneInfo("Europe/Paris")).hour == 2


def test_an_autumn_dst_change_gives_distinct_increasing_slots():
    slots = CronSlots("*/30 * * * *", "Europe/Paris")
    t = at(2026, 10, 25, 1, 50, tz="Europe/Paris")
    seen = []
    for _ in range(6):
        t = slots.next_after(t)
        seen.append(t)
    assert seen == sorted(set(seen))
    assert all(b - a == 1800 for a, b in itertools.pairwise(seen))
    assert len({slot_job_id("s", s) for s in seen}) == 6


def test_a_due_interval_schedule_fires_its_slot_and_moves_one_interval_on():
    assert plan(every(10, T0), T0 + 0.003) == (T0, T0 + 10, 0)


@pytest.mark.parametrize("catch_up", ["latest", "skip"])
def test_a_late_look_fires_every_slot_it_missed_in_order_each_once(catch_up):
    # A look 1.2 s late on a loaded machine: slot T0, then at once T0 + 1, then T0 + 2.
    s = every(1, T0, catch_up)
    assert plan(s, T0 + 1.2) == (T0, T0 + 1, 0)
    assert plan(replace(s, next_run_at=T0 + 1), T0 + 1.21) == (T0 + 1, T0 + 2, 0)
    # As late as the grace: still fired.
    assert plan(s, T0 + 9.9, grace=10) == (T0, T0 + 1, 0)
    c = cron("* * * * *", T0, catch_up=catch_up)
    assert plan(c, T0 + 5, grace=10) == (T0, T0 + 60, 0)


def test_a_scheduler_running_late_fires_each_slot_of_a_backlog_once_then_catches_up():
    s, now, fired = every(1, T0), T0 + 4.5, []
    while s.next_run_at <= now:
        slot, following, skipped = plan(s, now, grace=10)
        assert skipped == 0
        fired.append(slot)
        s = replace(s, next_run_at=following)
        now += 0.01
    assert fired == [T0 + i for i in range(5)]


def test_after_downtime_latest_fires_the_most_recent_missed_slot_once_counting_the_rest():
    assert plan(every(10, T0), T0 + 35, grace=5) == (T0 + 30, T0 + 40, 3)
    s = cron("*/5 * * * *", T0)
    assert plan(s, T0 + 3600 + 60, grace=10) == (T0 + 3600, T0 + 3600 + 300, 12)


def test_after_downtime_skip_fires_nothing_late_and_resumes_at_the_first_slot_in_grace():
    # 1900 s late, grace 60: slots T0..T0+1800 are more than 60 s late.
    assert plan(every(600, T0, "skip"), T0 + 3 * 600 + 100, grace=60) == (None, T0 + 2400, 4)
    # Slots in the grace are then fired one by one: here T0+30 s and T0+35 s.
    assert plan(every(5, T0, "skip"), T0 + 40, grace=10) == (None, T0 + 30, 6)
    s = cron("* * * * *", T0, catch_up="skip")
    assert plan(s, T0 + 300, grace=60) == (None, T0 + 240, 4)
    assert plan(s, T0 + 301, grace=60) == (None, T0 + 300, 5)
    # Late by less than the grace: fired.
    assert plan(every(600, T0, "skip"), T0 + 5, grace=60) == (T0, T0 + 600, 0)


def test_the_job_id_of_a_firing_names_the_schedule_and_the_slot_and_is_a_channel_name():
    job_id = slot_job_id("a.b:c-" + "x" * 122, T0)
    assert job_id.endswith(":20260105T100000Z")
    assert CHANNEL_RE.fullmatch(f"job.{job_id}") is not None
    assert slot_of_job_id(job_id) == ("a.b:c-" + "x" * 122, T0)
    assert slot_of_job_id("0190f3ab12cd34ef56ab78cd") is None


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"cron": "* * * *"}, "five fields"),
        ({"cron": "* * * * * *"}, "five fields"),
        ({"cron": "61 * * * *"}, "not a cron expression"),
        ({"cron": "0 0 31 2 *"}, "never fires"),
        ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "time zone"),
        ({"cron": "* * * * *", "timezone": "../../etc/passwd"}, "time zone"),
        ({"cron": "* * * * *", "timezone": "Europe"}, "time zone"),
        ({"cron": "* * 31 4,6,9,11 *"}, "never fires"),
        ({}, "exactly one"),
        ({"cron": "* * * * *", "every": 5}, "exactly one"),
        ({"every": 0}, '"every" must be'),
        ({"every": 10, "timezone": "UTC"}, "cron"),
        ({"every": 10, "catch_up": "all"}, "catch_up"),
        ({"every": 10, "max_attempts": 0}, "max_attempts"),
        ({"every": 10, "timeout": 0.0}, "timeout"),
        ({"every": 10, "priority": 2**31}, "32 bits"),
    ],
)
def test_a_bad_schedule_is_refused_saying_what_to_fix(fields, says):
    svc = service()
    with pytest.raises(InvalidBody, match=says):
        svc.build("s", "t", **fields)


def test_a_schedule_name_is_a_short_channel_like_name():
    assert check_name("nightly.report:eu-1") == "nightly.report:eu-1"
    for bad in ["", "a/b", "a b", "x" * 129, "é"]:
        with pytest.raises(BadRequest):
            check_name(bad)


def test_a_replacement_keeps_its_creation_time_and_history_and_starts_from_now():
    svc = service()
    first = svc.build("s", "t", every=60, now=T0)
    assert first.next_run_at == T0 + 60
    fired = replace(first, last_run_at=T0 + 60, last_job_id="sched:s:x")
    again = svc.build("s", "t", cron="0 * * * *", now=T0 + 90, known=fired)
    assert (again.created_at, again.updated_at) == (T0, T0 + 90)
    assert (again.last_run_at, again.last_job_id) == (T0 + 60, "sched:s:x")
    assert again.next_run_at == T0 + 3600
    assert again.timezone == "UTC"


def test_two_schedulers_firing_one_slot_make_one_job_and_one_advance():
    """As two nodes on one store: both submit the slot's job, one advances the schedule."""

    async def main() -> None:
        store = MemoryStore(Retention(100, 3600.0))
        await store.start()
        hub = Hub(store.channels.cursor_key)
        jobs = JobService(store, hub)
        a, b = ScheduleService(store, jobs), ScheduleService(store, jobs)
        made = a.build("s", "t", every=5, payload={"k": 1}, now=T0)
        await a.put(made, None)
        [due] = await store.schedules.due_schedules(T0 + 5.01, 10)
        won = await asyncio.gather(a.fire(due, T0 + 5.01), b.fire(due, T0 + 5.02))
        assert sorted(won) == [False, True]
        assert a.counters.fired + b.counters.fired == 1
        page = await store.jobs.list_jobs(None, "t", 10)
        assert [j.id for j in page.jobs] == [slot_job_id("s", T0 + 5)]
        assert page.jobs[0].payload == {"k": 1}
        after = await store.schedules.get_schedule("s")
        assert after is not None
        assert (after.next_run_at, after.last_run_at) == (T0 + 10, T0 + 5)
        assert after.last_job_id == slot_job_id("s", T0 + 5)
        # The loser firing the same slot again (a crash before its advance) changes nothing.
        assert await b.fire(due, T0 + 6) is False
        assert len((await store.jobs.list_jobs(None, "t", 10)).jobs) == 1

    asyncio.run(main())


def test_a_put_that_lost_a_race_to_another_put_is_a_conflict_and_writes_nothing():
    """Two PUTs of a new name that both found none: the second is refused, not written
    over the first user's schedule."""

    async def main() -> None:
        store = MemoryStore(Retention(100, 3600.0))
        await store.start()
        svc = service_on(store)
        ann = svc.build("s", "t", every=5, owner="ann", now=T0)
        bob = svc.build("s", "t", every=7, owner="bob", now=T0)
        assert await svc.put(ann, None) is True
        with pytest.raises(Conflict, match="created by another request"):
            await svc.put(bob, None)
        assert await store.schedules.get_schedule("s") == ann
        # A replacement built from a read the schedule has moved on from: refused too.
        stale = svc.build("s", "t", every=9, owner="ann", now=T0 + 1, known=bob)
        with pytest.raises(Conflict, match="replaced or deleted"):
            await svc.put(stale, bob)
        assert await svc.put(svc.build("s", "t", every=9, now=T0 + 1, known=ann), ann) is False

    asyncio.run(main())


def test_a_slot_at_or_before_the_last_one_fired_is_never_fired_again():
    # A schedule replaced on a node whose clock is behind the one that fired T0 + 10.
    s = replace(every(10, T0 + 10), last_run_at=T0 + 10)
    assert plan(s, T0 + 10.5) == (None, T0 + 20, 1)
    assert plan(replace(s, next_run_at=T0 + 5), T0 + 5.5) == (None, T0 + 15, 1)
    assert plan(replace(s, next_run_at=T0 + 20), T0 + 20.5) == (T0 + 20, T0 + 30, 0)

    async def main() -> None:
        store = MemoryStore(Retention(100, 3600.0))
        await store.start()
        svc = service_on(store)
        fired = replace(svc.build("s", "t", every=10, now=T0), last_run_at=T0 + 10)
        await svc.put(fired, None)
        assert await svc.fire(fired, T0 + 10.5) is True
        assert (await store.jobs.list_jobs(None, "t", 10)).jobs == []
        after = await store.schedules.get_schedule("s")
        assert after is not None
        assert (after.next_run_at, after.last_run_at) == (T0 + 20, T0 + 10)
        assert (svc.counters.fired, svc.counters.skipped) == (0, 1)

    asyncio.run(main())


def test_a_catch_up_after_downtime_counts_the_slots_it_passed_over_as_skipped():
    async def main() -> None:
        store = MemoryStore(Retention(100, 3600.0))
        await store.start()
        svc = service_on(store)
        made = svc.build("s", "t", every=1, now=T0)  # first slot T0 + 1
        await svc.put(made, None)
        # A minute with no scheduler: one catch-up firing (T0 + 61), 60 slots skipped.
        assert await svc.fire(made, T0 + 61.5) is True
        assert (svc.counters.fired, svc.counters.skipped) == (1, 60)
        page = await store.jobs.list_jobs(None, "t", 10)
        assert [j.id for j in page.jobs] == [slot_job_id("s", T0 + 61)]

    asyncio.run(main())
