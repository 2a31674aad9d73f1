"""Schedules across restarts and nodes: after downtime a schedule catches up with one
firing (a real SQLite file, the server stopped and started again), and two server
processes sharing one private redis-server fire each slot exactly once."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tidings.protocol.codecs import parse_time
from tidings.protocol.schedules import slot_of_job_id
from tidings.server.constants import SCHEDULE_GRACE


def jobs_of(base: str, type_: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{base}/v1/jobs", params={"type": type_, "limit": 1000}, timeout=10)
    assert r.status_code == 200, r.text
    jobs: list[dict[str, Any]] = r.json()["jobs"]
    return jobs


def slot(job: dict[str, Any]) -> float:
    named = slot_of_job_id(job["id"])
    assert named is not None, job["id"]
    return named[1]


def firings(base: str) -> int:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    m = re.search(r"^tidings_schedule_firings_total ([0-9.e+]+)$", text, re.MULTILINE)
    assert m is not None, text[:2000]
    return int(float(m.group(1)))


@pytest.mark.timeout(90)
def test_after_downtime_a_schedule_fires_its_latest_missed_slot_once_then_goes_on(
    tidings_server: ServerFactory, tmp_path
) -> None:
    srv = tidings_server(store=f"sqlite:///{tmp_path / 'sched.db'}")
    type_ = f"t.{uuid.uuid4().hex[:8]}"
    r = httpx.put(f"{srv.url}/v1/schedules/beat", json={"type": type_, "every": 2}, timeout=10)
    assert r.status_code == 201, r.text
    first = parse_time(r.json()["next_run_at"])
    srv.stop()
    stopped = time.time()
    # No server at all until every slot missed is more than the grace late: a downtime.
    time.sleep(max(0.0, first + 2 + SCHEDULE_GRACE + 2.2 - time.time()))
    restarted = time.time()
    srv.start()
    ready = time.time()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        jobs = jobs_of(srv.url, type_)
        if any(slot(j) > restarted for j in jobs):
            break
        time.sleep(0.2)
    made = {slot(j): parse_time(j["created_at"]) for j in jobs}
    fired = sorted(made)
    assert len(fired) == len(jobs)
    assert [s for s in fired if s <= stopped] in ([], [first])  # a slot before the stop
    after_stop = [s for s in fired if s > stopped]
    # The first firing after the restart is the catch-up: the latest slot when the
    # scheduler first looked (after the restart, however long the start and the firing
    # took); then one every 2 s.
    latest = after_stop[0]
    assert made[latest] >= restarted, (fired, made, stopped, restarted)
    # Within one period of the server being up: the start itself may take seconds.
    assert ready > latest - 2, (fired, made, stopped, restarted, ready)
    assert after_stop == [latest + 2 * i for i in range(len(after_stop))]
    # The slots it missed before that were not fired: one catch-up for the downtime.
    missed = [first + 2 * k for k in range(30) if stopped < first + 2 * k < latest]
    fired_before_stop = first in made and first <= stopped
    assert len(missed) >= (1 if fired_before_stop else 2)
    shown = httpx.get(f"{srv.url}/v1/schedules/beat", timeout=10).json()
    assert parse_time(shown["last_run_at"]) == fired[-1]


@pytest.mark.timeout(60)
def test_two_nodes_sharing_redis_fire_each_slot_exactly_once(
    tidings_server: ServerFactory, redis_url: str
) -> None:
    a, b = tidings_server(store=redis_url), tidings_server(store=redis_url)
    type_ = f"t.{uuid.uuid4().hex[:8]}"
    r = httpx.put(f"{a.url}/v1/schedules/tick", json={"type": type_, "every": 1}, timeout=10)
    assert r.status_code == 201, r.text
    first = parse_time(r.json()["next_run_at"])
    # Until five slots are fired, however loaded the machine.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(jobs_of(b.url, type_)) < 5:
        time.sleep(0.2)
    assert httpx.delete(f"{b.url}/v1/schedules/tick", timeout=10).status_code == 204
    # A firing that read the schedule before the delete ends within a moment.
    time.sleep(1.0)
    fired = sorted(slot(j) for j in jobs_of(b.url, type_))
    # Every slot from the first on, none twice, none missed.
    assert fired == [first + i for i in range(len(fired))]
    assert len(fired) >= 5
    # Each slot's job was made by one node: the two nodes' firings add up to the jobs (but
    # the last, when the delete came between its submit and its advance), and each job's
    # channel holds one `queued` event (a second write would add another).
    assert firings(a.url) + firings(b.url) in (len(fired), len(fired) - 1)
    for job in jobs_of(a.url, type_):
        events = httpx.get(
            f"{a.url}/v1/channels/job.{job['id']}/messages", params={"after": "0"}, timeout=10
        ).json()["messages"]
        assert [e["event"] for e in events] == ["queued"]
