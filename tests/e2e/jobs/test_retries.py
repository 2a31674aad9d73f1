"""Leases that run out and failed attempts: a job comes back as its next attempt after
the retry backoff, ends failed when it has none left, and is requeued by POST retry."""

from __future__ import annotations

import time

import pytest

from tests.conftest import ServerProcess
from tests.e2e.jobs.helpers import (
    complete,
    get,
    job_events,
    lease,
    lease_one,
    read_sse,
    submit,
)


@pytest.mark.timeout(30)
def test_lease_not_heartbeated_is_leased_again_as_attempt_2(http, jtype):
    """A job leased for 1 s and never heartbeated comes back to a waiting lease as attempt 2;
    the first token is then stale."""
    job = submit(http, jtype)
    first = lease_one(http, jtype, seconds=1.0)
    assert first["attempt"] == 1
    started = time.monotonic()
    second = lease_one(http, jtype, wait=5.0)
    assert time.monotonic() - started >= 0.5
    assert second["id"] == job["id"]
    assert second["attempt"] == 2
    assert second["lease_token"] != first["lease_token"]
    assert complete(http, job["id"], first["lease_token"], "late").status_code == 409
    assert complete(http, job["id"], second["lease_token"], "ok").status_code == 200
    done = get(http, job["id"])
    assert done["status"] == "succeeded"
    assert done["attempt"] == 2
    assert done["result"] == "ok"


@pytest.mark.timeout(30)
def test_only_attempt_failed_with_retry_ends_failed_is_listed_and_retry_requeues(http, jtype):
    """max_attempts 1 + fail(retry: true) → failed; listed under ?status=failed; POST retry
    requeues it and it can then succeed."""
    job = submit(http, jtype, {"n": 1}, max_attempts=1)
    leased = lease_one(http, jtype)
    r = http.post(
        f"/v1/jobs/{job['id']}/fail",
        json={"lease_token": leased["lease_token"], "error": {"msg": "disk full"}, "retry": True},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "failed"
    failed = get(http, job["id"])
    assert failed["status"] == "failed"
    assert failed["error"] == {"msg": "disk full", "attempt": 1}
    assert failed["errors"] == [failed["error"]]
    assert failed["finished_at"]
    assert lease(http, jtype, wait=0) == []

    listed = http.get("/v1/jobs", params={"status": "failed", "type": jtype}).json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]]
    all_failed = http.get("/v1/jobs", params={"status": "failed", "limit": 1000}).json()["jobs"]
    assert job["id"] in {j["id"] for j in all_failed}
    assert all(j["status"] == "failed" for j in all_failed)
    assert http.get("/v1/queues").json()["queues"][jtype] == {"failed": 1}

    r = http.post(f"/v1/jobs/{job['id']}/retry")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued"
    assert http.get("/v1/jobs", params={"status": "failed", "type": jtype}).json()["jobs"] == []
    again = lease_one(http, jtype)
    assert again["attempt"] == 1
    assert complete(http, job["id"], again["lease_token"], 7).status_code == 200
    assert get(http, job["id"])["result"] == 7
    # Only failed or cancelled jobs can be retried.
    assert http.post(f"/v1/jobs/{job['id']}/retry").status_code == 409


@pytest.mark.timeout(30)
def test_failed_attempt_is_retried_after_backoff(http, jtype):
    """fail(retry: true) with attempts left requeues the job; its next lease is attempt 2."""
    job = submit(http, jtype, max_attempts=2)
    leased = lease_one(http, jtype)
    r = http.post(
        f"/v1/jobs/{job['id']}/fail", json={"lease_token": leased["lease_token"], "error": "x"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "queued"
    again = lease_one(http, jtype, wait=5)
    assert again["attempt"] == 2
    r = http.post(
        f"/v1/jobs/{job['id']}/fail", json={"lease_token": again["lease_token"], "error": "y"}
    )
    assert r.json()["status"] == "failed"
    ended = get(http, job["id"])
    # A string error is the message of an error object, numbered by its attempt.
    assert ended["error"] == {"type": "Error", "message": "y", "attempt": 2}
    assert [e["message"] for e in ended["errors"]] == ["x", "y"]


@pytest.mark.timeout(30)
def test_a_failure_traceback_is_shown_bounded_by_get_but_not_copied_into_events(
    server: ServerProcess, http, jtype
):
    """Any HTTP worker may send a traceback: the server keeps its last 16 KiB (a line says
    it was cut), numbered by the attempt; GET shows it while the retry is queued, then
    running. The job's events, its listing and the answer to the worker carry the error
    without it (and `errors` entries never hold one)."""
    job = submit(http, jtype, max_attempts=2)
    leased = lease_one(http, jtype)
    frames = "".join(f'  File "w.py", line {n}, in step{n}\n    go()\n' for n in range(3000))
    tb = f'Traceback (most recent call last):\n{frames}  File "w.py", in handle\nOSError: full\n'
    error = {"type": "OSError", "message": "full", "traceback": tb}
    r = http.post(
        f"/v1/jobs/{job['id']}/fail", json={"lease_token": leased["lease_token"], "error": error}
    )
    assert r.status_code == 200, r.text
    assert r.json()["error"] == {"type": "OSError", "message": "full", "attempt": 1}
    assert "errors" not in r.json()
    queued = get(http, job["id"])
    assert queued["status"] == "queued"
    kept = queued["error"]["traceback"]
    assert len(kept.encode()) <= 16 * 1024 and len(tb) > 64 * 1024
    assert kept.startswith("[traceback cut to its last 16 KiB: the outer frames are left out]\n")
    assert kept.endswith("in handle\nOSError: full\n")
    short = {"type": "OSError", "message": "full", "attempt": 1}
    assert (queued["error"]["attempt"], queued["errors"]) == (1, [short])
    [listed] = http.get("/v1/jobs", params={"type": jtype}).json()["jobs"]
    assert listed["error"] == short and "errors" not in listed
    again = lease_one(http, jtype, wait=5)
    running = get(http, job["id"])
    assert running["status"] == "running" and running["error"]["traceback"] == kept
    beat = http.post(
        f"/v1/jobs/{job['id']}/heartbeat", json={"lease_token": again["lease_token"], "progress": 5}
    )
    assert beat.status_code == 200, beat.text
    complete(http, job["id"], again["lease_token"], "ok")
    events = job_events(read_sse(f"{server.url}/v1/jobs/{job['id']}/events"))
    assert [e for e, _ in events] == [
        "queued", "running", "queued", "running", "progress", "succeeded",
    ]  # fmt: skip
    for name, data in events[2:]:
        assert data["error"] == short, name  # the last error, without its traceback
        assert "errors" not in data, name


@pytest.mark.timeout(30)
def test_a_null_traceback_is_no_traceback(http, jtype):
    """`"traceback": null` (a worker with nothing to send) fails the attempt like no
    traceback at all, not 422."""
    job = submit(http, jtype, max_attempts=1)
    leased = lease_one(http, jtype)
    error = {"type": "E", "message": "m", "traceback": None}
    r = http.post(
        f"/v1/jobs/{job['id']}/fail", json={"lease_token": leased["lease_token"], "error": error}
    )
    assert r.status_code == 200, r.text
    assert get(http, job["id"])["error"] == {"type": "E", "message": "m", "attempt": 1}


@pytest.mark.timeout(30)
def test_a_huge_error_is_stored_bounded(http, jtype):
    """Its message keeps its first 4 KiB; other keys that would take it past 8 KiB are
    left out with a note."""
    job = submit(http, jtype, max_attempts=1)
    leased = lease_one(http, jtype)
    error = {"type": "E", "message": "m" * 50_000, "context": ["x" * 1000] * 20}
    r = http.post(
        f"/v1/jobs/{job['id']}/fail", json={"lease_token": leased["lease_token"], "error": error}
    )
    assert r.status_code == 200, r.text
    kept = get(http, job["id"])["error"]
    assert kept["message"].startswith("mmm") and kept["message"].endswith("bytes]")
    assert len(kept["message"]) <= 4096
    assert "context" not in kept and "left out" in kept["note"]
