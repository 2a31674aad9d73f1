"""`POST /v1/workers/report` and the worker runtime's batched outcomes, end to end.

Each test starts a real `tidings serve` (memory and SQLite, through `store_url`) and
speaks the worker protocol over HTTP: by hand with httpx, through `HttpBackend`, or as
a real `tidings worker` process whose requests are counted in the server's /metrics.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tidings.protocol.jobs import JobOutcome
from tidings.sdk.client import Client, TidingsConnectionError
from tidings.sdk.worker import HttpBackend, JobContext, LeasedJob, LeaseLost, Worker

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
Json = dict[str, Any]


def submit(http: httpx.Client, type_: str, **fields: Any) -> Json:
    r = http.post("/v1/jobs", json={"type": type_, **fields})
    assert r.status_code == 202, r.text
    return r.json()


def lease(http: httpx.Client, type_: str, n: int) -> list[Json]:
    r = http.post("/v1/workers/lease", json={"types": [type_], "max": n, "wait": 5, "lease": 30})
    assert r.status_code == 200, r.text
    jobs: list[Json] = r.json()["jobs"]
    assert len(jobs) == n, jobs
    return jobs


def sse_events(url: str) -> list[tuple[str, Json]]:
    """(event, data) of a job's SSE stream, read to its end (the terminal event)."""
    out: list[tuple[str, Json]] = []
    with (
        httpx.Client(timeout=10) as client,
        client.stream("GET", url, headers={"Accept": "text/event-stream"}) as r,
    ):
        assert r.status_code == 200
        event, data, has_id = "", "", False
        for line in r.iter_lines():
            if line == "":
                if has_id and data:
                    out.append((event, json.loads(data)))
                event, data, has_id = "", "", False
            elif line.startswith("id:"):
                has_id = True
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
    return out


def request_count(http: httpx.Client, route: str) -> int:
    """Requests the server answered on `route` (POST, any status), from /metrics."""
    text = http.get("/metrics").text
    pattern = (
        rf'tidings_request_duration_seconds_count\{{[^}}]*route="{re.escape(route)}"[^}}]*\}} (\S+)'
    )
    return int(sum(float(v) for v in re.findall(pattern, text)))


def test_report_applies_or_refuses_each_outcome_on_its_own(
    tidings_server: ServerFactory, store_url
):
    """One request completes one job, retries one, fails one for good, and refuses a spent
    token, a foreign token and an unknown job — each answered in order; the applied ones
    publish their events on the job channels, the refused ones change nothing."""
    srv = tidings_server(store_url, env={"TIDINGS_RETRY_BACKOFF": "0.05"})
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        ids = [submit(http, "r", max_attempts=2)["id"] for _ in range(5)]
        leased = {j["id"]: j for j in lease(http, "r", 5)}
        done, retried, dead, spent, foreign = (leased[i] for i in ids)
        r = http.post(
            f"/v1/jobs/{spent['id']}/complete",
            json={"lease_token": spent["lease_token"], "result": "first"},
        )
        assert r.status_code == 200

        r = http.post(
            "/v1/workers/report",
            json={
                "results": [
                    {"id": done["id"], "lease_token": done["lease_token"], "result": {"n": 1}},
                    {"id": retried["id"], "lease_token": retried["lease_token"], "error": "E"},
                    {
                        "id": dead["id"],
                        "lease_token": dead["lease_token"],
                        "error": {"type": "F"},
                        "retry": False,
                    },
                    {"id": spent["id"], "lease_token": spent["lease_token"], "result": "again"},
                    {"id": foreign["id"], "lease_token": "not-the-token", "result": None},
                    {"id": "0000nosuchjob", "lease_token": "t", "result": None},
                ]
            },
        )
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["id"] for x in results] == [*ids, "0000nosuchjob"]
        assert [x.get("status") for x in results[:3]] == ["succeeded", "queued", "failed"]
        assert [x.get("error", {}).get("code") for x in results[3:]] == [
            "conflict",
            "conflict",
            "not_found",
        ]
        assert all("message" in x["error"] for x in results[3:])

        def job(i: str) -> Json:
            got: Json = http.get(f"/v1/jobs/{i}").json()
            return got

        assert job(done["id"])["result"] == {"n": 1}
        assert job(spent["id"])["result"] == "first"
        assert job(foreign["id"])["status"] == "running"
        assert job(foreign["id"])["attempt"] == 1

        # The events, as any follower sees them on the job's channel.
        base = f"{srv.url}/v1/jobs"
        evs = sse_events(f"{base}/{done['id']}/events")
        assert [e for e, _ in evs] == ["queued", "running", "succeeded"]
        assert evs[-1][1]["result"] == {"n": 1}
        evs = sse_events(f"{base}/{dead['id']}/events")
        assert [e for e, _ in evs] == ["queued", "running", "failed"]
        assert evs[-1][1]["error"] == {"type": "F", "attempt": 1}
        assert [e for e, _ in sse_events(f"{base}/{spent['id']}/events")] == [
            "queued",
            "running",
            "succeeded",
        ]
        # The retried job comes back as attempt 2, and its channel says so.
        (again,) = lease(http, "r", 1)
        assert (again["id"], again["attempt"]) == (retried["id"], 2)
        r = http.post(
            "/v1/workers/report",
            json={
                "results": [{"id": again["id"], "lease_token": again["lease_token"], "result": 2}]
            },
        )
        assert r.json() == {"results": [{"id": again["id"], "status": "succeeded"}]}
        assert [e for e, _ in sse_events(f"{base}/{retried['id']}/events")] == [
            "queued",
            "running",
            "queued",
            "running",
            "succeeded",
        ]


def test_lease_carrying_results_reports_then_leases(tidings_server: ServerFactory, store_url):
    """`results` on a lease request are applied as a report and answered beside the jobs;
    a lease request that is invalid applies none of them."""
    srv = tidings_server(store_url)
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        first = [submit(http, "l")["id"] for _ in range(2)]
        a, b = lease(http, "l", 2)
        later = submit(http, "l")["id"]
        results = [
            {"id": a["id"], "lease_token": a["lease_token"], "result": "A"},
            {"id": b["id"], "lease_token": "stale", "error": "B"},
        ]
        r = http.post(
            "/v1/workers/lease",
            json={"types": ["l"], "max": 0, "wait": 0, "lease": 30, "results": results},
        )
        assert r.status_code == 422, r.text
        assert http.get(f"/v1/jobs/{a['id']}").json()["status"] == "running"

        r = http.post(
            "/v1/workers/lease",
            json={"types": ["l"], "max": 5, "wait": 0, "lease": 30, "results": results},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["results"][0] == {"id": a["id"], "status": "succeeded"}
        assert body["results"][1]["error"]["code"] == "conflict"
        assert [j["id"] for j in body["jobs"]] == [later]
        assert sorted(first) == sorted([a["id"], b["id"]])
        assert http.get(f"/v1/jobs/{a['id']}").json()["result"] == "A"
        assert http.get(f"/v1/jobs/{b['id']}").json()["status"] == "running"
        # Without results, the answer is as before.
        r = http.post("/v1/workers/lease", json={"types": ["l"], "max": 1, "wait": 0})
        assert r.json() == {"jobs": []}


def test_report_rejects_malformed_bodies(tidings_server: ServerFactory, store_url):
    srv = tidings_server(store_url)
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        submit(http, "m")
        (job,) = lease(http, "m", 1)
        item = {"id": job["id"], "lease_token": job["lease_token"]}
        for body in (
            {"results": []},
            {"results": [item]},  # neither result nor error
            {"results": [{**item, "result": 1, "error": "x"}]},  # both
            {"results": [{**item, "result": 1, "extra": True}]},
            {"results": [{**item, "result": 1}] * 101},
            {"outcomes": [{**item, "result": 1}]},
        ):
            r = http.post("/v1/workers/report", json=body)
            assert r.status_code == 422, (body, r.text)
            assert r.json()["error"]["code"] == "invalid_body"
        r = http.post(
            "/v1/workers/report", content=b"{", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
        # None of that touched the job.
        assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"


def test_http_backend_report_answers_per_outcome(tidings_server: ServerFactory, store_url):
    """The SDK's backend: None for an applied outcome, LeaseLost for a refused one."""
    srv = tidings_server(store_url)
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        for _ in range(3):
            submit(http, "b")

    async def main() -> tuple[str, str]:
        backend = HttpBackend(srv.url)
        try:
            a, b, c = await backend.lease(["b"], 3, 5.0, 30.0)
            answers = await backend.report(
                [
                    JobOutcome(a.id, a.lease_token, True, {"ok": 1}),
                    JobOutcome(b.id, "stale", True, None),
                    JobOutcome(c.id, c.lease_token, False, {"type": "E"}, retry=False),
                ]
            )
            assert answers[0] is None and answers[2] is None
            assert isinstance(answers[1], LeaseLost)
            # Outcomes over REPORT_MAX_BYTES go in several requests; each is still answered.
            big = "x" * 200_000
            answers = await backend.report(
                [JobOutcome(b.id, b.lease_token, True, big), JobOutcome(a.id, "spent", True, big)]
            )
            assert answers[0] is None
            assert isinstance(answers[1], LeaseLost)
            return a.id, b.id
        finally:
            await backend.aclose()

    a_id, b_id = asyncio.run(main())
    with Client(srv.url) as client:
        assert client.get_job(a_id).result == {"ok": 1}
        assert client.get_job(b_id).result == "x" * 200_000


class FlakyBackend(HttpBackend):
    """Reports fail with a connection error the first `failures` times."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures
        self.reports: list[int] = []

    def _maybe_fail(self, outcomes: list[JobOutcome]) -> None:
        self.reports.append(len(outcomes))
        if self.failures > 0:
            self.failures -= 1
            raise TidingsConnectionError("injected")

    async def report(self, outcomes: list[JobOutcome]) -> list[Exception | None]:
        self._maybe_fail(outcomes)
        return await super().report(outcomes)

    async def report_and_lease(
        self, outcomes: list[JobOutcome], types: list[str] | None, max_jobs: int, lease: float
    ) -> tuple[list[Exception | None], list[LeasedJob]]:
        self._maybe_fail(outcomes)
        return await super().report_and_lease(outcomes, types, max_jobs, lease)


def test_worker_retries_reports_without_losing_outcomes_and_drain_flushes_them(
    tidings_server: ServerFactory, store_url
):
    """Outcomes whose report (alone or with a lease) fails in transit are sent again with
    the ones that finished meanwhile; stopping the worker waits for them to be reported."""
    srv = tidings_server(store_url)
    worker = Worker(concurrency=4, lease=10.0)

    @worker.handler("f")
    def handle(job: JobContext) -> Any:
        return job.payload

    client = Client(srv.url)
    handles = [client.submit("f", i) for i in range(40)]

    async def main() -> FlakyBackend:
        backend = FlakyBackend(srv.url, failures=2)
        stop = asyncio.Event()
        runner = asyncio.create_task(worker.run_backend(backend, stop))
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            deadline = time.monotonic() + 30
            while True:
                counts = http.get("/v1/queues").json()["queues"].get("f", {})
                if counts.get("queued", 0) == 0:
                    break
                assert time.monotonic() < deadline, counts
                await asyncio.sleep(0.02)
        stop.set()  # some outcomes may still be queued or in flight: the drain flushes them
        await asyncio.wait_for(runner, 30)
        await backend.aclose()
        return backend

    backend = asyncio.run(main())
    # The failed batches were sent again (grown by what finished in the meantime).
    assert len(backend.reports) >= 3
    assert sum(backend.reports[2:]) >= 40
    with client:
        for i, h in enumerate(handles):
            info = client.get_job(h.id)
            assert (info.status, info.result) == ("succeeded", i)


def test_worker_process_reports_in_batches(tidings_server: ServerFactory, store_url, tmp_path):
    """A real `tidings worker` reports its outcomes in batches (with its leases, or through
    /v1/workers/report) and never calls the per-job complete or fail."""
    srv = tidings_server(store_url)
    n = 200
    client = Client(srv.url)
    handles = [client.submit("echo", {"i": i}) for i in range(n)]
    log_path = tmp_path / "worker.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "tidings", "worker", "tests.e2e.worker_app:worker"),
                *("--url", srv.url, "--concurrency", "8"),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    try:
        for i, h in enumerate(handles):
            assert h.wait(timeout=30).result == {"i": i}
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            requests = request_count(http, "/v1/workers/report") + request_count(
                http, "/v1/workers/lease"
            )
            assert request_count(http, "/v1/jobs/{job_id}/complete") == 0
            assert request_count(http, "/v1/jobs/{job_id}/fail") == 0
        # Per job before batching: one lease share plus one complete.
        assert requests < n, requests
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0, log_path.read_text(errors="replace")[-3000:]
