"""Cancelling a job: at once when queued; when running, requested, seen at the next
heartbeat, and ended cancelled by the worker's fail or by the lease running out."""

from __future__ import annotations

import pytest

from tests.e2e.jobs.helpers import (
    get,
    lease,
    lease_one,
    submit,
)


@pytest.mark.timeout(30)
def test_cancel_queued_job_is_immediate(http, jtype):
    """Cancelling a queued job ends it cancelled at once; it is never leased."""
    job = submit(http, jtype)
    r = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert get(http, job["id"])["status"] == "cancelled"
    assert lease(http, jtype, wait=0.5) == []
    # Already ended: nothing to cancel.
    assert http.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


@pytest.mark.timeout(30)
def test_cancel_running_job_is_seen_at_heartbeat_and_ends_cancelled_on_fail(http, jtype):
    """A running job's cancel is requested; its next heartbeat says cancel_requested, and the
    worker's fail ends it cancelled (not retried)."""
    job = submit(http, jtype)
    leased = lease_one(http, jtype)
    token = leased["lease_token"]
    r = http.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running"
    assert r.json()["cancel_requested"] is True
    r = http.post(f"/v1/jobs/{job['id']}/heartbeat", json={"lease_token": token})
    assert r.status_code == 200, r.text
    assert r.json()["cancel_requested"] is True
    r = http.post(
        f"/v1/jobs/{job['id']}/fail",
        json={"lease_token": token, "error": "stopped on request", "retry": True},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert get(http, job["id"])["status"] == "cancelled"
    assert lease(http, jtype, wait=0.5) == []


@pytest.mark.timeout(30)
def test_cancel_running_job_whose_lease_runs_out_ends_cancelled(http, jtype):
    """A running job with cancel requested whose worker never comes back ends cancelled when
    its lease runs out."""
    job = submit(http, jtype)
    lease_one(http, jtype, seconds=1.0)
    assert http.post(f"/v1/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    r = http.get(f"/v1/jobs/{job['id']}", params={"wait": 8})
    assert r.json()["status"] == "cancelled", r.json()
    assert lease(http, jtype, wait=0.5) == []
