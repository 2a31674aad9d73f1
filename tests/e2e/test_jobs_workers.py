"""Jobs through real worker processes: `tidings worker tests.e2e.jobs_worker_app:worker`.

A real server on a SQLite file, real `python -m tidings worker` processes (lease 2 s, see
jobs_worker_app.py), and SIGKILL where a worker should be able to die: no job may be
lost — a killed worker's jobs come back when their leases run out and end `succeeded`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess

Json = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
APP = "tests.e2e.jobs_worker_app:worker"
LEASE = 2.0


class WorkerProcess:
    """One `python -m tidings worker` process, its output in a log file."""

    def __init__(self, url: str, log_path: Path, concurrency: int) -> None:
        cmd = [
            sys.executable, "-m", "tidings", "worker", APP,
            "--url", url, "--concurrency", str(concurrency), "--log-level", "info",
        ]  # fmt: skip
        env = {**os.environ, "JOBS_WORKER_LEASE": str(LEASE)}
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no drain, its leases are simply abandoned."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: `workers(url, concurrency=4)` starts a worker process; all are killed after."""
    started: list[WorkerProcess] = []

    def start(url: str, concurrency: int = 4) -> WorkerProcess:
        w = WorkerProcess(url, tmp_path / f"worker-{len(started)}.log", concurrency)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


@pytest.fixture
def server(tidings_server: ServerFactory, tmp_path: Path) -> ServerProcess:
    return tidings_server(
        store=f"sqlite:///{tmp_path / 'jobs.db'}", env={"TIDINGS_RETRY_BACKOFF": "0.05"}
    )


def submit(http: httpx.Client, type_: str, payload: Any) -> Json:
    r = http.post("/v1/jobs", json={"type": type_, "payload": payload})
    assert r.status_code == 202, r.text
    return r.json()


def get(http: httpx.Client, job_id: str) -> Json:
    r = http.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.timeout(60)
def test_sigkill_of_a_worker_mid_job_loses_no_job(server, workers):
    """Jobs running on a worker that is SIGKILLed come back when their leases run out, are
    run again by another worker as attempt 2, and end succeeded."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        first = workers(server.url, concurrency=4)
        jobs = [submit(http, "sleepy", 3.0) for _ in range(4)]
        # Every job leased by the first worker (the only one), its handler under way.
        wait_until(
            lambda: all(get(http, j["id"])["status"] == "running" for j in jobs),
            15,
            f"the first worker to lease the jobs:\n{first.log_path.read_text()}",
        )
        time.sleep(0.5)
        assert all(get(http, j["id"])["attempt"] == 1 for j in jobs)
        first.kill()
        killed_at = time.monotonic()
        # Nobody holds the leases now, yet the jobs are still running until they run out.
        assert all(get(http, j["id"])["status"] == "running" for j in jobs)

        second = workers(server.url, concurrency=4)
        for j in jobs:
            r = http.get(f"/v1/jobs/{j['id']}", params={"wait": 20}, timeout=30)
            done = r.json()
            assert done["status"] == "succeeded", (json.dumps(done), second.log())
            assert done["attempt"] == 2
            assert done["result"] == {"slept": 3.0, "pid": second.pid, "attempt": 2}
            assert done["error"]["type"] == "LeaseExpired"  # what ended attempt 1
        # Redelivery waited for the lease to run out, then the 3 s run.
        assert time.monotonic() - killed_at >= 3.0
        counts = http.get("/v1/queues").json()["queues"]
        assert counts == {"sleepy": {"succeeded": 4}}


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_2000_jobs_through_3_workers_one_killed_every_2s(server, workers):
    """2,000 jobs through 3 worker processes, one SIGKILLed and restarted every ~2 s while
    they run: every accepted job ends succeeded, none is lost, none runs out of attempts."""
    total = 2000
    started = time.monotonic()
    steady = [workers(server.url, concurrency=4) for _ in range(2)]
    victim = workers(server.url, concurrency=4)

    ids: list[str] = []
    ids_lock = threading.Lock()
    submit_errors: list[BaseException] = []

    def submit_some(n: int) -> None:
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for _ in range(n):
                    job = submit(http, "sleepy", 0.02)
                    with ids_lock:
                        ids.append(job["id"])
        except BaseException as exc:
            submit_errors.append(exc)

    submitters = [threading.Thread(target=submit_some, args=(total // 8,)) for _ in range(8)]
    for t in submitters:
        t.start()

    kills = 0
    with httpx.Client(base_url=server.url, timeout=30) as http:

        def succeeded() -> int:
            q = http.get("/v1/queues").json()["queues"].get("sleepy", {})
            return int(q.get("succeeded", 0))

        def victim_holds_jobs() -> bool:
            seen = http.get("/v1/workers").json()["workers"]
            return any(w["name"].endswith(f":{victim.pid}") and w["running"] for w in seen)

        while succeeded() < total:
            assert time.monotonic() - started < 60, http.get("/v1/queues").json()
            time.sleep(2.0)
            # Killed while it holds jobs, so that some are redelivered: on a loaded machine
            # a worker may still be starting 2 s after it was spawned.
            holding = time.monotonic() + 5
            while not victim_holds_jobs() and time.monotonic() < holding:
                if succeeded() >= total:
                    break
                time.sleep(0.05)
            victim.kill()
            kills += 1
            victim = workers(server.url, concurrency=4)
            for w in steady:
                assert w.proc.poll() is None, f"a steady worker died:\n{w.log()}"
        for t in submitters:
            t.join(10)
        assert not submit_errors, submit_errors
        assert len(ids) == total
        elapsed = time.monotonic() - started

        counts = http.get("/v1/queues").json()["queues"]
        assert counts == {"sleepy": {"succeeded": total}}

        def check(job_id: str) -> int:
            job = get(http, job_id)  # httpx.Client is thread-safe; its pool has room for 8
            assert job["status"] == "succeeded", job
            assert job["result"]["slept"] == 0.02
            assert job["result"]["attempt"] == job["attempt"]
            return int(job["attempt"])

        with ThreadPoolExecutor(8) as pool:
            attempts = list(pool.map(check, ids))
    assert len(set(ids)) == total
    assert kills >= 3, f"only {kills} kills in {elapsed:.1f}s: the test did not test much"
    # Kills hit jobs in flight: some of them were redelivered (and still succeeded).
    assert max(attempts) >= 2, "no job was ever redelivered"
    assert elapsed < 60, f"took {elapsed:.1f}s"


@pytest.mark.timeout(60)
def test_submit_and_wait_and_rpc_round_trip_through_a_real_worker(server, workers):
    """POST /v1/jobs?wait=8 (and Prefer: wait=8) answer 200 with the worker's result; a
    JSON-RPC call and batch get their results from the worker process too."""
    worker = workers(server.url, concurrency=4)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/v1/jobs", params={"wait": 8}, json={"type": "noop", "payload": {"a": 1}})
        assert r.status_code == 200, (r.text, worker.log())
        assert r.json()["status"] == "succeeded"
        assert r.json()["result"] == {"a": 1}
        assert r.json()["attempt"] == 1

        r = http.post(
            "/v1/jobs", headers={"Prefer": "wait=8"}, json={"type": "sleepy", "payload": 0.5}
        )
        assert r.status_code == 200, (r.text, worker.log())
        job = r.json()
        assert job["status"] == "succeeded"
        assert job["result"] == {"slept": 0.5, "pid": worker.pid, "attempt": 1}

        # Too slow for the wait: 202, then it finishes anyway.
        r = http.post("/v1/jobs", params={"wait": 0.5}, json={"type": "sleepy", "payload": 2})
        assert r.status_code == 202, r.text
        assert r.json()["status"] in ("queued", "running")
        late = http.get(r.headers["location"], params={"wait": 10}).json()
        assert late["status"] == "succeeded"

        r = http.post(
            "/v1/rpc", json={"jsonrpc": "2.0", "method": "noop", "params": [1, "two"], "id": 1}
        )
        assert r.status_code == 200, r.text
        assert r.json() == {"jsonrpc": "2.0", "result": [1, "two"], "id": 1}

        r = http.post(
            "/v1/rpc",
            json=[
                {"jsonrpc": "2.0", "method": "noop", "params": {"x": 1}, "id": "a"},
                {"jsonrpc": "2.0", "method": "sleepy", "params": [0.3], "id": "b"},
            ],
        )
        assert r.status_code == 200, r.text
        by_id = {a["id"]: a for a in r.json()}
        assert by_id["a"] == {"jsonrpc": "2.0", "result": {"x": 1}, "id": "a"}
        assert by_id["b"]["error"]["code"] == -32000  # sleepy needs a number, not a list
        assert worker.proc.poll() is None


@pytest.mark.timeout(60)
def test_handler_reporting_progress_just_before_returning_completes(server, workers):
    """A handler whose last act is `job.progress(100)` still completes its job: the progress
    reaches the job's stream and the job ends succeeded, freeing the worker's slot.

    Regression: the worker runtime hung forever after such a handler (the job stayed
    `running`, its lease kept alive by heartbeats, the slot never freed).
    """
    worker = workers(server.url, concurrency=2)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for steps in (1, 3, 1, 1):
            r = http.post(
                "/v1/jobs", params={"wait": 8}, json={"type": "progressive", "payload": steps}
            )
            job = r.json()
            assert r.status_code == 200, (json.dumps(job), worker.log())
            assert job["status"] == "succeeded"
            assert job["result"] == {"steps": steps}
            assert job["progress"] == 100
        r = http.get(f"/v1/channels/job.{job['id']}/messages", params={"after": "0"})
        events = [m["event"] for m in r.json()["messages"]]
        assert events[0] == "queued"
        assert events[-1] == "succeeded"


@pytest.mark.timeout(60)
def test_on_a_shared_store_a_type_served_through_one_node_is_served_on_every_node(
    tidings_server: ServerFactory, redis_url: str, workers: Callable[..., WorkerProcess]
) -> None:
    """The served mark lives in Redis: a worker leasing through node A makes node B answer
    `served: true` and run JSON-RPC calls of its types; an unknown type is unserved on
    both (-32601 on B, and no job anywhere)."""
    a = tidings_server(store=redis_url)
    b = tidings_server(store=redis_url)
    worker = workers(a.url)
    with httpx.Client(base_url=b.url, timeout=30) as on_b:

        def served() -> bool:
            r = on_b.post("/v1/jobs", json={"type": "noop"}, headers={"Idempotency-Key": "p"})
            return bool(r.json()["served"])

        wait_until(served, 20, f"noop served on node B\n{worker.log()}")
        call = {"jsonrpc": "2.0", "method": "noop", "params": {"n": 1}, "id": 1}
        answer = on_b.post("/v1/rpc", json=call).json()
        assert "result" in answer, answer
        missing = on_b.post("/v1/rpc", json={**call, "method": "nope"}).json()
        assert missing["error"]["code"] == -32601, missing
        assert on_b.get("/v1/jobs", params={"type": "nope"}).json()["jobs"] == []
        assert on_b.post("/v1/jobs", json={"type": "nope"}).json()["served"] is False
    with httpx.Client(base_url=a.url, timeout=30) as on_a:
        assert on_a.post("/v1/jobs", json={"type": "noop"}).json()["served"] is True
        assert on_a.post("/v1/jobs", json={"type": "nope"}).json()["served"] is False
