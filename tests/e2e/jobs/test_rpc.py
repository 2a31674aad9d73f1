"""JSON-RPC over jobs: a call is a job (method = type, params = payload) answered by a
worker; batches, notifications and the JSON-RPC error codes."""

from __future__ import annotations

import time

import pytest

from tests.conftest import ServerProcess
from tests.e2e.jobs.helpers import (
    HttpWorker,
    get,
    rpc_handler,
)


@pytest.mark.timeout(30)
def test_rpc_single_call_round_trips_through_a_worker(server: ServerProcess, http, jtype):
    """A JSON-RPC call is a job: method = type, params = payload, result = job result."""
    with HttpWorker(server.url, jtype, rpc_handler) as worker:
        r = http.post(
            "/v1/rpc", json={"jsonrpc": "2.0", "method": jtype, "params": [1, 2, 3], "id": 7}
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"jsonrpc": "2.0", "result": 6, "id": 7}
        r = http.post(
            "/v1/rpc",
            json={"jsonrpc": "2.0", "method": jtype, "params": {"k": "v"}, "id": "abc"},
        )
        assert r.json() == {"jsonrpc": "2.0", "result": {"k": "v"}, "id": "abc"}
    assert len(worker.done) == 2


@pytest.mark.timeout(30)
def test_rpc_batch_answers_each_call_and_skips_notifications(server: ServerProcess, http, jtype):
    """A batch runs its calls concurrently and answers each by id; notifications get nothing."""
    batch = [
        {"jsonrpc": "2.0", "method": jtype, "params": [1, 1], "id": 1},
        {"jsonrpc": "2.0", "method": jtype, "params": {"sleep": 0.3}, "id": 2},
        {"jsonrpc": "2.0", "method": jtype, "params": [10, 20], "id": "three"},
        {"jsonrpc": "2.0", "method": jtype, "params": [100]},
        {"jsonrpc": "2.0", "method": jtype, "params": {"fail": "nope"}, "id": 5},
        {"not": "a request"},
    ]
    with HttpWorker(server.url, jtype, rpc_handler) as worker:
        r = http.post("/v1/rpc", json=batch)
        assert r.status_code == 200, r.text
        answers = r.json()
        assert isinstance(answers, list)
        assert len(answers) == 5
        by_id = {a["id"]: a for a in answers if a["id"] is not None}
        assert by_id[1] == {"jsonrpc": "2.0", "result": 2, "id": 1}
        assert by_id[2] == {"jsonrpc": "2.0", "result": {"sleep": 0.3}, "id": 2}
        assert by_id["three"] == {"jsonrpc": "2.0", "result": 30, "id": "three"}
        assert by_id[5]["error"]["code"] == -32000
        invalid = [a for a in answers if a["id"] is None]
        assert len(invalid) == 1
        assert invalid[0]["error"]["code"] == -32600
        # The notification's job ran too (5 jobs: 4 answered calls + 1 notification).
        deadline = time.monotonic() + 5
        while len(worker.done) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert len(worker.done) == 5


@pytest.mark.timeout(30)
def test_rpc_notification_is_accepted_with_204(server: ServerProcess, http, jtype):
    """A call without an id submits the job and answers 204 with no body."""
    r = http.post("/v1/rpc", json={"jsonrpc": "2.0", "method": jtype, "params": {"x": 1}})
    assert r.status_code == 204, r.text
    assert r.content == b""
    listed = http.get("/v1/jobs", params={"type": jtype}).json()["jobs"]
    assert len(listed) == 1
    assert listed[0]["payload"] == {"x": 1}
    assert listed[0]["status"] == "queued"
    r = http.post("/v1/rpc", json=[{"jsonrpc": "2.0", "method": jtype}])
    assert r.status_code == 204, r.text
    assert len(http.get("/v1/jobs", params={"type": jtype}).json()["jobs"]) == 2


@pytest.mark.timeout(30)
def test_rpc_errors(server: ServerProcess, http, jtype):
    """Parse error -32700, invalid request -32600, failed job -32000 (with its job id),
    timeout -32002 (the job goes on)."""
    r = http.post(
        "/v1/rpc",
        content=b'{"jsonrpc": "2.0", "method": ',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] is None
    assert body["error"]["code"] == -32700

    for bad in ({"method": jtype, "id": 1}, {"jsonrpc": "2.0", "id": 1}, 42, "call"):
        r = http.post("/v1/rpc", json=bad)
        assert r.status_code == 200, r.text
        assert r.json()["error"]["code"] == -32600, (bad, r.json())
    r = http.post("/v1/rpc", json=[])
    assert r.json()["error"]["code"] == -32600

    with HttpWorker(server.url, jtype, rpc_handler):
        r = http.post(
            "/v1/rpc", json={"jsonrpc": "2.0", "method": jtype, "params": {"fail": "bad"}, "id": 9}
        )
    answer = r.json()
    assert answer["id"] == 9
    assert answer["error"]["code"] == -32000
    failed_id = answer["error"]["data"]["job_id"]
    assert answer["error"]["data"]["status"] == "failed"
    assert get(http, failed_id)["status"] == "failed"
    assert get(http, failed_id)["error"] == {"message": "bad"}

    idle = f"{jtype}.idle"  # nobody works on this type
    started = time.monotonic()
    r = http.post(
        "/v1/rpc",
        params={"wait": 1},
        json={"jsonrpc": "2.0", "method": idle, "params": [1], "id": "t"},
    )
    assert time.monotonic() - started >= 1.0
    answer = r.json()
    assert answer["id"] == "t"
    assert answer["error"]["code"] == -32002
    pending = answer["error"]["data"]["job_id"]
    assert get(http, pending)["status"] == "queued"
    http.post(f"/v1/jobs/{pending}/cancel").raise_for_status()
