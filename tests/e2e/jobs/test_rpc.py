"""JSON-RPC over jobs: a call is a job (method = type, params = payload) answered by a
worker; batches, notifications and the JSON-RPC error codes."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.jobs.helpers import (
    HttpWorker,
    complete,
    get,
    lease,
    lease_one,
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
    """A call without an id submits the job and answers 204 with no body; the type stays
    served for a while after its worker stopped asking, so the job waits for it."""
    with HttpWorker(server.url, jtype, rpc_handler):
        pass  # its lease requests mark the type served
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
def test_rpc_to_a_method_no_worker_serves_is_not_found_at_once_and_queues_nothing(
    server: ServerProcess, http, jtype
):
    """-32601 at once (well within the call's wait), `data.reason` naming the type and the
    window, and the call leaves no job behind; a notification, which nobody waits for, is
    queued all the same (a worker may start later)."""
    unserved = f"{jtype}X"  # the typo of a type that has a worker
    with HttpWorker(server.url, jtype, rpc_handler):
        started = time.monotonic()
        r = http.post("/v1/rpc", json={"jsonrpc": "2.0", "method": unserved, "id": 1})
        took = time.monotonic() - started
        assert took < 10.0, took  # not after the call's default 30 s wait
        assert r.status_code == 200, r.text
        error = r.json()["error"]
        assert (error["code"], error["message"]) == (-32601, "Method not found")
        assert (
            f"no worker has asked for jobs of type {unserved!r} in the last 60 s"
            in (error["data"]["reason"])
        )
        r = http.post("/v1/rpc", json={"jsonrpc": "2.0", "method": unserved, "params": [1]})
        assert r.status_code == 204, r.text
        [noted] = http.get("/v1/jobs", params={"type": unserved}).json()["jobs"]
        assert (noted["status"], noted["payload"]) == ("queued", [1])
        # In a batch, the served call runs and the other is not found.
        r = http.post(
            "/v1/rpc",
            json=[
                {"jsonrpc": "2.0", "method": jtype, "params": [2, 3], "id": "a"},
                {"jsonrpc": "2.0", "method": unserved, "id": "b"},
            ],
        )
        by_id = {a["id"]: a for a in r.json()}
        assert by_id["a"]["result"] == 5
        assert by_id["b"]["error"]["code"] == -32601
    # Only the notification's job: neither call queued one.
    assert http.get("/v1/jobs", params={"type": unserved}).json()["jobs"] == [noted]


@pytest.mark.timeout(30)
def test_rpc_that_times_out_cancels_its_job_if_still_queued(server: ServerProcess, http, jtype):
    """-32002 after the wait; a job still queued does not run later for nobody: it ends
    cancelled; a running one goes on (its id in `data.job_id`)."""
    with HttpWorker(server.url, jtype, rpc_handler):
        pass  # served, but nobody leases now: the call's job stays queued
    started = time.monotonic()
    r = http.post(
        "/v1/rpc",
        params={"wait": 1},
        json={"jsonrpc": "2.0", "method": jtype, "params": [1], "id": "t"},
    )
    assert time.monotonic() - started >= 1.0
    error = r.json()["error"]
    assert error["code"] == -32002
    assert "cancelled" in error["message"]
    assert error["data"]["status"] == "cancelled"
    assert get(http, error["data"]["job_id"])["status"] == "cancelled"
    assert lease(http, jtype, wait=0) == []

    # Running when the wait ends: it goes on, and its worker finishes it.
    answered: list[dict] = []
    caller = threading.Thread(
        target=lambda: answered.append(
            http.post(
                "/v1/rpc",
                params={"wait": 1},
                json={"jsonrpc": "2.0", "method": jtype, "params": [2], "id": "u"},
            ).json()
        )
    )
    caller.start()
    leased = lease_one(http, jtype, wait=5)
    caller.join(10)
    error = answered[0]["error"]
    assert error["code"] == -32002 and error["data"]["job_id"] == leased["id"]
    assert error["data"]["status"] == "running" and "goes on" in error["message"]
    running = get(http, leased["id"])
    assert (running["status"], running["cancel_requested"]) == ("running", False)
    beat = http.post(
        f"/v1/jobs/{leased['id']}/heartbeat", json={"lease_token": leased["lease_token"]}
    )
    assert beat.json()["cancel_requested"] is False
    complete(http, leased["id"], leased["lease_token"], 2)
    assert get(http, leased["id"])["status"] == "succeeded"


@pytest.mark.timeout(30)
def test_rpc_timeout_message_names_the_wait_the_server_kept(
    tidings_server: ServerFactory,
) -> None:
    """A call asking to wait longer than the server's long-poll cap waits the cap, and its
    -32002 says so (not the wait it asked for)."""
    url = tidings_server(args=["--long-poll-cap", "1"]).url
    with httpx.Client(base_url=url, timeout=30) as http:
        with HttpWorker(url, "capped", rpc_handler):
            pass  # served, but nobody leases now
        r = http.post(
            "/v1/rpc",
            params={"wait": 600},
            json={"jsonrpc": "2.0", "method": "capped", "params": [1], "id": 1},
        )
        error = r.json()["error"]
        assert error["code"] == -32002
        assert error["message"].startswith("no result within 1 s;"), error
        assert "600" not in error["message"]


@pytest.mark.timeout(30)
def test_rpc_errors(server: ServerProcess, http, jtype):
    """Parse error -32700, invalid request -32600, failed job -32000 (with its job id)."""
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
    assert get(http, failed_id)["error"] == {"message": "bad", "attempt": 1}
