"""Schedules end to end, on every store: put, read, list, replace, delete; refusals that
say what to fix; and a schedule every second firing jobs whose ids name it and the slot."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tidings.protocol.codecs import parse_time
from tidings.protocol.schedules import slot_of_job_id
from tidings.server.constants import SCHEDULE_GRACE

pytestmark = pytest.mark.timeout(30)


def sname() -> str:
    return f"s.{uuid.uuid4().hex[:12]}"


def put(http: httpx.Client, name: str, body: dict[str, Any], status: int) -> dict[str, Any]:
    r = http.put(f"/v1/schedules/{name}", json=body)
    assert r.status_code == status, r.text
    answer: dict[str, Any] = r.json()
    return answer


def test_a_schedule_is_created_read_listed_replaced_and_deleted(http, jtype):
    name = sname()
    body = {"type": jtype, "cron": "0 3 * * *", "timezone": "Europe/Paris", "payload": {"a": 1}}
    made = put(http, name, body, 201)
    assert made["name"] == name
    assert (made["cron"], made["timezone"], made["every"]) == ("0 3 * * *", "Europe/Paris", None)
    assert made["payload"] == {"a": 1}
    assert made["catch_up"] == "latest"
    assert made["last_run_at"] is None
    assert made["last_job_id"] is None
    # The next 03:00 in Paris is 01:00 or 02:00 UTC, within a day.
    next_at = parse_time(made["next_run_at"])
    assert 0 < next_at - time.time() <= 86_400
    assert time.gmtime(next_at).tm_hour in (1, 2)
    assert http.get(f"/v1/schedules/{name}").json() == made
    listed = http.get("/v1/schedules", params={"limit": 1000}).json()
    assert name in [s["name"] for s in listed["schedules"]]
    replaced = put(http, name, {"type": jtype, "every": 3600, "priority": 7}, 200)
    assert (replaced["every"], replaced["cron"], replaced["timezone"]) == (3600, None, None)
    assert replaced["priority"] == 7
    assert replaced["created_at"] == made["created_at"]
    assert replaced["updated_at"] > made["updated_at"]
    assert http.delete(f"/v1/schedules/{name}").status_code == 204
    assert http.get(f"/v1/schedules/{name}").status_code == 404
    assert http.delete(f"/v1/schedules/{name}").status_code == 404


def test_the_listing_pages_by_name(http, jtype):
    names = sorted(f"p.{jtype}.{i}" for i in range(3))
    for n in names:
        put(http, n, {"type": jtype, "every": 3600}, 201)
    try:
        first = http.get("/v1/schedules", params={"after": f"p.{jtype}", "limit": 2}).json()
        assert [s["name"] for s in first["schedules"]] == names[:2]
        assert first["next"] == names[1]
        rest = http.get("/v1/schedules", params={"after": first["next"], "limit": 2}).json()
        assert [s["name"] for s in rest["schedules"]][:1] == names[2:]
    finally:
        for n in names:
            http.delete(f"/v1/schedules/{n}")


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"cron": "*/5 * * *"}, "five fields"),
        ({"cron": "99 * * * *"}, "not a cron expression"),
        ({"cron": "0 0 30 2 *"}, "never fires"),
        ({"cron": "*/5 * * * *", "timezone": "Europe/Atlantis"}, "IANA"),
        ({}, "exactly one"),
        ({"cron": "*/5 * * * *", "every": 60}, "exactly one"),
        ({"every": 0}, "every"),
        ({"every": -5}, "every"),
        ({"every": 1.5}, "every"),
        ({"every": 60, "catch_up": "everything"}, "catch_up"),
        ({"every": 60, "bogus": 1}, "bogus"),
    ],
)
def test_a_bad_schedule_is_422_saying_what_to_fix_and_nothing_is_stored(http, jtype, body, says):
    name = sname()
    r = http.put(f"/v1/schedules/{name}", json={"type": jtype, **body})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_body"
    assert says in error["message"]
    assert http.get(f"/v1/schedules/{name}").status_code == 404


def test_a_bad_schedule_name_is_400(http, jtype):
    r = http.put(f"/v1/schedules/{'x' * 129}", json={"type": jtype, "every": 60})
    assert r.status_code == 400, r.text
    assert "characters" in r.json()["error"]["message"]


def test_a_schedule_every_second_fires_jobs_whose_ids_name_it_and_their_slot(http, jtype):
    name = sname()
    made = put(http, name, {"type": jtype, "every": 1, "payload": {"n": 1}, "priority": 3}, 201)
    first = parse_time(made["next_run_at"])
    try:
        deadline = time.monotonic() + 20
        jobs: list[dict[str, Any]] = []
        while time.monotonic() < deadline and len(jobs) < 3:
            time.sleep(0.2)
            jobs = http.get("/v1/jobs", params={"type": jtype}).json()["jobs"]
    finally:
        http.delete(f"/v1/schedules/{name}")
    assert len(jobs) >= 3
    slots = sorted(slot_of_job_id(j["id"]) for j in jobs)  # type: ignore[type-var]
    assert all(s[0] == name for s in slots)
    times = [s[1] for s in slots]
    assert times[0] == first
    assert times == [first + i for i in range(len(times))]  # one per slot, none twice
    for job in jobs:
        assert job["payload"] == {"n": 1}
        assert job["priority"] == 3
        # Fired at or after its slot, within the grace however loaded the machine.
        drift = parse_time(job["created_at"]) - slot_of_job_id(job["id"])[1]  # type: ignore[index]
        assert 0 <= drift <= SCHEDULE_GRACE
    shown = http.get(f"/v1/jobs/{jobs[0]['id']}").json()
    assert shown["status"] == "queued"


def test_a_client_cannot_take_the_idempotency_key_of_a_firing(http, jtype):
    r = http.post("/v1/jobs", json={"type": jtype}, headers={"Idempotency-Key": f"sched:x:{jtype}"})
    assert r.status_code == 400
    assert "reserved" in r.json()["error"]["message"]
