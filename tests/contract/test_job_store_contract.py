"""The job contract: every store runs the job state machine the same way.

Each test drives `JobService` (tidings.server.jobs) over a real store — in memory and on a real
SQLite file — and checks both the job as stored and the event each transition appended
to the job's channel `job.{id}` (read back with `store.channels.read`), since that channel is
what every transport serves to the job's followers.
"""

from __future__ import annotations

import asyncio
import math
import re
import sqlite3
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from msgspec.structs import replace

from tidings.protocol.codecs import encode_json
from tidings.protocol.errors import Conflict, InvalidBody, NotFound
from tidings.protocol.jobs import BatchJob, Job, JobOutcome, QueueLimits, RateLimit, job_channel
from tidings.server import transitions
from tidings.server.constants import SERVED_MARK_INTERVAL, SERVED_WINDOW
from tidings.server.hub import Hub
from tidings.server.jobs import SERVED_MEMORY, JobService, new_job_id
from tidings.server.stores import open_store
from tidings.server.stores.base import JobChange, JobCursor, Retention, Store
from tidings.server.stores.common import SERVED_MARKS
from tidings.server.stores.sqlite import SQLiteStore
from tidings.server.stores.sqlite.core import SCHEMA

pytestmark = pytest.mark.timeout(30)

DEFAULT = Retention(max_messages=100, max_age=3600.0)
BACKOFF = 0.05

Body = Callable[[Store, JobService], Coroutine[Any, Any, None]]


def run(make_store: Callable[[], Store], body: Body) -> None:
    """Start a store and a job service on it, run `body`, close both."""

    async def main() -> None:
        store = make_store()
        await store.start()
        svc = JobService(store, Hub(store.channels.cursor_key), retry_backoff=BACKOFF)
        try:
            await body(store, svc)
        finally:
            svc.close()
            await store.close()

    asyncio.run(main())


async def events(store: Store, job_id: str) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, data) of every message on the job's channel, oldest first."""
    res = await store.channels.read(job_channel(job_id), "0", 1000)
    assert not res.reset
    return [(m.event, m.data) for m in res.messages]


async def names(store: Store, job_id: str) -> list[str | None]:
    return [e for e, _ in await events(store, job_id)]


async def lease_one(svc: JobService, lease: float = 30.0, types: list[str] | None = None) -> Job:
    jobs = await svc.lease(types, 1, 0, lease)
    assert len(jobs) == 1, jobs
    return jobs[0]


# -- submit -------------------------------------------------------------------------------


def test_submit_queues_the_job_and_publishes_queued(make_store):
    """A submitted job is stored queued at attempt 0, and `queued` is its channel's first event."""

    async def body(store: Store, svc: JobService) -> None:
        job, created = await svc.submit("resize", {"w": 10}, max_attempts=2, priority=3)
        assert created
        assert job.status == "queued"
        assert job.attempt == 0
        assert job.max_attempts == 2
        assert job.priority == 3
        stored = await store.jobs.get_job(job.id)
        assert stored == job
        evs = await events(store, job.id)
        assert [e for e, _ in evs] == ["queued"]
        data = evs[0][1]
        assert data["id"] == job.id
        assert data["status"] == "queued"
        assert data["type"] == "resize"
        # The channel carries the public job without its payload (which may be large).
        assert "payload" not in data
        assert "lease_token" not in data

    run(make_store, body)


def test_submit_rejects_bad_arguments(make_store):
    """max_attempts, delay, priority, timeout and type are checked before anything is stored."""

    async def body(store: Store, svc: JobService) -> None:
        bad: list[dict[str, Any]] = [
            {"max_attempts": 0},
            {"max_attempts": 101},
            {"delay": -1.0},
            {"priority": 2**31},
            {"timeout": 0.0},
        ]
        for kwargs in bad:
            with pytest.raises(InvalidBody):
                await svc.submit("t", None, **kwargs)
        with pytest.raises(InvalidBody):
            await svc.submit("bad type!", None)
        assert (await store.jobs.list_jobs(None, None, 100)).jobs == []

    run(make_store, body)


def test_same_idempotency_key_gives_the_same_job_once(make_store):
    """A repeated idempotency key returns the first job, stores nothing and publishes nothing."""

    async def body(store: Store, svc: JobService) -> None:
        first, created1 = await svc.submit("t", 1, idempotency_key="k-1")
        again, created2 = await svc.submit("t", 2, idempotency_key="k-1")
        other, created3 = await svc.submit("t", 3, idempotency_key="k-2")
        assert created1 and not created2 and created3
        assert again.id == first.id
        assert again.payload == 1
        assert other.id != first.id
        assert len((await store.jobs.list_jobs(None, None, 100)).jobs) == 2
        assert await names(store, first.id) == ["queued"]

    run(make_store, body)


def test_get_unknown_job_is_not_found(make_store):
    """Looking up or transitioning a job that does not exist raises NotFound."""

    async def body(store: Store, svc: JobService) -> None:
        assert await store.jobs.get_job("nope") is None
        with pytest.raises(NotFound):
            await svc.get("nope")
        with pytest.raises(NotFound):
            await svc.cancel("nope")
        with pytest.raises(NotFound):
            await svc.complete("nope", "token", None)

    run(make_store, body)


# -- lease, heartbeat, complete -----------------------------------------------------------


def test_lease_heartbeat_complete(make_store):
    """queued → running (attempt 1, token, lease end) → progress → succeeded, one event each."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t", {"n": 1})
        before = time.time()
        leased = await lease_one(svc, lease=10.0)
        assert leased.id == job.id
        assert leased.status == "running"
        assert leased.attempt == 1
        assert leased.payload == {"n": 1}
        assert leased.lease_token
        assert leased.lease_expires_at is not None
        assert before + 10.0 - 1 <= leased.lease_expires_at <= time.time() + 10.0
        assert await store.jobs.get_job(job.id) == leased

        token = leased.lease_token
        cancel, expires = await svc.heartbeat(job.id, token, 40.0, "half way", lease=20.0)
        assert cancel is False
        assert expires >= leased.lease_expires_at + 5
        running = await svc.get(job.id)
        assert running.progress == 40.0
        assert running.message == "half way"
        assert running.lease_expires_at == expires

        # A heartbeat that reports nothing extends the lease and publishes nothing.
        await svc.heartbeat(job.id, token)
        assert await names(store, job.id) == ["queued", "running", "progress"]

        done = await svc.complete(job.id, token, {"ok": True})
        assert done.status == "succeeded"
        assert done.result == {"ok": True}
        assert done.lease_token is None
        assert done.finished_at is not None
        assert await store.jobs.get_job(job.id) == done

        evs = await events(store, job.id)
        assert [e for e, _ in evs] == ["queued", "running", "progress", "succeeded"]
        assert evs[1][1]["status"] == "running"
        assert evs[1][1]["attempt"] == 1
        assert evs[2][1]["progress"] == 40.0
        assert evs[2][1]["message"] == "half way"
        assert evs[3][1]["status"] == "succeeded"
        assert evs[3][1]["result"] == {"ok": True}

    run(make_store, body)


def test_spent_or_foreign_token_is_refused_and_changes_nothing(make_store):
    """After complete, the spent token gets Conflict; so does a foreign one while running."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t")
        leased = await lease_one(svc)
        for call in (
            svc.heartbeat(job.id, "not-the-token", 50.0),
            svc.complete(job.id, "not-the-token", "x"),
            svc.fail(job.id, "not-the-token", "x"),
        ):
            with pytest.raises(Conflict):
                await call
        assert await store.jobs.get_job(job.id) == leased

        done = await svc.complete(job.id, leased.lease_token, 1)
        for call in (
            svc.complete(job.id, leased.lease_token, 2),
            svc.fail(job.id, leased.lease_token, "late"),
            svc.heartbeat(job.id, leased.lease_token, 10.0),
        ):
            with pytest.raises(Conflict):
                await call
        assert await store.jobs.get_job(job.id) == done
        assert await names(store, job.id) == ["queued", "running", "succeeded"]

    run(make_store, body)


def test_heartbeat_rejects_bad_progress(make_store):
    """Progress outside 0-100 and a lease out of range are refused, and nothing changes."""

    async def body(store: Store, svc: JobService) -> None:
        await svc.submit("t")
        leased = await lease_one(svc)
        for kwargs in ({"progress": 101.0}, {"progress": -1.0}, {"lease": 0.0}):
            with pytest.raises(InvalidBody):
                await svc.heartbeat(leased.id, leased.lease_token, **kwargs)
        assert await store.jobs.get_job(leased.id) == leased

    run(make_store, body)


def test_lease_is_atomic_under_concurrency(make_store):
    """Many concurrent lease calls share out the jobs: no job goes to two callers."""

    async def body(store: Store, svc: JobService) -> None:
        submitted = {(await svc.submit("t", i))[0].id for i in range(60)}
        batches = await asyncio.gather(*(svc.lease(None, 4, 0, 30.0) for _ in range(25)))
        leased = [j.id for batch in batches for j in batch]
        assert len(leased) == len(set(leased)), "a job was leased twice"
        assert set(leased) == submitted
        assert await svc.lease(None, 10, 0, 30.0) == []
        for job_id in submitted:
            assert await names(store, job_id) == ["queued", "running"]

    run(make_store, body)


def test_lease_order_is_priority_then_run_at(make_store):
    """Higher priority first; within a priority, the earliest `run_at` first."""

    async def body(store: Store, svc: JobService) -> None:
        late, _ = await svc.submit("t", "late", delay=0.2)  # submitted first, runs last
        low, _ = await svc.submit("t", "low", priority=-5)
        early, _ = await svc.submit("t", "early")
        high, _ = await svc.submit("t", "high", priority=10)
        mid, _ = await svc.submit("t", "mid", priority=5)
        await asyncio.sleep(0.3)
        got = await svc.lease(None, 10, 0, 30.0)
        assert [j.payload for j in got] == ["high", "mid", "early", "late", "low"]
        assert {late.id, low.id, early.id, high.id, mid.id} == {j.id for j in got}

    run(make_store, body)


def test_leases_in_small_batches_follow_one_order_across_types(make_store):
    """Several leases of two jobs each, over three types, take the jobs in one order —
    priority, then run_at — and a lease for some types skips the others."""

    async def body(store: Store, svc: JobService) -> None:
        plan = [("a", 0), ("b", 3), ("c", 0), ("a", 3), ("b", 0), ("c", 7), ("a", -1), ("b", 0)]
        for n, (type_, priority) in enumerate(plan):
            await svc.submit(type_, n, priority=priority)
        only_ac = await svc.lease(["a", "c"], 2, 0, 30.0)
        assert [j.payload for j in only_ac] == [5, 3]  # c/7, then a/3 (b/3 is not asked for)
        taken = []
        while got := await svc.lease(None, 2, 0, 30.0):
            assert len(got) <= 2
            taken += [j.payload for j in got]
        assert taken == [1, 0, 2, 4, 7, 6]  # b/3, then priority 0 by submission, a/-1 last

    run(make_store, body)


def test_lease_filters_by_type_and_waits_for_delay(make_store):
    """A lease takes only the types asked for; a delayed job is not leased before its time."""

    async def body(store: Store, svc: JobService) -> None:
        a, _ = await svc.submit("a")
        b, _ = await svc.submit("b", delay=0.5)
        assert [j.id for j in await svc.lease(["b"], 10, 0, 30.0)] == []
        assert [j.id for j in await svc.lease(["a"], 10, 0, 30.0)] == [a.id]
        started = time.monotonic()
        got = await svc.lease(["b"], 10, 3.0, 30.0)  # long-polls until b is due
        assert [j.id for j in got] == [b.id]
        assert time.monotonic() - started >= 0.3
        assert got[0].started_at is not None
        assert got[0].started_at >= b.run_at

    run(make_store, body)


def test_a_parked_lease_is_answered_by_a_submit(make_store):
    """A lease long-polling on an empty queue returns as soon as a job of its type arrives."""

    async def body(store: Store, svc: JobService) -> None:
        waiting = asyncio.ensure_future(svc.lease(["t"], 1, 5.0, 30.0))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        started = time.monotonic()
        job, _ = await svc.submit("t")
        got = await asyncio.wait_for(waiting, 2.0)
        assert [j.id for j in got] == [job.id]
        assert time.monotonic() - started < 1.0

    run(make_store, body)


def test_lease_length_never_passes_the_job_timeout(make_store):
    """A job with `timeout` gets a lease that ends by started_at + timeout."""

    async def body(store: Store, svc: JobService) -> None:
        await svc.submit("t", timeout=0.5)
        leased = await lease_one(svc, lease=60.0)
        assert leased.started_at is not None
        assert leased.lease_expires_at == pytest.approx(leased.started_at + 0.5)
        _, expires = await svc.heartbeat(leased.id, leased.lease_token, lease=60.0)
        assert expires == pytest.approx(leased.started_at + 0.5)

    run(make_store, body)


# -- failure, expiry, retry ---------------------------------------------------------------


def test_fail_with_retry_requeues_after_backoff_then_fails_when_attempts_are_used(make_store):
    """fail(retry) → queued after a backoff with attempt kept; the last attempt → failed."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t", max_attempts=2)
        first = await lease_one(svc)
        requeued = await svc.fail(job.id, first.lease_token, {"msg": "boom"})
        assert requeued.status == "queued"
        assert requeued.attempt == 1
        assert requeued.error == {"msg": "boom", "attempt": 1}
        assert requeued.lease_token is None
        assert requeued.run_at > time.time()  # backoff
        assert await svc.lease(None, 1, 0, 30.0) == []
        await asyncio.sleep(BACKOFF * 2)
        second = await lease_one(svc)
        assert second.attempt == 2
        dead = await svc.fail(job.id, second.lease_token, "boom again")
        assert dead.status == "failed"
        assert dead.finished_at is not None
        assert await svc.lease(None, 1, 0, 30.0) == []
        assert [j.id for j in (await svc.list_jobs("failed", None, 10)).jobs] == [job.id]
        evs = await events(store, job.id)
        assert [e for e, _ in evs] == ["queued", "running", "queued", "running", "failed"]
        assert evs[2][1]["error"] == {"msg": "boom", "attempt": 1}
        # A string is the message of an error object.
        assert evs[-1][1]["error"] == {"type": "Error", "message": "boom again", "attempt": 2}

    run(make_store, body)


def test_fail_without_retry_or_with_one_attempt_ends_failed(make_store):
    """retry=False fails at once; max_attempts=1 with retry=True fails too."""

    async def body(store: Store, svc: JobService) -> None:
        a, _ = await svc.submit("t", max_attempts=3)
        leased = await lease_one(svc)
        assert (await svc.fail(a.id, leased.lease_token, "no", retry=False)).status == "failed"
        b, _ = await svc.submit("t", max_attempts=1)
        leased = await lease_one(svc)
        assert (await svc.fail(b.id, leased.lease_token, "no", retry=True)).status == "failed"
        for job_id in (a.id, b.id):
            assert await names(store, job_id) == ["queued", "running", "failed"]

    run(make_store, body)


def test_expired_lease_requeues_with_the_next_attempt(make_store):
    """A lease that ends without a heartbeat puts the job back; its next lease is attempt 2."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t")
        first = await lease_one(svc, lease=0.1)
        assert await svc.expire() == []  # not yet
        await asyncio.sleep(0.2)
        expired = await svc.expire()
        assert [j.id for j in expired] == [job.id]
        assert expired[0].status == "queued"
        assert expired[0].error["type"] == "LeaseExpired"
        assert await svc.expire() == []  # taken back once
        with pytest.raises(Conflict):
            await svc.complete(job.id, first.lease_token, "too late")
        await asyncio.sleep(BACKOFF * 2)
        second = await lease_one(svc)
        assert second.attempt == 2
        assert second.lease_token != first.lease_token
        await svc.complete(job.id, second.lease_token, "ok")
        assert await names(store, job.id) == ["queued", "running", "queued", "running", "succeeded"]

    run(make_store, body)


def test_expired_last_attempt_ends_failed(make_store):
    """When the expired attempt was the last one, the job ends failed (dead letter)."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t", max_attempts=1)
        await lease_one(svc, lease=0.1)
        await asyncio.sleep(0.2)
        [expired] = await svc.expire()
        assert expired.status == "failed"
        assert await names(store, job.id) == ["queued", "running", "failed"]

    run(make_store, body)


def test_retry_requeues_failed_and_cancelled_jobs_only(make_store):
    """retry: failed/cancelled → queued with attempts reset; other states are a Conflict."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t", max_attempts=1)
        leased = await lease_one(svc)
        with pytest.raises(Conflict):
            await svc.retry(job.id)  # running
        await svc.fail(job.id, leased.lease_token, "x")
        again = await svc.retry(job.id)
        assert again.status == "queued"
        assert again.attempt == 0
        assert again.finished_at is None
        leased = await lease_one(svc)
        assert leased.attempt == 1
        await svc.complete(job.id, leased.lease_token, "ok")
        with pytest.raises(Conflict):
            await svc.retry(job.id)  # succeeded

        gone, _ = await svc.submit("t")
        await svc.cancel(gone.id)
        assert (await svc.retry(gone.id)).status == "queued"
        assert await names(store, gone.id) == ["queued", "cancelled", "queued"]
        assert await names(store, job.id) == [
            "queued", "running", "failed", "queued", "running", "succeeded",
        ]  # fmt: skip

    run(make_store, body)


def _traceback(frames: int) -> str:
    """A formatted traceback of `frames` calls, the innermost (`handler`) last."""
    lines = ["Traceback (most recent call last):\n"]
    for n in range(frames):
        lines.append(f'  File "/app/jobs.py", line {n + 1}, in step{n}\n    step{n + 1}()\n')
    lines.append('  File "/app/jobs.py", line 9999, in handler\n    raise ValueError("bad")\n')
    lines.append("ValueError: bad\n")
    return "".join(lines)


def test_a_failed_attempt_keeps_its_traceback_bounded_with_its_attempt(make_store):
    """A failure's traceback is stored (its last 16 KiB, cut at the outer frames) with the
    attempt's number, survives the retry that is queued and then running, is in the event
    of the failure, and each attempt's error joins `errors` (reported one by one or in a
    batch)."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t", max_attempts=3)
        first = await lease_one(svc)
        long_tb = _traceback(2000)
        assert len(long_tb.encode()) > 64 * 1024
        error = {"type": "ValueError", "message": "bad", "traceback": long_tb}
        await svc.fail(job.id, first.lease_token, error)
        for read in (await svc.get(job.id), await store.jobs.get_job(job.id)):
            assert read is not None and read.status == "queued"
            tb = read.error["traceback"]
            assert len(tb.encode()) <= 16 * 1024
            assert tb.startswith("[traceback cut to its last 16 KiB")
            assert tb.endswith('in handler\n    raise ValueError("bad")\nValueError: bad\n')
            assert (read.error["type"], read.error["message"], read.error["attempt"]) == (
                "ValueError",
                "bad",
                1,
            )
        evs = await events(store, job.id)
        assert evs[-1][0] == "queued"
        assert evs[-1][1]["error"] == {"type": "ValueError", "message": "bad", "attempt": 1}
        assert "errors" not in evs[-1][1]  # events carry the last error only

        await asyncio.sleep(BACKOFF * 2)
        second = await lease_one(svc)
        running = await svc.get(job.id)
        assert running.status == "running" and running.error["attempt"] == 1
        short = {"type": "KeyError", "message": "'x'", "traceback": _traceback(1)}
        [out] = await svc.report([JobOutcome(job.id, second.lease_token, False, short)])
        assert isinstance(out, Job)
        again = await store.jobs.get_job(job.id)
        assert again is not None
        assert again.error == {**short, "attempt": 2}
        assert [(e["type"], e["attempt"]) for e in again.errors] == [
            ("ValueError", 1),
            ("KeyError", 2),
        ]
        assert all("traceback" not in e for e in again.errors)  # only `error` keeps it
        assert again.to_wire().errors == again.errors

    run(make_store, body)


def test_no_event_of_a_retried_job_copies_its_traceback(make_store):
    """Every event after a failure (the requeue, the next lease, progress, the end) carries
    the last error as type, message and attempt: a 16 KiB traceback is not copied into
    each of them; the job itself keeps it."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t", max_attempts=2)
        first = await lease_one(svc)
        error = {"type": "ValueError", "message": "bad", "traceback": _traceback(2000)}
        await svc.fail(job.id, first.lease_token, error)
        await asyncio.sleep(BACKOFF * 2)
        second = await lease_one(svc)
        await svc.heartbeat(job.id, second.lease_token, progress=50.0)
        await svc.complete(job.id, second.lease_token, {"ok": True})
        evs = await events(store, job.id)
        assert [name for name, _ in evs] == [
            "queued", "running", "queued", "running", "progress", "succeeded",
        ]  # fmt: skip
        for name, data in evs[2:]:
            assert data["error"] == {"type": "ValueError", "message": "bad", "attempt": 1}, name
            assert len(encode_json(data)) < 2048, name
        kept = await store.jobs.get_job(job.id)
        assert kept is not None and len(kept.error["traceback"]) > 8 * 1024

    run(make_store, body)


def test_a_stored_error_is_bounded_whole(make_store):
    """A huge message keeps its first 4 KiB; extra keys that would take the error past
    8 KiB are left out with a note; a value that is not an object becomes a bounded
    message; a null traceback is no traceback."""

    async def body(store: Store, svc: JobService) -> None:
        a, _ = await svc.submit("t", max_attempts=1)
        b, _ = await svc.submit("t", max_attempts=1)
        c, _ = await svc.submit("t", max_attempts=1)
        leased = {j.id: j for j in await svc.lease(["t"], 3, 0, 30.0)}
        huge = {"type": "E", "message": "m" * 100_000, "ctx": ["x" * 1000] * 50, "traceback": None}
        await svc.fail(a.id, leased[a.id].lease_token, huge)
        await svc.report([JobOutcome(b.id, leased[b.id].lease_token, False, ["y" * 50_000])])
        await svc.fail(c.id, leased[c.id].lease_token, {"type": "E", "message": "m", "n": 1})
        got_a, got_b, got_c = [await store.jobs.get_job(j.id) for j in (a, b, c)]
        assert got_a is not None and got_b is not None and got_c is not None
        assert "traceback" not in got_a.error and "ctx" not in got_a.error
        assert "left out" in got_a.error["note"]
        assert len(encode_json(got_a.error)) <= 8 * 1024
        assert got_a.error["message"].startswith("mmm")
        assert len(got_a.error["message"]) <= 4 * 1024
        assert got_b.error["type"] == "Error" and len(got_b.error["message"]) <= 4 * 1024
        assert got_c.error == {"type": "E", "message": "m", "n": 1, "attempt": 1}

    run(make_store, body)


def test_a_traceback_that_is_not_a_string_is_refused_and_changes_nothing(make_store):
    """fail: InvalidBody (422); in a report, that outcome alone is refused."""

    async def body(store: Store, svc: JobService) -> None:
        a, _ = await svc.submit("t")
        b, _ = await svc.submit("t")
        leased = {j.id: j for j in await svc.lease(["t"], 2, 0, 30.0)}
        bad = {"type": "E", "message": "m", "traceback": ["not", "text"]}
        with pytest.raises(InvalidBody, match="traceback"):
            await svc.fail(a.id, leased[a.id].lease_token, bad)
        out = await svc.report(
            [
                JobOutcome(a.id, leased[a.id].lease_token, False, bad),
                JobOutcome(b.id, leased[b.id].lease_token, False, {"type": "E"}),
            ]
        )
        assert isinstance(out[0], InvalidBody) and isinstance(out[1], Job)
        still = await store.jobs.get_job(a.id)
        assert still is not None and still.status == "running" and still.error is None
        assert await names(store, a.id) == ["queued", "running"]

    run(make_store, body)


# -- served job types ---------------------------------------------------------------------


def test_served_marks_move_forward_only_and_answer_the_latest_of_the_types(make_store):
    async def body(store: Store, svc: JobService) -> None:
        jobs = store.jobs
        assert await jobs.served_at(["a", "*"]) is None
        await jobs.mark_served(["a", "b"], 1000.5)
        await jobs.mark_served(["a"], 900.0)  # older: the mark stays
        assert await jobs.served_at(["a"]) == 1000.5
        await jobs.mark_served(["*"], 2000.25)
        assert await jobs.served_at(["b", "*"]) == 2000.25
        assert await jobs.served_at(["c"]) is None

    run(make_store, body)


def test_a_store_keeps_at_most_served_marks_types_forgetting_the_oldest(make_store):
    """Past SERVED_MARKS types, the oldest mark goes (any number of job types may be
    asked for); the newest stay."""

    async def body(store: Store, svc: JobService) -> None:
        now = time.time()
        await store.jobs.mark_served(["oldest"], now - 10)
        await store.jobs.mark_served(["older"], now - 5)
        many = [f"type{n}" for n in range(SERVED_MARKS)]
        await store.jobs.mark_served(many, now)
        assert await store.jobs.served_at(["oldest"]) is None
        assert await store.jobs.served_at(["older"]) is None
        assert await store.jobs.served_at([many[0]]) == now
        assert await store.jobs.served_at([many[-1]]) == now
        await store.jobs.mark_served(["newest"], now + 1)
        assert await store.jobs.served_at(["newest"]) == now + 1
        assert sum([await store.jobs.served_at([t]) is not None for t in many]) == (
            SERVED_MARKS - 1
        )

    run(make_store, body)


def test_a_node_remembers_at_most_served_memory_types(make_store):
    """A node's memory of the marks it wrote and read is bounded by count, not only by
    age: a worker naming ever new types cannot grow it."""

    async def body(store: Store, svc: JobService) -> None:
        async def mark(first: int, count: int) -> None:
            for n in range(first, first + count, 100):
                await svc.mark_served([f"t{n + k}" for k in range(100)])

        await mark(0, SERVED_MEMORY + 500)
        assert len(svc._marked) <= SERVED_MEMORY
        assert await svc.served(f"t{SERVED_MEMORY + 499}")
        # Another node learns the marks by reading them from the store.
        other = JobService(store, Hub(store.channels.cursor_key))
        try:
            for n in range(500, SERVED_MEMORY + 500):
                assert await other.served(f"t{n}")
            await mark(SERVED_MEMORY + 500, 500)
            for n in range(SERVED_MEMORY + 500, SERVED_MEMORY + 1000):
                assert await other.served(f"t{n}")
            assert len(other._seen) <= SERVED_MEMORY
        finally:
            other.close()

    run(make_store, body)


def test_a_type_is_served_once_a_lease_asks_for_it_seen_by_another_node(make_store):
    """A lease request naming a type (answered with a job or not) marks it served, for this
    node and for a second one sharing the store; a lease of any type serves every type;
    a heartbeat marks its job's type; a mark older than the window does not count."""

    async def body(store: Store, svc: JobService) -> None:
        assert not await svc.served("resize")
        assert await svc.lease(["resize", "crop"], 1, 0, 30.0) == []  # nothing to lease
        assert await svc.served("resize") and await svc.served("crop")
        assert not await svc.served("resizeX")

        # Another node: on Redis a second store object; memory and SQLite have one server.
        other_store = make_store() if make_store.kind == "redis" else store
        if other_store is not store:
            await other_store.start()
        other = JobService(other_store, Hub(other_store.channels.cursor_key))
        try:
            assert await other.served("resize")  # read from the store
            assert not await other.served("thumb")
            await store.jobs.mark_served(["old"], time.time() - SERVED_WINDOW - 1)
            assert not await other.served("old")
            job, _ = await other.submit("thumb")
            leased = await svc.lease(["thumb"], 1, 0, 30.0)
            assert [j.id for j in leased] == [job.id]
            assert await other.served("thumb")
            # A worker of every type serves any type.
            await svc.lease(None, 1, 0, 30.0)
            assert await other.served("anything.at.all")
        finally:
            other.close()
            if other_store is not store:
                await other_store.close()

    run(make_store, body)


def test_a_node_writes_a_type_mark_at_most_once_per_interval(make_store):
    """Lease requests in a row write the mark once: the store keeps the first one's time
    until SERVED_MARK_INTERVAL has passed (the local memory answers `served` meanwhile)."""

    async def body(store: Store, svc: JobService) -> None:
        await svc.lease(["t"], 1, 0, 30.0)
        first = await store.jobs.served_at(["t"])
        assert first is not None
        for _ in range(3):
            await asyncio.sleep(0.02)
            await svc.lease(["t"], 1, 0, 30.0)
        assert await store.jobs.served_at(["t"]) == first
        # A second node writes its own mark, and the store keeps the later one.
        other = JobService(store, Hub(store.channels.cursor_key))
        try:
            await other.lease(["t"], 1, 0, 30.0)
            later = await store.jobs.served_at(["t"])
            assert later is not None and later > first
        finally:
            other.close()
        assert SERVED_MARK_INTERVAL >= 1.0

    run(make_store, body)


def test_a_heartbeat_marks_its_job_type_served(make_store):
    """A worker whose slots are all busy asks for no lease, but its heartbeats say it is up."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("long")
        # Leased by the store itself: no lease request marked the type.
        [change] = await store.jobs.lease_jobs(["long"], 1, time.time(), transitions.lease(30.0))
        assert change.job.lease_token is not None
        assert not await svc.served("long")
        await svc.heartbeat(job.id, change.job.lease_token)
        assert await svc.served("long")
        marked = await store.jobs.served_at(["long"])
        assert marked is not None and marked > time.time() - 5

    run(make_store, body)


# -- cancellation -------------------------------------------------------------------------


def test_cancel_queued_job_is_immediate(make_store):
    """A queued job is cancelled at once and is never leased; cancelling again is a Conflict."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t")
        cancelled = await svc.cancel(job.id)
        assert cancelled.status == "cancelled"
        assert cancelled.finished_at is not None
        assert await svc.lease(None, 1, 0, 30.0) == []
        with pytest.raises(Conflict):
            await svc.cancel(job.id)
        assert await names(store, job.id) == ["queued", "cancelled"]

    run(make_store, body)


def test_cancel_running_job_is_requested_then_ends_when_the_worker_stops(make_store):
    """Running: cancel_requested (reported by heartbeat); the worker's fail ends it cancelled."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t")
        leased = await lease_one(svc)
        asked = await svc.cancel(job.id)
        assert asked.status == "running"
        assert asked.cancel_requested
        again = await svc.cancel(job.id)  # asking twice publishes nothing new
        assert again.cancel_requested
        cancel, _ = await svc.heartbeat(job.id, leased.lease_token)
        assert cancel is True
        ended = await svc.fail(job.id, leased.lease_token, "stopped", retry=True)
        assert ended.status == "cancelled"
        assert await names(store, job.id) == ["queued", "running", "cancel_requested", "cancelled"]

    run(make_store, body)


def test_cancel_running_job_whose_lease_runs_out_ends_cancelled(make_store):
    """A running job with cancel requested whose worker vanishes ends cancelled, not requeued."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t")
        await lease_one(svc, lease=0.1)
        await svc.cancel(job.id)
        await asyncio.sleep(0.2)
        [ended] = await svc.expire()
        assert ended.status == "cancelled"
        assert await names(store, job.id) == ["queued", "running", "cancel_requested", "cancelled"]
        assert await svc.lease(None, 1, 0, 30.0) == []

    run(make_store, body)


def test_cancel_finished_job_is_a_conflict(make_store):
    """A job that already ended cannot be cancelled, and stays as it ended."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t")
        leased = await lease_one(svc)
        done = await svc.complete(job.id, leased.lease_token, 1)
        with pytest.raises(Conflict):
            await svc.cancel(job.id)
        assert await store.jobs.get_job(job.id) == done

    run(make_store, body)


# -- listing, counts, sweeping ------------------------------------------------------------


def test_list_jobs_and_queue_counts(make_store):
    """list_jobs filters by status and type, newest first; queue_counts per type and status."""

    async def body(store: Store, svc: JobService) -> None:
        a1, _ = await svc.submit("a")
        a2, _ = await svc.submit("a")
        b1, _ = await svc.submit("b")
        leased = await lease_one(svc, types=["a"])
        assert leased.id == a1.id
        await svc.complete(a1.id, leased.lease_token, None)
        await svc.cancel(b1.id)
        assert [j.id for j in (await svc.list_jobs(None, None, 10)).jobs] == [b1.id, a2.id, a1.id]
        assert [j.id for j in (await svc.list_jobs(None, None, 2)).jobs] == [b1.id, a2.id]
        assert [j.id for j in (await svc.list_jobs(None, "a", 10)).jobs] == [a2.id, a1.id]
        assert [j.id for j in (await svc.list_jobs("queued", None, 10)).jobs] == [a2.id]
        assert [j.id for j in (await svc.list_jobs("succeeded", "a", 10)).jobs] == [a1.id]
        assert (await svc.list_jobs("succeeded", "b", 10)).jobs == []
        assert await svc.queues() == {
            "a": {"queued": 1, "succeeded": 1},
            "b": {"cancelled": 1},
        }

    run(make_store, body)


def test_sweep_removes_old_finished_jobs_and_their_channels(make_store):
    """sweep drops jobs that ended before the cut-off, with their channel and idempotency key;
    running, queued and recently finished jobs stay."""

    async def body(store: Store, svc: JobService) -> None:
        old, _ = await svc.submit("t", idempotency_key="old-key")
        leased = await lease_one(svc)
        await svc.complete(old.id, leased.lease_token, 1)
        queued, _ = await svc.submit("t", delay=60)
        running, _ = await svc.submit("t")
        await lease_one(svc)
        await asyncio.sleep(0.3)
        recent, _ = await svc.submit("t")
        await svc.cancel(recent.id)

        await svc.sweep(ttl=0.2)
        assert await store.jobs.get_job(old.id) is None
        assert await store.channels.info(job_channel(old.id)) is None
        assert (await store.channels.read(job_channel(old.id), "0", 10)).messages == []
        for kept in (queued, running, recent):
            assert await store.jobs.get_job(kept.id) is not None
            assert await names(store, kept.id)
        # The swept job's idempotency key no longer matches.
        fresh, created = await svc.submit("t", idempotency_key="old-key")
        assert created
        assert fresh.id != old.id
        assert await svc.queues() == {"t": {"queued": 2, "running": 1, "cancelled": 1}}

    run(make_store, body)


def test_retention_by_age_leaves_job_channels_to_their_job(make_store):
    """The retention sweep trims ordinary channels by age but not job channels: a job's
    events stay as long as the job (they go with it, in the job sweep)."""

    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t")
        await lease_one(svc)
        old = (await store.channels.publish("jobless", "x")).message
        trimmed = await store.channels.sweep(old.time + DEFAULT.max_age + 60)
        assert trimmed == ["jobless"]
        assert await names(store, job.id) == ["queued", "running"]
        info = await store.channels.info(job_channel(job.id))
        assert info is not None and info.messages == 2

    run(make_store, body)


# -- batches of transitions (worker reports) ----------------------------------------------


def test_transition_jobs_applies_steps_in_order_and_refuses_each_on_its_own(make_store):
    """One call, several steps: a refused step (Conflict from its transition, NotFound for a
    missing job) changes nothing and takes its place in the answer; the others apply, each
    seeing what the steps before it did to the same job; on SQLite it is one commit."""

    async def body(store: Store, svc: JobService) -> None:
        a, _ = await svc.submit("t")
        b, _ = await svc.submit("t")
        assert await store.jobs.transition_jobs([]) == []

        def note(text: str) -> Any:
            def fn(job: Job, now: float) -> tuple[Job, str | None]:
                return replace(job, message=(job.message or "") + text, updated_at=now), "note"

            return fn

        def refuse(job: Job, now: float) -> tuple[Job, str | None]:
            raise Conflict(f"not {job.id}")

        commits = store.commits if isinstance(store, SQLiteStore) else 0
        out = await store.jobs.transition_jobs(
            [
                (a.id, note("x"), True),
                (b.id, refuse, True),
                ("no-such-job", note("y"), False),
                (a.id, note("z"), False),
                (b.id, note("w"), True),
            ]
        )
        if isinstance(store, SQLiteStore):
            assert store.commits == commits + 1
        assert [type(o).__name__ for o in out] == [
            "JobChange",
            "Conflict",
            "NotFound",
            "JobChange",
            "JobChange",
        ]
        first, last_a, last_b = out[0], out[3], out[4]
        assert isinstance(first, JobChange) and isinstance(last_a, JobChange)
        assert isinstance(last_b, JobChange)
        assert first.job.message == "x"
        assert last_a.job.message == "xz"  # the second step saw the first
        assert last_b.job.message == "w"  # the refused step left nothing behind
        assert last_a.published is not None and last_a.published.message.event == "note"
        assert await store.jobs.get_job(a.id) == last_a.job
        assert await store.jobs.get_job(b.id) == last_b.job
        assert await names(store, a.id) == ["queued", "note", "note"]
        assert await names(store, b.id) == ["queued", "note"]

    run(make_store, body)


def test_report_completes_and_fails_like_complete_and_fail(make_store):
    """`report` applies complete and fail outcomes as the single calls would; a stale or
    foreign token, or an unknown job, is refused alone and leaves its job unchanged."""

    async def body(store: Store, svc: JobService) -> None:
        ids = [(await svc.submit("t", max_attempts=2))[0].id for _ in range(5)]
        leased = {j.id: j for j in await svc.lease(["t"], 5, 0, 30.0)}
        assert set(leased) == set(ids)
        done, retried, dead, stale, foreign = (leased[i] for i in ids)
        await svc.complete(stale.id, stale.lease_token, "first")  # its token is now spent

        out = await svc.report(
            [
                JobOutcome(done.id, done.lease_token, True, {"n": 1}),
                JobOutcome(retried.id, retried.lease_token, False, {"type": "E"}),
                JobOutcome(dead.id, dead.lease_token, False, {"type": "F"}, retry=False),
                JobOutcome(stale.id, stale.lease_token, True, "second"),
                JobOutcome(foreign.id, "not-the-token", True, "x"),
                JobOutcome("no-such-job", "t", True, None),
            ]
        )
        assert [o.status if isinstance(o, Job) else type(o).__name__ for o in out] == [
            "succeeded",
            "queued",
            "failed",
            "Conflict",
            "Conflict",
            "NotFound",
        ]
        got = {i: await store.jobs.get_job(i) for i in ids}
        assert got[done.id] is not None and got[done.id].result == {"n": 1}
        assert got[retried.id] is not None
        assert got[retried.id].error == {"type": "E", "attempt": 1}
        assert got[retried.id].run_at > time.time() - 1
        assert got[stale.id] is not None and got[stale.id].result == "first"
        assert got[foreign.id] == foreign  # refused: unchanged, still running
        assert await names(store, done.id) == ["queued", "running", "succeeded"]
        assert await names(store, retried.id) == ["queued", "running", "queued"]
        assert await names(store, dead.id) == ["queued", "running", "failed"]
        assert await names(store, stale.id) == ["queued", "running", "succeeded"]
        assert await names(store, foreign.id) == ["queued", "running"]

        # The requeued job is leased again as its second attempt.
        again = await svc.lease(["t"], 5, 2.0, 30.0)
        assert [(j.id, j.attempt) for j in again] == [(retried.id, 2)]

    run(make_store, body)


def test_report_of_a_cancel_requested_job_ends_it_cancelled(make_store):
    async def body(store: Store, svc: JobService) -> None:
        job, _ = await svc.submit("t")
        leased = await lease_one(svc)
        await svc.cancel(job.id)
        (out,) = await svc.report([JobOutcome(job.id, leased.lease_token, False, "stopped")])
        assert isinstance(out, Job) and out.status == "cancelled"
        assert await names(store, job.id) == ["queued", "running", "cancel_requested", "cancelled"]

    run(make_store, body)


def test_report_takes_1_to_100_outcomes(make_store):
    async def body(store: Store, svc: JobService) -> None:
        with pytest.raises(InvalidBody):
            await svc.report([])
        with pytest.raises(InvalidBody):
            await svc.report([JobOutcome(f"j{i}", "t", True) for i in range(101)])
        out = await svc.report([JobOutcome(f"j{i}", "t", True) for i in range(100)])
        assert all(isinstance(o, NotFound) for o in out)

    run(make_store, body)


def test_sqlite_reopen_keeps_jobs_and_their_events(tmp_path):
    """Jobs, their states, idempotency keys and channels survive closing and reopening SQLite;
    a queued job is leased after the reopen and its channel's ids keep increasing."""
    url = f"sqlite:///{tmp_path / 'reopen.db'}"

    async def first_life() -> tuple[Job, Job, list[str]]:
        store = open_store(url, DEFAULT)
        await store.start()
        svc = JobService(store, Hub(store.channels.cursor_key), retry_backoff=BACKOFF)
        try:
            done, _ = await svc.submit("t", {"x": 1}, idempotency_key="k")
            leased = await lease_one(svc)
            done = await svc.complete(done.id, leased.lease_token, {"y": 2})
            waiting, _ = await svc.submit("t", "later", priority=7)
            res = await store.channels.read(job_channel(waiting.id), "0", 10)
            return done, waiting, [m.id for m in res.messages]
        finally:
            svc.close()
            await store.close()

    async def second_life(done: Job, waiting: Job, ids: list[str]) -> None:
        store = open_store(url, DEFAULT)
        await store.start()
        svc = JobService(store, Hub(store.channels.cursor_key), retry_backoff=BACKOFF)
        try:
            assert await store.jobs.get_job(done.id) == done
            assert await store.jobs.get_job(waiting.id) == waiting
            assert await names(store, done.id) == ["queued", "running", "succeeded"]
            again, created = await svc.submit("t", {"x": 1}, idempotency_key="k")
            assert not created
            assert again.id == done.id
            leased = await lease_one(svc)
            assert leased.id == waiting.id
            assert leased.attempt == 1
            res = await store.channels.read(job_channel(waiting.id), "0", 10)
            assert [m.event for m in res.messages] == ["queued", "running"]
            assert res.messages[0].id == ids[0]
            assert store.channels.cursor_key(res.messages[1].id) > store.channels.cursor_key(
                ids[-1]
            )
            assert await svc.queues() == {"t": {"succeeded": 1, "running": 1}}
        finally:
            svc.close()
            await store.close()

    done, waiting, ids = asyncio.run(first_life())
    asyncio.run(second_life(done, waiting, ids))


# -- paging -------------------------------------------------------------------------------

STATUSES = [None, "queued", "running", "succeeded", "failed", "cancelled"]


async def every_page(
    store: Store, status: str | None, type_: str | None, limit: int
) -> tuple[list[str], int]:
    """The ids of every page of a listing, following `next` to the end; and how many pages
    were short (fewer than `limit`) while another followed."""
    seen: list[str] = []
    short = 0
    cursor: JobCursor | None = None
    for _ in range(1000):
        page = await store.jobs.list_jobs(status, type_, limit, cursor)
        assert len(page.jobs) <= limit
        seen += [j.id for j in page.jobs]
        if page.next is None:
            return seen, short
        short += len(page.jobs) < limit
        # Each cursor is older than the one before: a listing never goes round in circles.
        assert cursor is None or page.next.key() < cursor.key()
        cursor = JobCursor.from_text(page.next.to_text())  # as a client sends it back
    raise AssertionError("the listing did not end")


async def mixed_jobs(store: Store, svc: JobService) -> list[Job]:
    """Jobs of types a, b and c in every state, several created at the very same time."""
    for i in range(18):
        await svc.submit("abc"[i % 3], i, max_attempts=1)
    # Six more at the creation time of an existing job: they sort by id among themselves.
    (twin,) = [j for j in (await svc.list_jobs(None, None, 18)).jobs if j.payload == 9]
    for i in range(6):
        copy = replace(twin, id=new_job_id(), payload=100 + i, type="ab"[i % 2])
        _, created = await store.jobs.submit_job(copy, "queued")
        assert created
    for leased in await svc.lease(["a"], 5, 0, 30.0):
        await svc.complete(leased.id, leased.lease_token, None)
    for leased in await svc.lease(["b"], 3, 0, 30.0):
        await svc.fail(leased.id, leased.lease_token, "boom", retry=False)
    await svc.lease(["c"], 2, 0, 30.0)
    queued = (await svc.list_jobs("queued", None, 100)).jobs
    for job in queued[:4]:
        await svc.cancel(job.id)
    return (await svc.list_jobs(None, None, 100)).jobs


def test_job_pages_list_every_match_once_newest_first(make_store):
    """Following `next` lists every job matching each filter (none, status, type, both)
    exactly once, newest first by (created_at, id), jobs created at the same time
    included; the same with a store's scan bound lowered so pages end short."""

    async def body(store: Store, svc: JobService) -> None:
        jobs = await mixed_jobs(store, svc)
        assert len(jobs) == 24
        assert {j.status for j in jobs} == set(STATUSES[1:])
        newest_first = sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)
        assert [j.id for j in jobs] == [j.id for j in newest_first]
        bounded = hasattr(store.jobs, "list_scan")
        short_pages = 0
        for scan in [None, 3] if bounded else [None]:
            if scan is not None:
                store.jobs.list_scan = scan  # type: ignore[attr-defined]
            for status in STATUSES:
                for type_ in [None, "a", "b", "none"]:
                    expected = [
                        j.id
                        for j in newest_first
                        if status in (None, j.status) and type_ in (None, j.type)
                    ]
                    for limit in (1, 4, 100):
                        seen, short = await every_page(store, status, type_, limit)
                        assert seen == expected, (status, type_, limit, scan)
                        short_pages += short
        # A bounded scan did end pages short (and the listing went on after them).
        assert short_pages > 0 if bounded else short_pages == 0

    run(make_store, body)


def test_a_full_last_page_says_it_is_the_last(make_store):
    """A page holding exactly the last `limit` jobs answers no `next`."""

    async def body(store: Store, svc: JobService) -> None:
        for _ in range(4):
            await svc.submit("t")
        first = await store.jobs.list_jobs(None, None, 2)
        assert first.next is not None
        last = await store.jobs.list_jobs(None, None, 2, first.next)
        assert len(last.jobs) == 2
        assert last.next is None
        assert (await store.jobs.list_jobs("queued", "t", 4)).next is None

    run(make_store, body)


def test_a_cursor_whose_job_was_swept_still_pages_on(make_store):
    """The cursor is a position (created_at, id), not a job: after its job is removed,
    the next page starts at the jobs older than it."""

    async def body(store: Store, svc: JobService) -> None:
        ids = [(await svc.submit("t"))[0].id for _ in range(6)]
        await svc.cancel(ids[3])
        await svc.cancel(ids[2])
        page = await store.jobs.list_jobs(None, None, 3)
        assert [j.id for j in page.jobs] == ids[:2:-1]
        assert page.next is not None
        swept = await store.jobs.sweep_jobs(time.time() + 1)
        assert sorted(swept) == sorted(ids[2:4])
        for status in (None, "queued"):
            rest = await store.jobs.list_jobs(status, None, 3, page.next)
            assert [j.id for j in rest.jobs] == [ids[1], ids[0]]
            assert rest.next is None
        # Nor need a cursor name any job that ever existed.
        between = JobCursor(page.jobs[-1].created_at, "0")
        assert [j.id for j in (await store.jobs.list_jobs(None, "t", 5, between)).jobs] == [
            ids[1],
            ids[0],
        ]

    run(make_store, body)


def test_sqlite_job_queries_each_read_a_range_of_their_own_index(tmp_path):
    """No job query of the SQLite store sorts jobs or reads the whole table: the lease,
    expiry, due time and sweep read their partial index (the planner, which has no
    statistics, would otherwise take a listing index on `status` and sort every queued
    job); each listing reads one range of the index of its filter."""

    async def main() -> list[str]:
        path = str(tmp_path / "plans.db")
        store = SQLiteStore(path, DEFAULT)
        await store.start()
        svc = JobService(store, Hub(store.channels.cursor_key), retry_backoff=BACKOFF)
        seen: list[str] = []
        try:
            for i in range(30):
                await svc.submit("ab"[i % 2])
            # Every statement the store runs from here on, with its values (the
            # connections are the store's own: this test is about its SQL).
            core = store._core
            for conn in (core._writer, core._reader, core._point):
                conn.set_trace_callback(seen.append)
            leased = await svc.lease(["a"], 3, 0, 30.0)
            await svc.lease(None, 2, 0, 30.0)
            await svc.complete(leased[0].id, leased[0].lease_token, None)
            await svc.heartbeat(leased[1].id, leased[1].lease_token)
            await store.jobs.expire_jobs(time.time() + 60, transitions.expire(svc.backoff))
            await store.jobs.next_run_at()
            await store.jobs.sweep_jobs(time.time() + 60)
            for status in (None, "queued"):
                for type_ in (None, "a"):
                    page = await store.jobs.list_jobs(status, type_, 2)
                    await store.jobs.list_jobs(status, type_, 2, page.next)
            await store.jobs.queue_counts()
        finally:
            svc.close()
            await store.close()
        return seen

    statements = [s for s in asyncio.run(main()) if s.lstrip().upper().startswith("SELECT")]
    with sqlite3.connect(str(tmp_path / "plans.db")) as conn:
        plans = {
            s: " / ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {s}"))
            for s in statements
            if "FROM jobs" in s
        }
    assert len(plans) >= 10, plans
    for sql, plan in plans.items():
        assert "TEMP B-TREE" not in plan, (sql, plan)
        assert all("USING" in step for step in plan.split(" / ")), (sql, plan)
        for index in ("queued", "running", "done"):
            if f"INDEXED BY jobs_{index}" in sql:
                assert f"jobs_{index}" in plan, (sql, plan)
        if "ORDER BY created_at" in sql:
            assert "SEARCH jobs USING INDEX jobs_" in plan or "jobs_created" in plan, (sql, plan)
    # A lease of some types reads each one's own range of queued jobs, never those of
    # other types (held back by a limit, or with no worker).
    by_type = [sql for sql in plans if "INDEXED BY jobs_type_queued" in sql]
    assert by_type, plans
    for sql in by_type:
        assert "SEARCH jobs USING INDEX jobs_type_queued (type=?" in plans[sql], (sql, plans[sql])


# -- unique keys --------------------------------------------------------------------------


def test_a_unique_key_gives_the_queued_or_running_job_until_it_ends(make_store):
    """While a job holding a unique key is queued or running, a submit of its type with the
    key returns it and stores nothing; another type, or the key once the job has ended,
    makes a new job."""

    async def body(store: Store, svc: JobService) -> None:
        first, created = await svc.submit("t", 1, unique_key="shop-42")
        assert created and first.unique_key == "shop-42"
        again, created = await svc.submit("t", 2, unique_key="shop-42")
        assert not created and again == first
        assert svc.deduplicated(again, created, None)
        other, created = await svc.submit("u", 3, unique_key="shop-42")
        assert created and other.id != first.id
        leased = await lease_one(svc, types=["t"])
        running, created = await svc.submit("t", 4, unique_key="shop-42")
        assert not created and running.id == first.id and running.status == "running"
        await svc.complete(first.id, leased.lease_token, "ok")
        fresh, created = await svc.submit("t", 5, unique_key="shop-42")
        assert created and fresh.id != first.id
        assert await names(store, first.id) == ["queued", "running", "succeeded"]
        counts = await store.jobs.queue_counts()
        assert counts == {"t": {"succeeded": 1, "queued": 1}, "u": {"queued": 1}}
        # A cancelled job lets go of its key too.
        await svc.cancel(fresh.id)
        after, created = await svc.submit("t", 6, unique_key="shop-42")
        assert created and after.id not in (first.id, fresh.id)

    run(make_store, body)


def test_an_idempotent_repeat_is_not_a_deduplication(make_store):
    """A submit repeated with its idempotency key gets its own job back, which is not
    deduplicated; a different idempotency key with a held unique key is."""

    async def body(store: Store, svc: JobService) -> None:
        job, created = await svc.submit("t", idempotency_key="i-1", unique_key="u")
        again, created = await svc.submit("t", idempotency_key="i-1", unique_key="u")
        assert again.id == job.id and not svc.deduplicated(again, created, "i-1")
        other, created = await svc.submit("t", idempotency_key="i-2", unique_key="u")
        assert other.id == job.id and svc.deduplicated(other, created, "i-2")

    run(make_store, body)


def test_concurrent_submits_of_one_unique_key_make_one_job(make_store):
    """Twenty submits of one type and key at once: one job is made, all get it."""

    async def body(store: Store, svc: JobService) -> None:
        answers = await asyncio.gather(*(svc.submit("t", n, unique_key="once") for n in range(20)))
        assert sum(created for _, created in answers) == 1
        assert len({job.id for job, _ in answers}) == 1
        assert await store.jobs.queue_counts() == {"t": {"queued": 1}}

    run(make_store, body)


def test_retry_while_another_job_holds_the_unique_key_is_a_conflict(make_store):
    """A failed job retried while a newer job of its type holds its unique key is refused
    with a Conflict naming that job, and stays failed; once the holder ended it retries."""

    async def body(store: Store, svc: JobService) -> None:
        old, _ = await svc.submit("t", max_attempts=1, unique_key="k")
        leased = await lease_one(svc)
        await svc.fail(old.id, leased.lease_token, "boom", retry=False)
        holder, created = await svc.submit("t", unique_key="k")
        assert created
        with pytest.raises(Conflict, match=holder.id):
            await svc.retry(old.id)
        assert (await svc.get(old.id)).status == "failed"
        assert await names(store, old.id) == ["queued", "running", "failed"]
        # A step of a batch is refused on its own; the other steps apply.
        out = await store.jobs.transition_jobs(
            [(old.id, transitions.retry, True), (holder.id, transitions.cancel, True)]
        )
        assert isinstance(out[0], Conflict) and isinstance(out[1], JobChange)
        assert (await svc.get(old.id)).status == "failed"
        again = await svc.retry(old.id)  # the holder is cancelled: the key is free
        assert again.status == "queued"
        dup, created = await svc.submit("t", unique_key="k")
        assert not created and dup.id == old.id

    run(make_store, body)


def test_a_bad_unique_key_is_refused_before_anything_is_stored(make_store):
    """An empty, overlong or unprintable unique key is InvalidBody; nothing is stored."""

    async def body(store: Store, svc: JobService) -> None:
        for bad in ("", "k" * 201, "a\nb", "\x00"):
            with pytest.raises(InvalidBody, match="unique_key"):
                await svc.submit("t", unique_key=bad)
        assert await store.jobs.queue_counts() == {}
        _job, created = await svc.submit("t", unique_key="k" * 200)
        assert created

    run(make_store, body)


def test_sqlite_opens_a_file_whose_jobs_table_lacks_the_newer_columns(tmp_path):
    """A file written before jobs had a unique key is upgraded on open: its jobs stay, and
    unique keys work on it."""
    path = tmp_path / "old.db"
    old_schema = SCHEMA.replace(",\n    unique_key TEXT,\n    grp TEXT", "")
    assert "unique_key" not in old_schema
    conn = sqlite3.connect(path)
    conn.executescript(old_schema)
    conn.close()
    url = f"sqlite:///{path}"

    async def main() -> None:
        store = open_store(url, DEFAULT)
        await store.start()
        svc = JobService(store, Hub(store.channels.cursor_key))
        try:
            job, created = await svc.submit("t", unique_key="k")
            again, created_again = await svc.submit("t", unique_key="k")
            assert created and not created_again and again.id == job.id
        finally:
            svc.close()
            await store.close()

    asyncio.run(main())


# -- queue limits -------------------------------------------------------------------------


async def leased_ids(svc: JobService, types: list[str] | None, count: int = 100) -> list[str]:
    return [job.id for job in await svc.lease(types, count, 0, 30.0)]


def test_a_concurrency_limit_holds_leases_back_until_a_running_job_ends(make_store):
    """With concurrency 2, leases take two jobs of the type and no more until one ends;
    the others stay queued and are counted as waiting on the concurrency; lifting the
    limit lets them all go."""

    async def body(store: Store, svc: JobService) -> None:
        await svc.set_limits("t", QueueLimits(concurrency=2))
        ids = [(await svc.submit("t", n))[0].id for n in range(5)]
        first = await leased_ids(svc, ["t"])
        assert first == ids[:2]
        assert await leased_ids(svc, None) == []
        waiting = (await svc.limits())["t"][1]
        assert waiting == {"concurrency": 3, "rate": 0, "group": 0}
        running = await store.jobs.get_job(first[0])
        assert running is not None
        await svc.complete(first[0], running.lease_token or "", "ok")
        assert await leased_ids(svc, ["t"]) == [ids[2]]
        assert await svc.set_limits("t", QueueLimits()) is None  # every limit null: lifted
        assert await leased_ids(svc, ["t"]) == ids[3:]
        assert await store.jobs.queue_limits() == {}

    run(make_store, body)


def test_a_group_concurrency_limit_holds_back_only_that_groups_jobs(make_store):
    """With group_concurrency 1, a lease takes one job per group, passing over the rest of
    a busy group to the jobs of other groups and those with no group."""

    async def body(store: Store, svc: JobService) -> None:
        await svc.set_limits("t", QueueLimits(group_concurrency=1))
        a1, _ = await svc.submit("t", group="tenant-a")
        a2, _ = await svc.submit("t", group="tenant-a")
        b1, _ = await svc.submit("t", group="tenant-b")
        free, _ = await svc.submit("t")
        a3, _ = await svc.submit("t", group="tenant-a")
        assert a1.group == "tenant-a"
        taken = await svc.lease(["t"], 10, 0, 30.0)
        assert [j.id for j in taken] == [a1.id, b1.id, free.id]
        assert (await svc.limits())["t"][1] == {"concurrency": 0, "rate": 0, "group": 2}
        assert await leased_ids(svc, ["t"]) == []
        await svc.fail(a1.id, taken[0].lease_token or "", "x", retry=False)
        assert await leased_ids(svc, ["t"]) == [a2.id]
        assert (await svc.limits())["t"][1]["group"] == 1  # a3 waits on a2
        assert a3.id not in await leased_ids(svc, None)

    run(make_store, body)


@pytest.mark.timeout(120)
def test_a_full_groups_backlog_never_hides_the_jobs_of_other_groups(make_store):
    """1,500 due jobs of group a ahead of one of group b, with group_concurrency 1: the
    first lease takes a's first job and b's; the next takes nothing (a is full) and, once
    a's job ends, a's next."""

    async def body(store: Store, svc: JobService) -> None:
        await svc.set_limits("t", QueueLimits(group_concurrency=1))
        a = [(await svc.submit("t", n, group="a"))[0].id for n in range(1500)]
        b, _ = await svc.submit("t", group="b")
        taken = await svc.lease(["t"], 10, 0, 30.0)
        assert [job.id for job in taken] == [a[0], b.id]
        assert await leased_ids(svc, ["t"]) == []
        await svc.complete(a[0], taken[0].lease_token or "", None)
        assert await leased_ids(svc, ["t"], 1) == [a[1]]

    run(make_store, body)


def test_one_lease_passes_a_group_filled_by_the_lease_itself(make_store):
    """A lease of 2 on 1,500 due jobs of group a (none running) and one of group b behind
    them, with group_concurrency 1: a's first job and b's."""

    async def body(store: Store, svc: JobService) -> None:
        await svc.set_limits("t", QueueLimits(group_concurrency=1))
        a = [(await svc.submit("t", n, group="a"))[0].id for n in range(1500)]
        b, _ = await svc.submit("t", group="b")
        assert await leased_ids(svc, ["t"], 2) == [a[0], b.id]

    run(make_store, body)


def test_a_rate_limit_lets_a_burst_of_limit_then_one_per_interval(make_store):
    """With 5 per second: a burst of 5 leases at once (one atomic step, one instant), then
    one per 0.2 s; the others wait on the rate. Over any span of t seconds no more than
    5 + 5t are leased (the bound checked after every lease, however slow the machine);
    after a pause of p seconds at least 5p more have come due (a bound that only grows
    with delay)."""

    async def body(store: Store, svc: JobService) -> None:
        await svc.set_limits("t", QueueLimits(rate=RateLimit(5, 1.0)))
        for n in range(20):
            await svc.submit("t", n)
        started = time.monotonic()
        taken = len(await leased_ids(svc, ["t"]))
        burst_done = time.monotonic()
        assert taken == 5

        def most() -> float:
            return 5 + 5 * (time.monotonic() - started) + 1e-3

        taken += len(await leased_ids(svc, ["t"]))
        assert taken <= most()
        waiting = (await svc.limits())["t"][1]
        # Held by the rate unless a token came due meanwhile (a slow machine).
        assert waiting["concurrency"] == 0 and waiting["group"] == 0
        assert waiting["rate"] in (0, 20 - taken)
        for pause, least in ((0.3, 6), (0.65, 8)):
            await asyncio.sleep(max(0.0, pause - (time.monotonic() - burst_done)))
            taken += len(await leased_ids(svc, ["t"]))
            assert least <= taken <= most()

    run(make_store, body)


def test_the_limits_shown_are_counted_for_every_type_and_only_those_asked(make_store):
    """Two types whose groups are full each count their own held jobs; asking for one
    type's limits answers only that type's."""

    async def body(store: Store, svc: JobService) -> None:
        for type_, held in (("a", 2), ("b", 3), ("c", 1)):
            await svc.set_limits(type_, QueueLimits(group_concurrency=1))
            for _ in range(held + 1):
                await svc.submit(type_, group="g")
            assert len(await leased_ids(svc, [type_])) == 1
        shown = await svc.limits()
        assert {t: waiting["group"] for t, (_, waiting) in shown.items()} == {
            "a": 2,
            "b": 3,
            "c": 1,
        }
        only = await svc.limits(lambda t: t == "b")
        assert list(only) == ["b"] and only["b"][1]["group"] == 3

    run(make_store, body)


def test_limits_of_one_type_leave_the_other_types_alone(make_store):
    """A lease of every type takes one job of a type limited to one running job and every
    job of the types without limits, in lease order."""

    async def body(store: Store, svc: JobService) -> None:
        await svc.set_limits("slow", QueueLimits(concurrency=1))
        slow = [(await svc.submit("slow", n))[0].id for n in range(3)]
        fast = [(await svc.submit("fast", n))[0].id for n in range(3)]
        assert await leased_ids(svc, None) == [slow[0], *fast]
        assert await leased_ids(svc, ["slow", "fast"]) == []
        # While "slow" runs all it may, the other types still go.
        more = [(await svc.submit("fast", n))[0].id for n in range(2)]
        assert await leased_ids(svc, ["slow", "fast"], 1) == more[:1]
        assert await leased_ids(svc, None) == more[1:]

    run(make_store, body)


def test_bad_queue_limits_are_refused_saying_what_to_fix(make_store, monkeypatch):
    """A rate of 0, a negative or absurd value, a bad type: InvalidBody saying what to fix,
    nothing set; past MAX_QUEUE_LIMITS types with limits, a new one is a Conflict."""

    async def body(store: Store, svc: JobService) -> None:
        bad = [
            (QueueLimits(rate=RateLimit(0, 1.0)), '"rate.limit" must be 1 to'),
            (QueueLimits(rate=RateLimit(10, 0.0)), '"rate.per" must be'),
            (QueueLimits(rate=RateLimit(10, math.inf)), '"rate.per" must be'),
            (QueueLimits(rate=RateLimit(10, math.nan)), '"rate.per" must be'),
            (QueueLimits(rate=RateLimit(10**9, 1.0)), '"rate.limit" must be 1 to'),
            (QueueLimits(concurrency=0), '"concurrency" must be 1 to'),
            (QueueLimits(group_concurrency=-3), '"group_concurrency" must be 1 to'),
        ]
        for limits, message in bad:
            with pytest.raises(InvalidBody, match=re.escape(message)):
                await svc.set_limits("t", limits)
        with pytest.raises(InvalidBody, match="not a job type"):
            await svc.set_limits("no spaces", QueueLimits(concurrency=1))
        assert await store.jobs.queue_limits() == {}
        monkeypatch.setattr("tidings.server.jobs.MAX_QUEUE_LIMITS", 2)
        await svc.set_limits("a", QueueLimits(concurrency=1))
        await svc.set_limits("b", QueueLimits(concurrency=1))
        with pytest.raises(Conflict, match="2 job types have limits"):
            await svc.set_limits("c", QueueLimits(concurrency=1))
        await svc.set_limits("b", QueueLimits(concurrency=5))  # a type that has some: fine
        await svc.set_limits("a", QueueLimits())
        await svc.set_limits("c", QueueLimits(concurrency=1))
        assert set(await store.jobs.queue_limits()) == {"b", "c"}

    run(make_store, body)


@pytest.mark.parametrize("make_store", ["sqlite", "redis"], indirect=True)
def test_a_rates_used_burst_outlives_the_store_object(make_store):
    """With 2 per hour, two leases use the burst; the next store object opened on the same
    file or Redis prefix (a restart, or another node) leases none: the bucket is stored
    with the jobs, not started full again."""

    async def first(store: Store, svc: JobService) -> None:
        await svc.set_limits("t", QueueLimits(rate=RateLimit(2, 3600.0)))
        for n in range(4):
            await svc.submit("t", n)
        assert len(await leased_ids(svc, ["t"])) == 2

    async def second(store: Store, svc: JobService) -> None:
        assert await leased_ids(svc, ["t"]) == []
        assert (await svc.limits())["t"][1]["rate"] == 2

    run(make_store, first)
    run(make_store, second)


@pytest.mark.parametrize("make_store", ["sqlite", "redis"], indirect=True)
def test_queue_limits_outlive_the_store_object(make_store):
    """Limits set through one store object are read by the next opened on the same file or
    Redis prefix (a restart, or another node)."""
    kept = QueueLimits(RateLimit(50, 2.5), 7, 3)

    async def first(store: Store, svc: JobService) -> None:
        assert await svc.set_limits("t", kept) == kept

    async def second(store: Store, svc: JobService) -> None:
        assert await store.jobs.queue_limits() == {"t": kept}

    run(make_store, first)
    run(make_store, second)


# -- dependencies -------------------------------------------------------------------------


async def finish(svc: JobService, job_id: str, result: Any = None, ok: bool = True) -> Job:
    """Lease job `job_id` (the only due one of its type) and complete or fail it for good;
    then wait for its dependents to be settled."""
    job = await svc.get(job_id)
    leased = await lease_one(svc, types=[job.type])
    assert leased.id == job_id
    token = leased.lease_token or ""
    if ok:
        done = await svc.complete(job_id, token, result)
    else:
        done = await svc.fail(job_id, token, {"message": "boom"}, retry=False)
    await svc.settled()
    return done


def test_a_job_after_parents_waits_until_they_all_succeed(make_store):
    """A job submitted after two parents is stored `waiting` (its first event), is never
    leased while it waits, is counted and listed as waiting, and is queued once the last
    parent succeeded; its lease shows its parents' results."""

    async def body(store: Store, svc: JobService) -> None:
        a, _ = await svc.submit("p", "a")
        b, _ = await svc.submit("p", "b")
        c, created = await svc.submit("c", after=[a.id, b.id, a.id])
        assert created and c.status == "waiting" and c.after == [a.id, b.id]
        assert await names(store, c.id) == ["waiting"]
        assert (await store.jobs.queue_counts())["c"] == {"waiting": 1}
        assert [j.id for j in (await store.jobs.list_jobs("waiting", None, 10)).jobs] == [c.id]
        assert sorted(await store.jobs.dependents(a.id)) == [c.id]
        assert await svc.lease(["c"], 1, 0, 30.0) == []
        await finish(svc, a.id, {"from": "a"})
        assert (await svc.get(c.id)).status == "waiting"
        await finish(svc, b.id, ["b"])
        assert (await svc.get(c.id)).status == "queued"
        assert await names(store, c.id) == ["waiting", "queued"]
        leased = await lease_one(svc, types=["c"])
        wire = leased.lease_to_wire(await svc.parents([leased]))
        assert [(p.id, p.type, p.result) for p in wire.parents or []] == [
            (a.id, "p", {"from": "a"}),
            (b.id, "p", ["b"]),
        ]

    run(make_store, body)


def test_a_parent_that_fails_cancels_its_children_and_theirs(make_store):
    """a → b → c: a failing ends b cancelled naming a, and c cancelled naming b; the job
    beside them (after a succeeded parent) is queued."""

    async def body(store: Store, svc: JobService) -> None:
        a, _ = await svc.submit("a")
        ok, _ = await svc.submit("ok")
        b, _ = await svc.submit("b", after=[a.id])
        c, _ = await svc.submit("c", after=[b.id])
        d, _ = await svc.submit("d", after=[ok.id])
        await finish(svc, ok.id)
        await finish(svc, a.id, ok=False)
        b_now, c_now = await svc.get(b.id), await svc.get(c.id)
        assert b_now.status == "cancelled" and b_now.finished_at is not None
        assert b_now.error["type"] == "ParentFailed" and b_now.error["parent"] == a.id
        assert a.id in b_now.error["message"]
        assert c_now.status == "cancelled" and c_now.error["type"] == "ParentCancelled"
        assert c_now.error["parent"] == b.id
        assert await names(store, c.id) == ["waiting", "cancelled"]
        assert (await svc.get(d.id)).status == "queued"

    run(make_store, body)


def test_a_submit_after_parents_that_ended_is_queued_or_cancelled_at_once(make_store):
    """After parents that all succeeded, a job is queued at once; after one that failed,
    it is stored cancelled with the reason (and its own event says so)."""

    async def body(store: Store, svc: JobService) -> None:
        good, _ = await svc.submit("p")
        bad, _ = await svc.submit("q")
        await finish(svc, good.id, 1)
        await finish(svc, bad.id, ok=False)
        ready, _ = await svc.submit("c", after=[good.id])
        assert ready.status == "queued" and await names(store, ready.id) == ["queued"]
        doomed, _ = await svc.submit("c", after=[good.id, bad.id])
        assert doomed.status == "cancelled" and doomed.error["parent"] == bad.id
        assert await names(store, doomed.id) == ["cancelled"]

    run(make_store, body)


def test_a_bad_after_is_refused_naming_what_to_fix_and_stores_nothing(make_store):
    """An unknown parent, one the submitter may not see, an empty list or more than
    MAX_AFTER parents: InvalidBody saying so, and no job stored."""

    async def body(store: Store, svc: JobService) -> None:
        parent, _ = await svc.submit("p")
        with pytest.raises(InvalidBody, match="no job 'nope'"):
            await svc.submit("c", after=[parent.id, "nope"])
        with pytest.raises(InvalidBody, match=f"no job '{parent.id}'"):
            await svc.submit("c", after=[parent.id], visible=lambda job: False)
        with pytest.raises(InvalidBody, match="1 to 100 job ids"):
            await svc.submit("c", after=[])
        with pytest.raises(InvalidBody, match="1 to 100 job ids"):
            await svc.submit("c", after=[parent.id] * 101)
        assert await store.jobs.queue_counts() == {"p": {"queued": 1}}

    run(make_store, body)


def test_cancelling_a_waiting_job_cancels_its_children_and_a_retry_waits_again(make_store):
    """A waiting job cancels at once, and its own waiting children follow; retried, the
    child waits again while its parent runs, and is queued when the parent succeeds. A
    retry after a failed parent ends cancelled again."""

    async def body(store: Store, svc: JobService) -> None:
        parent, _ = await svc.submit("p")
        child, _ = await svc.submit("c", after=[parent.id])
        grandchild, _ = await svc.submit("g", after=[child.id])
        cancelled = await svc.cancel(child.id)
        await svc.settled()
        assert cancelled.status == "cancelled"
        gc = await svc.get(grandchild.id)
        assert gc.status == "cancelled" and gc.error["parent"] == child.id
        again = await svc.retry(child.id)
        assert again.status == "waiting" and again.attempt == 0
        await finish(svc, parent.id, "done")
        assert (await svc.get(child.id)).status == "queued"
        # A parent that failed: the retried child is cancelled again, naming it.
        bad, _ = await svc.submit("q")
        other, _ = await svc.submit("c2", after=[bad.id])
        await finish(svc, bad.id, ok=False)
        assert (await svc.get(other.id)).status == "cancelled"
        retried = await svc.retry(other.id)
        assert retried.status == "cancelled" and retried.error["parent"] == bad.id

    run(make_store, body)


def test_a_waiting_job_holds_its_unique_key(make_store):
    """A waiting job holds its unique key: a second submit is deduplicated to it; once it
    is cancelled, the key is free."""

    async def body(store: Store, svc: JobService) -> None:
        parent, _ = await svc.submit("p")
        first, created = await svc.submit("c", unique_key="k", after=[parent.id])
        assert created and first.status == "waiting"
        again, created = await svc.submit("c", unique_key="k")
        assert not created and again.id == first.id
        await svc.cancel(first.id)
        fresh, created = await svc.submit("c", unique_key="k")
        assert created and fresh.id != first.id
        with pytest.raises(Conflict, match="holds unique key"):
            await svc.retry(first.id)

    run(make_store, body)


def test_children_submitted_while_their_parents_end_are_all_settled(make_store):
    """Twenty children, each submitted while its parent completes: whichever comes first,
    every child ends queued (no child is left waiting on a parent that ended)."""

    async def body(store: Store, svc: JobService) -> None:
        parents = [(await svc.submit("p", i))[0] for i in range(20)]
        leased = {j.id: j for j in await svc.lease(["p"], 20, 0, 30.0)}
        assert len(leased) == 20

        async def pair(parent: Job) -> str:
            done = svc.complete(parent.id, leased[parent.id].lease_token or "", parent.payload)
            child = svc.submit("c", after=[parent.id])
            _, (submitted, _) = await asyncio.gather(done, child)
            return submitted.id

        children = await asyncio.gather(*(pair(p) for p in parents))
        await svc.settled()
        got = await store.jobs.get_jobs(children)
        assert {job.status for job in got.values()} == {"queued"}

    run(make_store, body)


def test_repair_settles_waiting_jobs_whose_parents_ended_unseen(make_store):
    """A parent that ends without the service's follow-up (a node stopped right after the
    change) leaves its child waiting until `repair` settles it."""

    async def body(store: Store, svc: JobService) -> None:
        ok, _ = await svc.submit("p")
        bad, _ = await svc.submit("q")
        queued_child, _ = await svc.submit("c", after=[ok.id])
        cancelled_child, _ = await svc.submit("c", after=[bad.id])
        for parent, done in ((ok, True), (bad, False)):
            leased = await lease_one(svc, types=[parent.type])
            token = leased.lease_token or ""
            step = (
                transitions.complete(token, 1)
                if done
                else transitions.fail(token, {"message": "x"}, False, svc.backoff)
            )
            change = await store.jobs.transition_job(parent.id, step)  # no follow-up
            assert change.dependents
        assert (await svc.get(queued_child.id)).status == "waiting"
        await svc.repair()
        assert (await svc.get(queued_child.id)).status == "queued"
        assert (await svc.get(cancelled_child.id)).status == "cancelled"
        # A change that does not end a job says nothing of dependents.
        leased = await lease_one(svc, types=["c"])
        assert leased.id == queued_child.id

    run(make_store, body)


async def end_unseen(store: Store, svc: JobService, job_id: str, ok: bool = True) -> JobChange:
    """Lease job `job_id` and end it through the store alone: the change, without the
    service's follow-up (as when a node stops right after it)."""
    job = await svc.get(job_id)
    leased = await lease_one(svc, types=[job.type])
    assert leased.id == job_id
    token = leased.lease_token or ""
    step = (
        transitions.complete(token, 1)
        if ok
        else transitions.fail(token, {"message": "x"}, False, svc.backoff)
    )
    return await store.jobs.transition_job(job_id, step)


def test_a_parent_ending_marks_its_dependents_in_the_same_step_until_settled(make_store):
    """A change that ends a job with dependents writes its settle mark (stamped with the
    job's updated_at) in the same store step; a clear with another stamp leaves it, and
    the repair settles the children and clears it. A job that ends without dependents,
    and a child submitted while its parent runs, write none."""

    async def body(store: Store, svc: JobService) -> None:
        parent, _ = await svc.submit("p")
        lonely, _ = await svc.submit("l")
        child, _ = await svc.submit("c", after=[parent.id])
        assert await store.jobs.settle_marks(10) == []
        change = await end_unseen(store, svc, lonely.id)
        assert not change.dependents and change.marked is None
        change = await end_unseen(store, svc, parent.id)
        assert change.dependents and change.marked == change.job.updated_at
        assert await store.jobs.settle_marks(10) == [(parent.id, change.job.updated_at)]
        await store.jobs.clear_settle_marks([(parent.id, change.job.updated_at + 1)])
        assert await store.jobs.settle_marks(10) == [(parent.id, change.job.updated_at)]
        assert (await svc.get(child.id)).status == "waiting"
        await svc.repair()
        assert (await svc.get(child.id)).status == "queued"
        assert await store.jobs.settle_marks(10) == []
        # The follow-up clears what the change marked.
        other, _ = await svc.submit("p")
        kid, _ = await svc.submit("c", after=[other.id])
        await finish(svc, other.id)
        assert (await svc.get(kid.id)).status == "queued"
        assert await store.jobs.settle_marks(10) == []

    run(make_store, body)


def test_a_child_written_after_its_parent_ended_is_marked_and_repaired(make_store):
    """A child stored waiting (by the store alone, as a submit whose node stops before
    its own settle) after a parent that has ended is marked in the same step; the repair
    queues it, or cancels it after a failed parent, and clears the marks."""

    async def body(store: Store, svc: JobService) -> None:
        good, _ = await svc.submit("p")
        bad, _ = await svc.submit("q")
        await finish(svc, good.id)
        await finish(svc, bad.id, ok=False)
        now = time.time()
        kids = [
            Job(
                id=new_job_id(),
                type="c",
                created_at=now,
                updated_at=now,
                run_at=now,
                after=after,
                status="waiting",
            )
            for after in ([good.id], [good.id, bad.id])
        ]
        first, created = await store.jobs.submit_job(kids[0], "waiting")
        assert created and first.marked == now
        [second] = await store.jobs.submit_jobs([kids[1]], ["waiting"])
        assert second.marked == now
        assert sorted(await store.jobs.settle_marks(10)) == sorted((k.id, now) for k in kids)
        await svc.repair()
        assert (await svc.get(kids[0].id)).status == "queued"
        gone = await svc.get(kids[1].id)
        assert gone.status == "cancelled" and gone.error["parent"] == bad.id
        assert await store.jobs.settle_marks(10) == []
        # So is a retry (the store alone) that makes it wait again after that parent.
        again = await store.jobs.transition_job(kids[1].id, transitions.retry)
        assert again.job.status == "waiting" and again.marked == again.job.updated_at
        assert await store.jobs.settle_marks(10) == [(kids[1].id, again.job.updated_at)]
        await svc.repair()
        assert (await svc.get(kids[1].id)).status == "cancelled"
        assert await store.jobs.settle_marks(10) == []

    run(make_store, body)


def test_one_repair_pass_finds_a_lost_follow_up_behind_a_thousand_waiting_jobs(make_store):
    """A lost follow-up is repaired in one pass however many jobs wait (1,000 newer ones,
    waiting on a running job, here); once it is done no mark is left, so a pass reads
    nothing but the empty marks."""

    async def body(store: Store, svc: JobService) -> None:
        parent, _ = await svc.submit("p")
        child, _ = await svc.submit("c", after=[parent.id])
        blocker, _ = await svc.submit("b")
        waiting = await svc.submit_batch(
            [spec(f"w{n}", "w", after=[blocker.id]) for n in range(1000)]
        )
        assert {job.status for job in waiting} == {"waiting"}
        assert await store.jobs.settle_marks(10) == []
        await end_unseen(store, svc, parent.id)
        await svc.repair()
        assert (await svc.get(child.id)).status == "queued"
        assert await store.jobs.settle_marks(10) == []
        assert (await store.jobs.queue_counts())["w"] == {"waiting": 1000}

    run(make_store, body)


def test_a_child_of_a_parent_swept_before_its_write_indexes_nothing(make_store):
    """A parent swept between the submit's check and the child's write (the store is
    called directly here): the child's write files it under no gone parent (nothing
    would ever delete that), marks it, and the repair cancels it (ParentGone); so on a
    batch."""

    async def body(store: Store, svc: JobService) -> None:
        parents = [(await svc.submit("p"))[0] for _ in range(2)]
        for parent in parents:
            await finish(svc, parent.id)
        await store.jobs.sweep_jobs(time.time() + 60)
        now = time.time()
        one = Job(
            id=new_job_id(),
            type="c",
            created_at=now,
            updated_at=now,
            run_at=now,
            after=[parents[0].id],
            status="waiting",
        )
        many = [
            Job(
                id=new_job_id(),
                type="c",
                created_at=now,
                updated_at=now,
                run_at=now,
                after=[parents[1].id],
                status="waiting",
            ),
        ]
        change, _ = await store.jobs.submit_job(one, "waiting")
        assert change.marked is not None
        [batched] = await store.jobs.submit_jobs(many, ["waiting"])
        assert batched.marked is not None
        for parent in parents:
            assert await store.jobs.dependents(parent.id) == []
        await svc.repair()
        for job_id in (one.id, many[0].id):
            got = await svc.get(job_id)
            assert got.status == "cancelled" and got.error["type"] == "ParentGone"
        assert await store.jobs.settle_marks(10) == []
        await store.jobs.sweep_jobs(time.time() + 60)
        for parent in parents:
            assert await store.jobs.dependents(parent.id) == []

    run(make_store, body)


def test_a_batch_whose_write_fails_midway_stores_none_of_it(make_store):
    """A batch whose third job's id is taken (a constraint the store meets only while
    writing: SQLite's primary key, within the batch's savepoint) is refused whole: none
    of its jobs, events or dependents stored; a write committed beside it is kept, and
    the batch's jobs can be stored afterwards with their channels from the start."""

    async def body(store: Store, svc: JobService) -> None:
        taken, _ = await svc.submit("t")
        parent, _ = await svc.submit("p")
        now = time.time()
        fresh = [
            Job(
                id=new_job_id(),
                type="u",
                created_at=now,
                updated_at=now,
                run_at=now,
                after=[parent.id],
                status="waiting",
            )
            for _ in range(3)
        ]
        clash = Job(id=taken.id, type="u", created_at=now, updated_at=now, run_at=now)
        beside = Job(id=new_job_id(), type="v", created_at=now, updated_at=now, run_at=now)
        refused, (kept, _) = await asyncio.gather(
            store.jobs.submit_jobs([*fresh[:2], clash, fresh[2]], ["waiting"] * 3 + ["queued"]),
            store.jobs.submit_job(beside, "queued"),
            return_exceptions=True,
        )
        assert isinstance(refused, Conflict), refused
        assert "nothing of the batch was made" in refused.message
        assert kept.job == beside
        assert await store.jobs.get_jobs([j.id for j in fresh]) == {}
        assert await store.jobs.dependents(parent.id) == []
        assert await store.jobs.get_job(taken.id) == taken
        assert await store.jobs.queue_counts() == {
            "t": {"queued": 1},
            "p": {"queued": 1},
            "v": {"queued": 1},
        }
        changes = await store.jobs.submit_jobs(fresh, ["waiting"] * 3)
        assert [c.job for c in changes] == fresh
        assert [await names(store, j.id) for j in fresh] == [["waiting"]] * 3
        assert sorted(await store.jobs.dependents(parent.id)) == sorted(j.id for j in fresh)

    run(make_store, body)


def test_sweeping_a_parent_forgets_its_dependents(make_store):
    """A swept parent's dependents are forgotten with it."""

    async def body(store: Store, svc: JobService) -> None:
        parent, _ = await svc.submit("p")
        child, _ = await svc.submit("c", after=[parent.id])
        await finish(svc, parent.id)
        await finish(svc, child.id)
        assert await store.jobs.dependents(parent.id) == [child.id]
        await store.jobs.sweep_jobs(time.time() + 60)
        assert await store.jobs.dependents(parent.id) == []
        assert await store.jobs.get_jobs([parent.id, child.id]) == {}

    run(make_store, body)


# -- batches ------------------------------------------------------------------------------


def spec(ref: str, type_: str = "t", **fields: Any) -> BatchJob:
    return BatchJob(ref=ref, type=type_, **fields)


def test_a_batch_makes_a_graph_whose_jobs_wait_for_their_parents(make_store):
    """Fan-out and fan-in in one batch, after an existing job: the roots are queued (or
    waiting on the existing job), the callback waits for all three, and runs last."""

    async def body(store: Store, svc: JobService) -> None:
        before, _ = await svc.submit("pre")
        jobs = await svc.submit_batch(
            [
                spec("cb", "cb", after=["a", "b", "c"]),
                spec("a", payload=1),
                spec("b", payload=2, after=[before.id]),
                spec("c", payload=3, priority=5),
            ]
        )
        cb, a, b, c = jobs
        assert [j.status for j in jobs] == ["waiting", "queued", "waiting", "queued"]
        assert cb.after == [a.id, b.id, c.id] and b.after == [before.id]
        assert await names(store, cb.id) == ["waiting"]
        assert (await store.jobs.queue_counts())["t"] == {"queued": 2, "waiting": 1}
        await finish(svc, before.id)
        assert (await svc.get(b.id)).status == "queued"
        for job in (c, a, b):
            await finish(svc, job.id, job.payload * 10)
        assert (await svc.get(cb.id)).status == "queued"
        leased = await lease_one(svc, types=["cb"])
        wire = leased.lease_to_wire(await svc.parents([leased]))
        assert [p.result for p in wire.parents or []] == [10, 20, 30]

    run(make_store, body)


def test_a_batch_child_of_a_failed_job_is_cancelled_with_its_own_children(make_store):
    """In a batch, a job after an existing failed job is made cancelled, and so is the
    batch's job after it."""

    async def body(store: Store, svc: JobService) -> None:
        bad, _ = await svc.submit("q")
        await finish(svc, bad.id, ok=False)
        x, y = await svc.submit_batch([spec("y", after=["x"]), spec("x", after=[bad.id])][::-1])
        assert x.status == "cancelled" and x.error["parent"] == bad.id
        assert y.status == "cancelled" and y.error["parent"] == x.id

    run(make_store, body)


@pytest.mark.parametrize(
    ("specs", "says"),
    [
        ([spec("a", after=["b"]), spec("b", after=["c"]), spec("c", after=["a"])], "cycle"),
        ([spec("a", after=["a"])], "cycle: 'a' -> 'a'"),
        ([spec("a"), spec("b", after=["nope"])], "'nope' is neither a ref"),
        ([spec("a"), spec("a")], "names jobs[0] already"),
        ([spec("a", unique_key="k"), spec("b", unique_key="k")], "jobs[0]'s too"),
        ([spec("a"), spec("b", max_attempts=0)], "jobs[1] ('b'): \"max_attempts\""),
        ([spec("")], '"ref" must be 1-200'),
        ([], "1 to 1000 jobs"),
    ],
)
def test_a_bad_batch_is_refused_saying_what_to_fix_and_makes_nothing(make_store, specs, says):
    async def body(store: Store, svc: JobService) -> None:
        with pytest.raises(InvalidBody) as refused:
            await svc.submit_batch(specs)
        assert says in refused.value.message
        assert await store.jobs.queue_counts() == {}

    run(make_store, body)


def test_a_batch_names_its_cycle(make_store):
    async def body(store: Store, svc: JobService) -> None:
        with pytest.raises(InvalidBody, match="cycle: 'b' -> 'c' -> 'b'"):
            await svc.submit_batch([spec("a"), spec("b", after=["a", "c"]), spec("c", after=["b"])])

    run(make_store, body)


def test_submit_jobs_stores_all_or_nothing(make_store):
    """A batch whose last job would take a unique key an existing job holds is refused
    whole (Conflict naming the holder): none of its jobs, events or dependents stored."""

    async def body(store: Store, svc: JobService) -> None:
        holder, _ = await svc.submit("t", unique_key="k")
        with pytest.raises(Conflict, match=holder.id):
            await svc.submit_batch(
                [spec("a", "u"), spec("b", "u", after=["a", holder.id]), spec("c", unique_key="k")]
            )
        assert await store.jobs.queue_counts() == {"t": {"queued": 1}}
        assert (await store.jobs.list_jobs(None, None, 10)).jobs == [holder]
        assert await store.jobs.dependents(holder.id) == []
        assert (await store.jobs.list_jobs("waiting", None, 10)).jobs == []
        # The store's own batch: the same.
        now = time.time()
        fresh = [Job(id=new_job_id(), type="u", created_at=now, run_at=now) for _ in range(3)]
        clash = Job(id=new_job_id(), type="t", unique_key="k", created_at=now, run_at=now)
        with pytest.raises(Conflict):
            await store.jobs.submit_jobs([*fresh, clash], ["queued"] * 4)
        assert await store.jobs.get_jobs([j.id for j in fresh]) == {}
        changes = await store.jobs.submit_jobs(fresh, ["queued"] * 3)
        assert [c.job for c in changes] == fresh
        assert [await names(store, j.id) for j in fresh] == [["queued"]] * 3

    run(make_store, body)


def test_sqlite_reopen_keeps_the_dependents_of_a_job(tmp_path):
    """Reopened, a SQLite file still knows the jobs submitted after a job: its end
    settles them."""
    path = str(tmp_path / "deps.db")

    async def first() -> tuple[str, str]:
        store = SQLiteStore(path, DEFAULT)
        await store.start()
        svc = JobService(store, Hub(store.channels.cursor_key))
        try:
            parent, _ = await svc.submit("p")
            child, _ = await svc.submit("c", after=[parent.id])
            return parent.id, child.id
        finally:
            svc.close()
            await store.close()

    async def second(parent_id: str, child_id: str) -> str:
        store = SQLiteStore(path, DEFAULT)
        await store.start()
        svc = JobService(store, Hub(store.channels.cursor_key))
        try:
            await finish(svc, parent_id)
            return (await svc.get(child_id)).status
        finally:
            svc.close()
            await store.close()

    parent_id, child_id = asyncio.run(first())
    assert asyncio.run(second(parent_id, child_id)) == "queued"
