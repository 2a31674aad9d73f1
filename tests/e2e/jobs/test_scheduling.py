"""Which job a lease gets, and when: one job per idempotency key, the highest priority
first, a delayed job not before its delay, and a parked lease woken as soon as a job is
due."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.e2e.jobs.helpers import (
    complete,
    lease,
    lease_one,
    submit,
)


@pytest.mark.timeout(30)
def test_same_idempotency_key_twice_gives_one_job(http, jtype):
    """A repeated submit with the same Idempotency-Key returns the first job; one is listed."""
    key = f"upload-{uuid.uuid4().hex}"
    r1 = http.post("/v1/jobs", json={"type": jtype, "payload": 1}, headers={"Idempotency-Key": key})
    r2 = http.post("/v1/jobs", json={"type": jtype, "payload": 2}, headers={"Idempotency-Key": key})
    assert r1.status_code == 202, r1.text
    assert r2.status_code == 202, r2.text
    assert r2.json()["id"] == r1.json()["id"]
    assert r2.headers["location"] == r1.headers["location"]
    assert r2.json()["payload"] == 1
    listed = http.get("/v1/jobs", params={"type": jtype}).json()["jobs"]
    assert [j["id"] for j in listed] == [r1.json()["id"]]
    other = http.post("/v1/jobs", json={"type": jtype}, headers={"Idempotency-Key": key + "-b"})
    assert other.json()["id"] != r1.json()["id"]


@pytest.mark.timeout(30)
def test_higher_priority_is_leased_first(http, jtype):
    """Among ready jobs, the highest priority is leased first, then the oldest."""
    low = submit(http, jtype, "low")
    high = submit(http, jtype, "high", priority=10)
    mid = submit(http, jtype, "mid", priority=5)
    neg = submit(http, jtype, "neg", priority=-3)
    low2 = submit(http, jtype, "low2")
    assert [j["payload"] for j in lease(http, jtype, max_=10)] == [
        "high", "mid", "low", "low2", "neg",
    ]  # fmt: skip
    one_by_one = [submit(http, jtype, p, priority=n) for p, n in (("a", 1), ("b", 3), ("c", 2))]
    assert [lease_one(http, jtype)["payload"] for _ in one_by_one] == ["b", "c", "a"]
    assert {low["id"], high["id"], mid["id"], neg["id"], low2["id"]}


@pytest.mark.timeout(30)
def test_delayed_job_is_not_leased_before_its_delay(http, jtype):
    """A job submitted with delay D is not leased before D; a waiting lease gets it after."""
    started = time.monotonic()
    job = submit(http, jtype, "later", delay=1.5)
    assert job["status"] == "queued"
    assert lease(http, jtype, wait=0) == []
    got = lease_one(http, jtype, wait=6)
    assert time.monotonic() - started >= 1.4
    assert got["id"] == job["id"]
    # A ready job of lower priority does not wait behind a delayed one.
    late = submit(http, jtype, "late", delay=30, priority=9)
    now = submit(http, jtype, "now")
    assert [j["id"] for j in lease(http, jtype, max_=5, wait=0)] == [now["id"]]
    assert http.post(f"/v1/jobs/{late['id']}/cancel").json()["status"] == "cancelled"


@pytest.mark.timeout(60)
def test_parked_lease_gets_a_delayed_job_as_soon_as_it_is_due(http, jtype):
    """A lease parked on an empty queue is handed a delayed job when its delay ends, not
    seconds later, every time.

    Regression: the wake-up armed for the job's `run_at` (an event-loop timer, millisecond
    resolution under uvloop) could fire a hair before `run_at` by the wall clock; the
    woken lease found nothing due and slept on until its 5 s re-check.
    """
    for i in range(25):  # the race was lost about one time in four
        started = time.monotonic()
        job = submit(http, jtype, i, delay=0.1)
        got = lease_one(http, jtype, wait=10)
        took = time.monotonic() - started
        assert got["id"] == job["id"]
        assert 0.09 <= took < 1.1, f"round {i}: a job due after 0.1 s was leased after {took:.2f}s"


@pytest.mark.timeout(60)
def test_parked_lease_gets_a_requeued_job_soon_after_its_lease_ends(http, jtype):
    """A job whose lease ran out goes to a lease already parked for it within the expiry
    sweep (0.25 s) and the retry backoff (0.05 s here) — not at the parked lease's re-check.

    Regression: as for delays, the wake-up for the requeued job's `run_at` could fire just
    before it, leaving the parked lease asleep for 5 s.
    """
    for i in range(20):  # the race was lost about one time in four
        job = submit(http, jtype, i)
        lease_one(http, jtype, seconds=0.2)
        started = time.monotonic()
        again = lease_one(http, jtype, wait=10)
        took = time.monotonic() - started
        assert again["id"] == job["id"]
        assert again["attempt"] == 2
        assert took < 1.2, (
            f"round {i}: requeued after a 0.2 s lease, leased again after {took:.2f}s"
        )
        assert complete(http, job["id"], again["lease_token"], i).status_code == 200
