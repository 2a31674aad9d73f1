"""The Worker SDK and the job client against a real server and real worker processes.

Each test starts `tidings serve` through the `tidings_server` factory (tests/conftest.py)
and one or more `tidings worker tests.e2e.worker_app:worker` processes, then talks to the
server only through `tidings.sdk.client` or the `tidings jobs` CLI. Every process started here
is killed at the end of its test.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.e2e.helpers import cli_ok
from tidings.sdk.client import AsyncClient, Client, JobInfo, JobTimeout
from tidings.server.auth import token_key

ROOT = Path(__file__).resolve().parents[2]
WORKER_APP = "tests.e2e.worker_app:worker"


class WorkerProcess:
    """A `tidings worker` subprocess writing its log to a file."""

    def __init__(self, url: str, log_path: Path, args: list[str]) -> None:
        self.log_path = log_path
        cmd = [sys.executable, "-m", "tidings", "worker", WORKER_APP, "--url", url, *args]
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def stop(self, sig: int | None = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Send `sig` (None: none) and wait for the process to end; its exit code."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"worker ignored signal {sig} for {timeout}s:\n{self.log()}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


WorkerFactory = Callable[..., WorkerProcess]


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[WorkerFactory]:
    """Factory: `worker_process(url, args=[...])` -> a running `tidings worker` process."""
    started: list[WorkerProcess] = []

    def factory(url: str, args: list[str] | None = None) -> WorkerProcess:
        proc = WorkerProcess(url, tmp_path / f"worker-{len(started)}.log", list(args or []))
        started.append(proc)
        return proc

    yield factory
    for proc in started:
        proc.kill()


def wait_for(client: Client, job_id: str, predicate: Callable[[JobInfo], bool]) -> JobInfo:
    """Poll the job until `predicate` holds (10 s at most)."""
    deadline = time.monotonic() + 10.0
    while True:
        info = client.get_job(job_id)
        if predicate(info):
            return info
        assert time.monotonic() < deadline, f"job never reached the expected state: {info}"
        time.sleep(0.05)


def run_cli(*args: str, url: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        cwd=ROOT,
        env={**os.environ, "TIDINGS_URL": url},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(60)
def test_submitted_job_is_run_by_a_worker_and_wait_returns_its_result(
    tidings_server: ServerFactory, store_url: str, worker_process: WorkerFactory
) -> None:
    """submit → a worker process runs the sync handler → wait() returns succeeded + result."""
    server = tidings_server(store_url)
    worker = worker_process(server.url)
    try:
        with Client(server.url) as client:
            payload = {"a": 1, "b": [1, 2, None], "text": "ünïcødé"}
            handle = client.submit("echo", payload)
            assert handle.job.status in ("queued", "running", "succeeded")
            info = handle.wait(timeout=20)
            assert info.status == "succeeded", worker.log()
            assert info.result == payload
            assert info.attempt == 1
            assert info.finished_at is not None
            assert handle.refresh().status == "succeeded"
    finally:
        worker.kill()


@pytest.mark.timeout(60)
def test_a_job_longer_than_its_lease_keeps_it_without_progress_reports(
    tidings_server: ServerFactory, store_url: str, worker_process: WorkerFactory, monkeypatch
) -> None:
    """With a 1 s lease, a handler that runs 2.5 s and reports nothing still completes as
    attempt 1: the heartbeat starts on its own when the first one is due (lease / 3)."""
    monkeypatch.setenv("TEST_WORKER_LEASE", "1")
    server = tidings_server(store_url)
    worker = worker_process(server.url)
    try:
        with Client(server.url) as client:
            info = client.submit("quiet", {"seconds": 2.5}).wait(timeout=20)
            assert info.status == "succeeded", worker.log()
            assert info.attempt == 1, worker.log()
            assert info.result == {"slept": 2.5}
            assert "lease lost" not in worker.log()
    finally:
        worker.kill()


@pytest.mark.timeout(60)
def test_async_handler_round_trip_through_async_client(
    tidings_server: ServerFactory, worker_process: WorkerFactory
) -> None:
    """An `async def` handler's result comes back to `AsyncClient.submit(...).wait()`."""
    server = tidings_server()
    url: str = server.url
    worker_process(url)

    async def main() -> JobInfo:
        async with AsyncClient(url) as client:
            handle = await client.submit("async_echo", [1, "two"])
            return await handle.wait(timeout=20)

    info = asyncio.run(main())
    assert info.status == "succeeded"
    assert info.result == {"echo": [1, "two"], "attempt": 1}


@pytest.mark.timeout(60)
def test_submit_with_wait_answers_with_the_finished_job(
    tidings_server: ServerFactory, worker_process: WorkerFactory
) -> None:
    """`submit(wait=S)` returns a handle whose job is already terminal."""
    server = tidings_server()
    url: str = server.url
    worker_process(url)
    with Client(url) as client:
        handle = client.submit("echo", "hi", wait=15)
        assert handle.job.terminal
        assert handle.job.result == "hi"


@pytest.mark.timeout(60)
def test_progress_reported_by_the_handler_arrives_as_job_events(
    tidings_server: ServerFactory, store_url: str, worker_process: WorkerFactory
) -> None:
    """`handle.events()` shows queued/running, progress with message, and ends at succeeded."""
    server = tidings_server(store_url)
    url: str = server.url
    worker = worker_process(url)
    with Client(url) as client:
        handle = client.submit("slow", {"seconds": 1.5})
        events = list(handle.events())
    names = [name for name, _ in events]
    assert names[-1] == "succeeded", (names, worker.log())
    assert "running" in names
    progress = [info for name, info in events if name == "progress"]
    assert progress, names
    values = [info.progress for info in progress]
    assert all(v is not None and 0 < v <= 100 for v in values), values
    assert values == sorted(values)  # type: ignore[type-var]
    assert any((info.message or "").startswith("step ") for info in progress)
    final = events[-1][1]
    assert final.result == {"slept": 1.5, "steps": 15}
    assert final.payload == {"seconds": 1.5}  # filled in from the handle
    assert handle.job.status == "succeeded"


@pytest.mark.timeout(60)
def test_async_events_stream_ends_at_the_terminal_event(
    tidings_server: ServerFactory, worker_process: WorkerFactory
) -> None:
    """`AsyncJobHandle.events()` is the same stream, awaited."""
    server = tidings_server()
    url: str = server.url
    worker_process(url)

    async def main() -> list[str]:
        async with AsyncClient(url) as client:
            handle = await client.submit("slow", {"seconds": 0.5})
            return [name async for name, _ in handle.events()]

    names = asyncio.run(main())
    assert names[-1] == "succeeded"
    assert "progress" in names


@pytest.mark.timeout(60)
def test_cancelling_a_running_job_stops_its_handler_and_ends_it_cancelled(
    tidings_server: ServerFactory, store_url: str, worker_process: WorkerFactory
) -> None:
    """cancel() on a running `slow` job: the handler sees it at a heartbeat and stops."""
    server = tidings_server(store_url)
    url: str = server.url
    worker = worker_process(url)
    with Client(url) as client:
        handle = client.submit("slow", {"seconds": 30})
        wait_for(client, handle.id, lambda j: j.status == "running" and bool(j.progress))
        started = time.monotonic()
        after_cancel = handle.cancel()
        assert after_cancel.status in ("running", "cancelled")
        info = handle.wait(timeout=10)
        assert info.status == "cancelled", (info, worker.log())
        assert time.monotonic() - started < 5.0
        assert info.progress is not None and info.progress < 100


@pytest.mark.timeout(60)
def test_cancelling_a_queued_job_ends_it_at_once(
    tidings_server: ServerFactory,
) -> None:
    """No worker at all: the queued job is cancelled immediately; cancelling again is 409."""
    server = tidings_server()
    with Client(server.url) as client:
        handle = client.submit("echo", 1)
        assert handle.cancel().status == "cancelled"
        assert handle.wait(timeout=1).status == "cancelled"
        with pytest.raises(Exception, match="409"):
            handle.cancel()


@pytest.mark.timeout(60)
def test_wait_with_a_timeout_raises_job_timeout(
    tidings_server: ServerFactory,
) -> None:
    """No worker: wait(timeout=1) gives up after about a second with JobTimeout."""
    server = tidings_server()
    with Client(server.url) as client:
        handle = client.submit("echo", 1)
        started = time.monotonic()
        with pytest.raises(JobTimeout):
            handle.wait(timeout=1.0)
        assert 0.9 < time.monotonic() - started < 5.0


@pytest.mark.timeout(60)
def test_failing_job_is_retried_then_ends_failed_with_its_error(
    tidings_server: ServerFactory, store_url: str, worker_process: WorkerFactory
) -> None:
    """A handler that raises: attempt 1 retried, attempt 2 ends failed with the error object."""
    server = tidings_server(store_url)
    url: str = server.url
    worker = worker_process(url)
    with Client(url) as client:
        handle = client.submit("fail", {}, max_attempts=2)
        info = handle.wait(timeout=40)
        assert info.status == "failed", worker.log()
        assert info.attempt == 2
        error = dict(info.error)
        tb = error.pop("traceback")
        assert error == {
            "type": "RuntimeError",
            "message": "failing on purpose (attempt 2)",
            "attempt": 2,
        }
        # The handler's own frame (tests/e2e/worker_app.py: def fail) and its exception.
        assert tb.startswith("Traceback (most recent call last):\n"), tb
        assert 'worker_app.py", line' in tb and ", in fail\n" in tb, tb
        assert tb.rstrip().endswith("RuntimeError: failing on purpose (attempt 2)"), tb
        # GET /v1/jobs/{id} shows each attempt's error.
        got = httpx.get(f"{url}/v1/jobs/{handle.id}", timeout=10).json()
        assert [(e["attempt"], e["message"]) for e in got["errors"]] == [
            (1, "failing on purpose (attempt 1)"),
            (2, "failing on purpose (attempt 2)"),
        ]
        # Only the last failure keeps its traceback; `errors` holds each without one.
        assert got["error"]["traceback"].rstrip().endswith("(attempt 2)")
        assert all("traceback" not in e for e in got["errors"])
        # The dead job can be retried by hand.
        assert client.retry_job(handle.id).status == "queued"
    # The worker logged each failure with its traceback: a warning, then an error.
    log = worker.log()
    lines = log.splitlines()
    first = next(line for line in lines if "attempt 1: failed" in line)
    last = next(line for line in lines if "attempt 2: failed" in line)
    assert "WARNING" in first.upper() and "to be retried" in first, log
    assert "ERROR" in last.upper() and "not retried" in last, log
    assert log.count("Traceback (most recent call last)") >= 2, log


@pytest.mark.timeout(60)
def test_under_json_logs_a_failures_traceback_is_the_exception_field(
    tidings_server: ServerFactory, worker_process: WorkerFactory
) -> None:
    """`tidings worker --log-format json`: a failed attempt's line has the handler's
    traceback in `exception`, and its `message` is the one line saying what failed."""
    server = tidings_server()
    worker = worker_process(server.url, ["--log-format", "json"])
    with Client(server.url) as client:
        info = client.submit("fail", {}, max_attempts=1).wait(timeout=40)
        assert info.status == "failed", worker.log()
    deadline = time.monotonic() + 10
    while "attempt 1: failed" not in worker.log():
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.05)
    entries = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    [failed] = [e for e in entries if "attempt 1: failed" in e["message"]]
    assert failed["level"] == "ERROR", failed
    assert "\n" not in failed["message"] and "Traceback" not in failed["message"], failed
    assert failed["exception"].startswith("Traceback (most recent call last):"), failed
    assert failed["exception"].endswith("RuntimeError: failing on purpose (attempt 1)"), failed


@pytest.mark.timeout(60)
def test_sigterm_lets_the_running_job_finish_before_the_worker_exits(
    tidings_server: ServerFactory, store_url: str, worker_process: WorkerFactory
) -> None:
    """SIGTERM mid-job: the worker stops leasing, drains, the job succeeds, exit code 0."""
    server = tidings_server(store_url)
    url: str = server.url
    worker = worker_process(url)
    with Client(url) as client:
        handle = client.submit("slow", {"seconds": 3})
        wait_for(client, handle.id, lambda j: j.status == "running" and bool(j.progress))
        worker.proc.send_signal(signal.SIGTERM)
        # (A second SIGTERM would abandon the running job: just wait.)
        assert worker.stop(None, timeout=20) == 0, worker.log()
        info = handle.wait(timeout=5)
        assert info.status == "succeeded", worker.log()
        assert info.attempt == 1
        assert info.result == {"slept": 3.0, "steps": 30}
    assert "draining" in worker.log()


@pytest.mark.timeout(60)
def test_job_submitted_after_a_worker_stopped_stays_queued_for_the_next_worker(
    tidings_server: ServerFactory, store_url: str, worker_process: WorkerFactory
) -> None:
    """A worker stopped while its lease request is waiting takes no later job with it.

    Regression: the server kept the abandoned lease long poll alive and leased the next
    job to the closed connection, so it sat `running` until its lease expired.
    """
    server = tidings_server(store_url)
    url: str = server.url
    first = worker_process(url)
    with Client(url) as client:
        assert client.submit("echo", 1, wait=15).job.status == "succeeded", first.log()
        time.sleep(0.3)  # the worker is now waiting in a lease long poll
        assert first.stop(signal.SIGTERM, timeout=20) == 0, first.log()
        late = client.submit("echo", "late")
        time.sleep(1.0)
        assert late.refresh().status == "queued"
        worker_process(url)
        info = late.wait(timeout=15)
        assert info.status == "succeeded"
        assert info.attempt == 1


@pytest.mark.timeout(60)
def test_cli_submit_with_wait_prints_the_result(
    tidings_server: ServerFactory, worker_process: WorkerFactory
) -> None:
    """`tidings jobs submit echo '{"a":1}' --wait 10` prints the result JSON."""
    server = tidings_server()
    url: str = server.url
    worker_process(url)
    done = run_cli("jobs", "submit", "echo", '{"a":1}', "--wait", "10", url=url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"a":1}'


@pytest.mark.timeout(60)
def test_cli_wait_follows_a_job_and_exits_0_on_success(
    tidings_server: ServerFactory, worker_process: WorkerFactory
) -> None:
    """`tidings jobs wait ID` shows progress and exits 0 with the result; get/list work too."""
    server = tidings_server()
    url: str = server.url
    submitted = run_cli("jobs", "submit", "slow", '{"seconds": 1}', url=url)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    worker_process(url)
    waited = run_cli("jobs", "wait", job_id, url=url)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.strip() == '{"slept":1.0,"steps":10}'
    got = run_cli("jobs", "get", job_id, url=url)
    assert got.returncode == 0, got.stderr
    assert '"status":"succeeded"' in got.stdout
    listed = run_cli("jobs", "list", "--status", "succeeded", url=url)
    assert listed.returncode == 0, listed.stderr
    assert job_id[:8] in listed.stdout


@pytest.mark.timeout(60)
def test_cli_wait_exits_1_for_a_failed_job(
    tidings_server: ServerFactory, worker_process: WorkerFactory
) -> None:
    """`tidings jobs wait ID` on a job that fails exits 1 and names the error."""
    server = tidings_server()
    url: str = server.url
    worker_process(url)
    with Client(url) as client:
        handle = client.submit("fail", None, max_attempts=1)
    waited = run_cli("jobs", "wait", handle.id, url=url)
    assert waited.returncode == 1
    assert "failed" in waited.stderr
    assert "RuntimeError" in waited.stderr


@pytest.mark.timeout(90)
def test_worker_keeps_going_across_a_server_restart(
    tidings_server: ServerFactory, tmp_path: Path, worker_process: WorkerFactory
) -> None:
    """The server goes away and comes back: the worker retries with backoff, never exits."""
    server = tidings_server(f"sqlite:///{tmp_path / 'restart.db'}")
    url: str = server.url
    worker = worker_process(url)
    with Client(url) as client:
        assert client.submit("echo", 1, wait=15).job.status == "succeeded", worker.log()
        server.kill()
        time.sleep(2.0)  # the worker's lease requests fail meanwhile
        assert worker.proc.poll() is None, worker.log()
        server.start()
        info = client.submit("echo", 2).wait(timeout=20)
        assert info.status == "succeeded", worker.log()
        assert info.result == 2
    assert "lease failed" in worker.log()


@pytest.mark.timeout(90)
def test_a_worker_that_lost_its_lease_does_not_report_the_job(
    tidings_server: ServerFactory, store_url: str, worker_process: WorkerFactory
) -> None:
    """Worker A freezes past its lease; B reruns the job as attempt 2; A, thawed, is refused
    at its next heartbeat and discards its outcome; the job's result is B's."""
    server = tidings_server(store_url)
    url: str = server.url
    a = worker_process(url)
    with Client(url) as client:
        handle = client.submit("slow", {"seconds": 2})
        wait_for(client, handle.id, lambda j: j.status == "running" and bool(j.progress))
        a.proc.send_signal(signal.SIGSTOP)
        try:
            b = worker_process(url)
            # The 6 s lease runs out; the job comes back and B leases it as attempt 2.
            deadline = time.monotonic() + 30
            while client.get_job(handle.id).attempt < 2:
                assert time.monotonic() < deadline, b.log()
                time.sleep(0.1)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        info = handle.wait(timeout=20)
        assert info.status == "succeeded", (a.log(), b.log())
        assert info.attempt == 2
        time.sleep(1.0)
        assert client.get_job(handle.id).attempt == 2  # A did not disturb it
    assert "lease lost" in a.log() or "refused" in a.log(), a.log()


@pytest.mark.timeout(60)
def test_in_process_handlers_run_jobs_without_a_worker_process(
    tidings_server: ServerFactory, store_url: str
) -> None:
    """`TIDINGS_HANDLERS=MODULE:OBJ`: the server runs the Worker's handlers itself
    (`Worker.run_local`), progress and cancellation included."""
    server = tidings_server(store_url, env={"TIDINGS_HANDLERS": WORKER_APP})
    with Client(server.url) as client:
        assert client.submit("echo", {"x": 1}).wait(timeout=15).result == {"x": 1}
        assert client.submit("async_echo", 5).wait(timeout=15).result == {
            "echo": 5,
            "attempt": 1,
        }
        handle = client.submit("slow", {"seconds": 0.6})
        names = [name for name, _ in handle.events()]
        assert names[-1] == "succeeded"
        assert "progress" in names
        slow = client.submit("slow", {"seconds": 30})
        wait_for(client, slow.id, lambda j: j.status == "running" and bool(j.progress))
        slow.cancel()
        assert slow.wait(timeout=10).status == "cancelled"


# -- served job types and a worker's credentials -------------------------------------------


def submit_raw(url: str, type_: str, **headers: str) -> httpx.Response:
    r = httpx.post(f"{url}/v1/jobs", json={"type": type_}, headers=headers, timeout=10)
    assert r.status_code in (200, 202), r.text
    return r


@pytest.mark.timeout(60)
def test_a_submit_says_whether_a_worker_serves_its_type(
    tidings_server: ServerFactory, store_url: str, worker_process: WorkerFactory
) -> None:
    """`served` is false before any worker asked for the type, true once a running worker
    leases it (any form of the answer: 202, 200 after a wait, an idempotent repeat), and
    false for a type it does not lease (a typo)."""
    server = tidings_server(store_url)
    url: str = server.url
    assert submit_raw(url, "echo").json()["served"] is False
    worker = worker_process(url)
    deadline = time.monotonic() + 20
    while not submit_raw(url, "echo", **{"Idempotency-Key": "probe"}).json()["served"]:
        assert time.monotonic() < deadline, worker.log()
        time.sleep(0.2)
    queued = submit_raw(url, "echo")
    assert queued.status_code == 202 and queued.json()["served"] is True
    finished = submit_raw(url, "echo", Prefer="wait=10")
    assert finished.status_code == 200, worker.log()
    assert finished.json()["status"] == "succeeded" and finished.json()["served"] is True
    again = submit_raw(url, "echo", **{"Idempotency-Key": "probe"})
    assert again.json()["served"] is True
    typo = submit_raw(url, "echoo")
    assert typo.json()["served"] is False
    # GET answers carry no `served`: it belongs to the submit.
    assert "served" not in httpx.get(f"{url}/v1/jobs/{typo.json()['id']}", timeout=10).json()


@pytest.mark.timeout(60)
def test_a_worker_refused_by_the_host_gate_is_told_what_the_server_said(
    tidings_server: ServerFactory,
) -> None:
    """A loopback server refuses a Host it does not know (403): the worker stops with the
    server's words first (`--allowed-hosts`), not with advice to grant work."""
    # 127.0.0.1 written as an IPv4-mapped IPv6 address: it reaches the server, and its
    # Host is no loopback name the gate knows.
    name = "[::ffff:127.0.0.1]"
    server = tidings_server()
    done = subprocess.run(
        worker_command(f"http://{name}:{server.port}", None), cwd=ROOT, env=worker_env(),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    assert "is not this loopback server's" in said and "--allowed-hosts" in said, done.stderr
    assert said.index("is not this loopback server's") < said.index("the server at"), said
    assert "--work" not in said and "grant" not in said, done.stderr


def worker_command(url: str, token: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "tidings", "worker", WORKER_APP, "--url", url]
    return cmd if token is None else [*cmd, "--token", token]


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "TIDINGS_TOKEN"}


@pytest.mark.timeout(90)
def test_a_worker_the_server_refuses_exits_with_what_to_do(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """Under --require-auth: no token → exit 2 at once saying to pass --token made by
    `tidings tokens create` for a user with --work; a token whose user may not work its
    types → exit 2 naming them; a token revoked while it runs → the worker stops, exit 2."""
    store = f"sqlite:///{tmp_path / 'auth.db'}"
    cli_ok("users", "add", "reader", "--store", store, "--password-stdin", stdin="pw-reader-1\n")
    cli_ok(
        "users", "add", "robot", "--store", store, "--password-stdin",
        "--work", "*", "--submit", "*", stdin="pw-robot-1\n",
    )  # fmt: skip
    reader = cli_ok("tokens", "create", "reader", "--store", store).strip()
    robot = cli_ok("tokens", "create", "robot", "--store", store).strip()
    server = tidings_server(store, args=["--require-auth"])
    url: str = server.url

    started = time.monotonic()
    done = subprocess.run(
        worker_command(url, None), cwd=ROOT, env=worker_env(), capture_output=True,
        text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started < 20
    said = " ".join(done.stderr.split())  # the console may wrap it
    assert "tidings worker:" in said, done.stderr
    for needed in ("--token", "TIDINGS_TOKEN", "tidings tokens create USER", "--work TYPE"):
        assert needed in said, done.stderr

    done = subprocess.run(
        worker_command(url, reader), cwd=ROOT, env=worker_env(), capture_output=True,
        text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    said = " ".join(done.stderr.split())
    assert "may not work" in said and "echo" in said, done.stderr
    assert "tidings users grant USER --work TYPE" in said, done.stderr

    log_path = tmp_path / "robot.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            worker_command(url, robot), cwd=ROOT, env=worker_env(), stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        with Client(url, token=robot) as client:
            assert client.submit("echo", {"n": 1}).wait(timeout=20).result == {"n": 1}
        cli_ok("tokens", "revoke", token_key(robot)[:12], "--store", store)
        assert proc.wait(30) == 2, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    said = " ".join(log_path.read_text().split())
    assert "refused this worker's credentials" in said and "--token" in said, said


@pytest.mark.timeout(60)
def test_handlers_inside_the_server_serve_their_types(tidings_server: ServerFactory) -> None:
    """`serve --handlers`: the in-server worker leases through the same job service, so its
    types are served (submit says so, JSON-RPC calls run) and others are not (-32601)."""
    server = tidings_server("memory://", args=["--handlers", WORKER_APP])
    url: str = server.url
    deadline = time.monotonic() + 20
    while not submit_raw(url, "echo").json()["served"]:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    call = {"jsonrpc": "2.0", "method": "echo", "params": {"n": 5}, "id": 1}
    r = httpx.post(f"{url}/v1/rpc", json=call, timeout=20)
    assert r.json() == {"jsonrpc": "2.0", "result": {"n": 5}, "id": 1}, r.text
    r = httpx.post(f"{url}/v1/rpc", json={**call, "method": "no.such.handler"}, timeout=20)
    assert r.json()["error"]["code"] == -32601, r.text
    jobs = httpx.get(f"{url}/v1/jobs", params={"type": "no.such.handler"}, timeout=10).json()
    assert jobs["jobs"] == []
