"""Jobs a user can debug, end to end: `tidings jobs submit` warns when no worker has asked
for the type lately (the SDK's `JobHandle.served`), and a real worker's failing handler
leaves its traceback for `tidings jobs get` and `tidings jobs dead`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.test_cli_commands import piped
from tidings.sdk.client import AsyncClient, Client

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]


def warning_for(type_: str) -> str:
    return (
        f"tidings jobs submit: warning: no worker has asked for jobs of type {type_!r} lately: "
        "is a worker running with a handler for it? (`tidings jobs queues` lists the types "
        "in use)\n"
    )


@pytest.fixture
def srv(tidings_server: ServerFactory) -> ServerProcess:
    return tidings_server()


@pytest.fixture
def worker(srv: ServerProcess, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`tidings worker tests.e2e.worker_app:worker` against `srv` (echo, fail, …)."""
    log = (tmp_path / "worker.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tidings",
            "worker",
            "tests.e2e.worker_app:worker",
            "--url",
            srv.url,
        ],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    log.close()


def test_submitting_a_type_no_worker_asked_for_warns_and_still_prints_the_id(
    srv: ServerProcess,
) -> None:
    done = piped("jobs", "submit", "transcodeX", '{"video": "v.mp4"}', "--url", srv.url)
    assert done.returncode == 0
    assert done.stderr == warning_for("transcodeX")
    job_id = done.stdout.strip()
    assert json.loads(piped("jobs", "get", job_id, "--url", srv.url).stdout)["status"] == "queued"


def test_the_sdk_says_whether_a_submitted_type_is_served(
    srv: ServerProcess, worker: subprocess.Popen[bytes]
) -> None:
    with Client(srv.url) as client:
        assert client.submit("nobody-works-this").served is False
        deadline = time.monotonic() + 20
        while client.submit("echo", 1).served is not True:
            assert worker.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the worker never counted as serving echo"
            time.sleep(0.2)
        assert client.job(client.submit("echo", 2).id).served is None  # not a submit answer

    async def served() -> tuple[bool | None, bool | None]:
        async with AsyncClient(srv.url) as client:
            return (await client.submit("echo")).served, (await client.submit("nope")).served

    assert asyncio.run(served()) == (True, False)
    quiet = piped("jobs", "submit", "echo", '"hi"', "--wait", "10", "--url", srv.url)
    assert quiet.returncode == 0
    assert quiet.stderr == ""
    assert json.loads(quiet.stdout) == "hi"


def test_a_real_handlers_traceback_shows_on_jobs_get_and_in_the_dead_letters(
    srv: ServerProcess, worker: subprocess.Popen[bytes]
) -> None:
    submitted = piped(
        "jobs", "submit", "fail", "--max-attempts", "1", "--wait", "20", "--url", srv.url
    )
    assert submitted.returncode == 1, submitted
    job_id = json.loads(piped("jobs", "dead", "--json", "--url", srv.url).stdout)[0]["id"]
    assert f"job {job_id} failed (attempt 1/1): RuntimeError: failing on purpose" in (
        submitted.stderr
    )

    got = piped("jobs", "get", job_id, "--traceback", "--url", srv.url)
    assert got.returncode == 0
    error = json.loads(got.stdout)["error"]
    assert error["type"] == "RuntimeError"
    assert error["attempt"] == 1
    assert "Traceback (most recent call last):" in error["traceback"]
    assert "worker_app.py" in error["traceback"]
    assert f"job {job_id} (fail) failed: attempt 1 raised\n" in got.stderr
    assert "RuntimeError: failing on purpose (attempt 1)" in got.stderr
    assert 'worker_app.py", line' in got.stderr

    dead = piped("jobs", "dead", "--url", srv.url)
    (row,) = (line for line in dead.stdout.splitlines() if job_id in line)
    assert "RuntimeError: failing on purpose (attempt 1)" in row

    # Listings leave tracebacks out: `--traceback` fetches each listed job for its own.
    assert (
        "traceback"
        not in json.loads(piped("jobs", "dead", "--json", "--url", srv.url).stdout)[0]["error"]
    )
    second = piped(
        "jobs", "submit", "fail", "--max-attempts", "1", "--wait", "20", "--url", srv.url
    )
    assert second.returncode == 1, second
    traced = piped("jobs", "dead", "--traceback", "--limit", "2", "--url", srv.url)
    assert traced.returncode == 0, traced
    assert traced.stderr.count("attempt 1 raised\n") == 2, traced.stderr
    assert traced.stderr.count("RuntimeError: failing on purpose (attempt 1)") == 2
    assert f"job {job_id} (fail) failed: attempt 1 raised\n" in traced.stderr
    as_json = piped("jobs", "dead", "--traceback", "--json", "--limit", "1", "--url", srv.url)
    [newest] = json.loads(as_json.stdout)
    assert "Traceback (most recent call last):" in newest["error"]["traceback"]
    assert as_json.stderr.count("attempt 1 raised\n") == 1, as_json.stderr
