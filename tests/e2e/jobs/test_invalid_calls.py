"""Calls that do not fit: bad submits and worker calls are refused with 400, 404, 409
or 422, and change nothing."""

from __future__ import annotations

import pytest

from tests.e2e.jobs.helpers import (
    complete,
    get,
    lease_one,
    submit,
)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "body",
    [
        {"type": "x", "colour": "red"},
        {"type": "x", "max_attempts": 0},
        {"type": "x", "max_attempts": 101},
        {"type": "x", "max_attempts": "3"},
        {"type": "x", "delay": -1},
        {"type": "x", "delay": "soon"},
        {"type": "x", "priority": 1.5},
        {"type": "x", "timeout": 0},
        {"type": "bad type!"},
        {"payload": 1},
        [{"type": "x"}],
    ],
    ids=[
        "unknown-field", "max-attempts-0", "max-attempts-101", "max-attempts-str", "delay-neg",
        "delay-str", "priority-float", "timeout-0", "bad-type", "no-type", "not-object",
    ],
)  # fmt: skip
def test_bad_submit_is_422_and_creates_nothing(http, body):
    """A submit body that does not fit is 422 invalid_body, and no job is created."""
    before = http.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]
    r = http.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_body"
    assert http.get("/v1/jobs", params={"limit": 1000}).json()["jobs"] == before


@pytest.mark.timeout(30)
def test_bad_worker_calls(http, jtype):
    """Unknown fields and out-of-range values → 422; a stale token → 409, job unchanged;
    an unknown job → 404; a body that is not JSON → 400."""
    job = submit(http, jtype)
    job_id = job["id"]
    for body in (
        {"types": [jtype], "lease": 30, "colour": 1},
        {"types": [jtype], "max": 0},
        {"types": [jtype], "lease": 0},
        {"types": []},
        {"types": ["bad type!"]},
        {"types": [f"{jtype}.{n}" for n in range(101)]},
    ):
        r = http.post("/v1/workers/lease", json=body)
        assert r.status_code == 422, (body, r.text)
    assert get(http, job_id)["status"] == "queued"

    token = lease_one(http, jtype)["lease_token"]
    running = get(http, job_id)
    for body in (
        {"lease_token": token, "progress": 150},
        {"lease_token": token, "progress": -5},
        {"lease_token": token, "progress": "half"},
        {"lease_token": token, "extra": True},
        {"progress": 10},
    ):
        r = http.post(f"/v1/jobs/{job_id}/heartbeat", json=body)
        assert r.status_code == 422, (body, r.text)
    r = http.post(f"/v1/jobs/{job_id}/complete", json={"lease_token": token, "result": 1, "x": 2})
    assert r.status_code == 422, r.text
    r = http.post(f"/v1/jobs/{job_id}/fail", json={"lease_token": token, "retry": "yes"})
    assert r.status_code == 422, r.text
    for traceback in (["a", "list"], 42, {"frames": []}):
        r = http.post(
            f"/v1/jobs/{job_id}/fail",
            json={"lease_token": token, "error": {"type": "E", "traceback": traceback}},
        )
        assert r.status_code == 422, (traceback, r.text)
        assert "traceback" in r.json()["error"]["message"]

    stale = "not-" + token
    for verb, body in (
        ("heartbeat", {"lease_token": stale, "progress": 10}),
        ("complete", {"lease_token": stale, "result": "forged"}),
        ("fail", {"lease_token": stale, "error": "forged"}),
    ):
        r = http.post(f"/v1/jobs/{job_id}/{verb}", json=body)
        assert r.status_code == 409, (verb, r.text)
        assert r.json()["error"]["code"] == "conflict"
    assert get(http, job_id) == running

    r = http.post(f"/v1/jobs/{job_id}/complete", content=b"{not json")
    assert r.status_code == 400, r.text

    missing = "0" * 24
    assert http.get(f"/v1/jobs/{missing}").status_code == 404
    assert http.get(f"/v1/jobs/{missing}", params={"wait": 1}).status_code == 404
    assert http.get(f"/v1/jobs/{missing}/events").status_code == 404
    for verb, body in (
        ("cancel", None),
        ("retry", None),
        ("heartbeat", {"lease_token": token}),
        ("complete", {"lease_token": token}),
        ("fail", {"lease_token": token}),
    ):
        r = http.post(f"/v1/jobs/{missing}/{verb}", json=body)
        assert r.status_code == 404, (verb, r.text)
        assert r.json()["error"]["code"] == "not_found"
    r = http.get("/v1/jobs", params={"status": "sleeping"})
    assert r.status_code == 400, r.text
    assert complete(http, job_id, token, "fine").status_code == 200
