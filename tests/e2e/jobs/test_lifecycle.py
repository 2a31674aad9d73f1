"""A job's whole life through the API: submitted, leased, heartbeated with progress,
completed, watched by a long poll and an SSE stream; submit-and-wait answers with the
finished job or 202."""

from __future__ import annotations

import time

import pytest

from tests.conftest import ServerProcess
from tests.e2e.jobs.helpers import (
    HttpWorker,
    InThread,
    complete,
    get,
    job_events,
    lease_one,
    read_sse,
    rpc_handler,
)


@pytest.mark.timeout(60)
def test_submit_lease_progress_long_poll_and_complete(server: ServerProcess, http, jtype):
    """Submit → 202 queued; lease → running at attempt 1; a long poll stays open until
    complete and returns the result; the SSE stream shows the heartbeat's progress and ends
    by itself after `succeeded`; completing again with the spent token → 409, job unchanged."""
    r = http.post("/v1/jobs", json={"type": jtype, "payload": {"video": "a.mp4"}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["type"] == jtype
    assert job["attempt"] == 0
    assert job["payload"] == {"video": "a.mp4"}
    assert job["links"]["self"] == f"/v1/jobs/{job['id']}"
    assert job["links"]["events"] == f"/v1/jobs/{job['id']}/events"
    for field in ("created_at", "updated_at"):
        assert job[field]
    job_id = job["id"]
    assert get(http, job_id)["status"] == "queued"
    assert http.get("/v1/queues").json()["queues"][jtype] == {"queued": 1}

    sse = InThread(lambda: read_sse(f"{server.url}/v1/jobs/{job_id}/events"))

    leased = lease_one(http, jtype)
    assert leased["id"] == job_id
    assert leased["type"] == jtype
    assert leased["payload"] == {"video": "a.mp4"}
    assert leased["attempt"] == 1
    assert leased["lease_token"]
    assert leased["lease_expires_at"]
    token = leased["lease_token"]
    running = get(http, job_id)
    assert running["status"] == "running"
    assert running["attempt"] == 1
    assert "lease_token" not in running
    assert http.get("/v1/queues").json()["queues"][jtype] == {"running": 1}

    r = http.post(
        f"/v1/jobs/{job_id}/heartbeat",
        json={"lease_token": token, "progress": 40, "message": "transcoding"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["cancel_requested"] is False
    assert r.json()["lease_expires_at"]
    shown = get(http, job_id)
    assert shown["progress"] == 40
    assert shown["message"] == "transcoding"

    delay = 1.5
    started = time.monotonic()
    poll = InThread(lambda: http.get(f"/v1/jobs/{job_id}", params={"wait": 10}))
    time.sleep(delay)
    assert poll.alive(), "the long poll returned before the job finished"
    r = complete(http, job_id, token, {"url": "a.webm"})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "succeeded"
    answer = poll.join()
    assert answer.status_code == 200
    assert answer.json()["status"] == "succeeded"
    assert answer.json()["result"] == {"url": "a.webm"}
    assert poll.ended_at is not None
    assert poll.ended_at - started >= delay

    frames = sse.join(timeout=10)  # returns only because the server ended the stream
    events = job_events(frames)
    assert [e for e, _ in events] == ["queued", "running", "progress", "succeeded"]
    progress = events[2][1]
    assert progress["progress"] == 40
    assert progress["message"] == "transcoding"
    assert events[3][1]["result"] == {"url": "a.webm"}
    assert all(data["id"] == job_id for _, data in events)

    final = get(http, job_id)
    r = complete(http, job_id, token, {"url": "other"})
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "conflict"
    assert get(http, job_id) == final
    assert http.get("/v1/queues").json()["queues"][jtype] == {"succeeded": 1}

    # A stream opened after the end replays the job's history and ends at once.
    again = job_events(read_sse(f"{server.url}/v1/jobs/{job_id}/events", timeout=5))
    assert [e for e, _ in again] == ["queued", "running", "progress", "succeeded"]


@pytest.mark.timeout(40)
def test_submit_and_wait_returns_the_finished_job_or_202(server: ServerProcess, http, jtype):
    """?wait=8 and Prefer: wait=8 answer 200 with the finished job when a worker completes it
    in time; without a worker the answer after the wait is 202 with the job still queued."""
    with HttpWorker(server.url, jtype, rpc_handler):
        r = http.post("/v1/jobs", params={"wait": 8}, json={"type": jtype, "payload": [2, 3]})
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "succeeded"
        assert r.json()["result"] == 5
        assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"

        r = http.post(
            "/v1/jobs",
            headers={"Prefer": "wait=8"},
            json={"type": jtype, "payload": {"sleep": 0.5}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "succeeded"
        assert r.json()["result"] == {"sleep": 0.5}
        assert r.headers.get("preference-applied") == "wait=8"

        r = http.post(
            "/v1/jobs", params={"wait": 8}, json={"type": jtype, "payload": {"fail": "x"}}
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "failed"

    idle = f"{jtype}.idle"
    for kwargs in ({"params": {"wait": 1}}, {"headers": {"Prefer": "respond-async, wait=1"}}):
        started = time.monotonic()
        r = http.post("/v1/jobs", json={"type": idle}, **kwargs)
        assert time.monotonic() - started >= 1.0
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued"
        assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
        assert "preference-applied" not in r.headers
        http.post(f"/v1/jobs/{r.json()['id']}/cancel").raise_for_status()
