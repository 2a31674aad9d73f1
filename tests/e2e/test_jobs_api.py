"""The jobs API end to end, with the test itself speaking the worker protocol over HTTP.

One real server per store (`server`, module scope, retry backoff 0.05 s); every test
submits jobs of its own fresh type and leases only that type, so tests never take each
other's jobs. Clients are real: httpx for request/response and SSE, the `websockets`
client for the job's WebSocket.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerProcess

Json = dict[str, Any]
TERMINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module", params=["memory", "sqlite", "redis"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per store for this module's tests, which each use their own job types."""
    tmp: Path = tmp_path_factory.mktemp(f"jobs-{request.param}")
    store = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp / 'tidings.db'}",
        "redis": f"{request.getfixturevalue('redis_proc').url}?prefix={tmp.name}:",
    }[request.param]
    srv = ServerProcess(store, tmp / "server.log", [], {"TIDINGS_RETRY_BACKOFF": "0.05"})
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def jtype() -> str:
    """A job type no other test uses."""
    return f"t.{uuid.uuid4().hex[:12]}"


# -- helpers ------------------------------------------------------------------------------


def submit(http: httpx.Client, type_: str, payload: Any = None, **fields: Any) -> Json:
    r = http.post("/v1/jobs", json={"type": type_, "payload": payload, **fields})
    assert r.status_code == 202, r.text
    return r.json()


def lease(
    http: httpx.Client, type_: str, *, max_: int = 1, wait: float = 5.0, seconds: float = 30.0
) -> list[Json]:
    r = http.post(
        "/v1/workers/lease",
        json={"types": [type_], "max": max_, "wait": wait, "lease": seconds},
        timeout=wait + 10,
    )
    assert r.status_code == 200, r.text
    jobs: list[Json] = r.json()["jobs"]
    return jobs


def lease_one(http: httpx.Client, type_: str, **kw: Any) -> Json:
    jobs = lease(http, type_, **kw)
    assert len(jobs) == 1, jobs
    return jobs[0]


def get(http: httpx.Client, job_id: str) -> Json:
    r = http.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def complete(http: httpx.Client, job_id: str, token: str, result: Any) -> httpx.Response:
    return http.post(f"/v1/jobs/{job_id}/complete", json={"lease_token": token, "result": result})


class InThread:
    """Run `fn` in a thread; `join()` returns its value or re-raises its exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None

        def target() -> None:
            try:
                self.value = fn()
            except BaseException as exc:
                self.error = exc
            finally:
                self.ended_at = time.monotonic()

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float = 15.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call did not finish in time"
        if self.error is not None:
            raise self.error
        return self.value


def read_sse(url: str, timeout: float = 20.0) -> list[tuple[str | None, str | None, str]]:
    """Read an SSE stream to its end: (id, event, data) per frame, comments dropped.

    Returns only when the server ends the response; a read timeout fails the caller.
    """
    frames: list[tuple[str | None, str | None, str]] = []
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("GET", url, headers={"Accept": "text/event-stream"}) as r,
    ):
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        id_: str | None = None
        event: str | None = None
        data: list[str] = []
        for line in r.iter_lines():
            if line == "":
                if data:
                    frames.append((id_, event, "\n".join(data)))
                id_, event, data = None, None, []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "id":
                    id_ = value
                elif field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
    return frames


def job_events(frames: list[tuple[str | None, str | None, str]]) -> list[tuple[str, Json]]:
    """The job's own events (frames with an id), as (event, data)."""
    return [(ev or "", json.loads(data)) for id_, ev, data in frames if id_ is not None]


def recv_until_closed(ws: Any, timeout: float = 10.0) -> list[Json]:
    """Every frame until the server closes the socket; a timeout fails the caller."""
    frames: list[Json] = []
    try:
        while True:
            frames.append(json.loads(ws.recv(timeout=timeout)))
    except ConnectionClosed:
        return frames


# -- the whole life of a job --------------------------------------------------------------


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


# -- leases, failures, retries ------------------------------------------------------------


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
    assert failed["error"] == {"msg": "disk full"}
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
    assert get(http, job["id"])["error"] == "y"


# -- cancellation -------------------------------------------------------------------------


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


# -- idempotency, priority, delay ---------------------------------------------------------


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


# -- WebSocket, channel protection --------------------------------------------------------


@pytest.mark.timeout(30)
def test_job_websocket_streams_events_refuses_publishes_and_closes_after_the_end(
    server: ServerProcess, http, jtype
):
    """/v1/jobs/{id}/ws sends each job event as a JSON frame, answers a client publish with
    an error frame, and closes after the terminal event."""
    job = submit(http, jtype)
    job_id = job["id"]
    frames: list[Json] = []
    with ws_connect(f"{server.ws_url}/v1/jobs/{job_id}/ws", open_timeout=10) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["event"] == "queued"
        assert first["channel"] == f"job.{job_id}"
        assert first["data"]["status"] == "queued"
        frames.append(first)

        ws.send(json.dumps({"data": {"status": "succeeded"}, "ref": "r1"}))
        refused = json.loads(ws.recv(timeout=10))
        assert refused["type"] == "error", refused
        assert refused["ref"] == "r1", refused  # answers carry the frame's ref, as on channels
        assert refused["error"]["code"] == "forbidden"

        leased = lease_one(http, jtype)
        token = leased["lease_token"]
        http.post(
            f"/v1/jobs/{job_id}/heartbeat",
            json={"lease_token": token, "progress": 75.5, "message": "almost"},
        ).raise_for_status()
        complete(http, job_id, token, [1, 2]).raise_for_status()
        frames += recv_until_closed(ws)
    events = [f for f in frames if "event" in f and "type" not in f]
    assert [f["event"] for f in events] == ["queued", "running", "progress", "succeeded"]
    assert events[2]["data"]["progress"] == 75.5
    assert events[2]["data"]["message"] == "almost"
    assert events[3]["data"]["result"] == [1, 2]
    # Nothing but the close notice follows the terminal event.
    after = frames[frames.index(events[-1]) + 1 :]
    assert all(f.get("type") == "close" for f in after), after
    assert get(http, job_id)["status"] == "succeeded"


@pytest.mark.timeout(30)
def test_clients_cannot_publish_to_job_channels(http, jtype):
    """Job channels are written only by the job system: publishing to job.* → 403."""
    r = http.post("/v1/channels/job.x/messages", json={"data": "forged"})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    job = submit(http, jtype)
    r = http.post(f"/v1/channels/job.{job['id']}/messages", json={"data": {"status": "x"}})
    assert r.status_code == 403, r.text
    assert get(http, job["id"])["status"] == "queued"
    # The job's channel is still readable like any other.
    r = http.get(f"/v1/channels/job.{job['id']}/messages", params={"after": "0"})
    assert r.status_code == 200, r.text
    assert [m["event"] for m in r.json()["messages"]] == ["queued"]


# -- a test-side worker, for RPC and submit-and-wait --------------------------------------


class HttpWorker:
    """A worker thread speaking the worker protocol: leases `type_` jobs and answers each
    with `handle(job) -> ("complete", result) | ("fail", error)`."""

    def __init__(self, url: str, type_: str, handle: Callable[[Json], tuple[str, Any]]) -> None:
        self.url = url
        self.type = type_
        self.handle = handle
        self.stop = threading.Event()
        self.done: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=10) as http:
                while not self.stop.is_set():
                    for job in lease(http, self.type, max_=10, wait=0.5):
                        verb, value = self.handle(job)
                        key = "result" if verb == "complete" else "error"
                        body = {"lease_token": job["lease_token"], key: value}
                        if verb == "fail":
                            body["retry"] = False
                        r = http.post(f"/v1/jobs/{job['id']}/{verb}", json=body)
                        assert r.status_code == 200, r.text
                        self.done.append(job["id"])
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> HttpWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def rpc_handler(job: Json) -> tuple[str, Any]:
    """Sum a list of numbers; `{"fail": msg}` fails; `{"sleep": s}` sleeps then echoes."""
    p = job["payload"]
    if isinstance(p, dict) and "fail" in p:
        return "fail", {"message": p["fail"]}
    if isinstance(p, dict) and "sleep" in p:
        time.sleep(p["sleep"])
        return "complete", p
    if isinstance(p, list):
        return "complete", sum(p)
    return "complete", p


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


# -- submit and wait ----------------------------------------------------------------------


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


# -- bad input ----------------------------------------------------------------------------


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
