"""A real worker for the job bridges' tests: `python -m tidings worker
tests.e2e.worker_app:worker` (handlers `echo`, `slow`, `fail`), and the job API reads the
tests check what the bridges made with."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[3]
APP = "tests.e2e.worker_app:worker"


class WorkerProcess:
    """One `python -m tidings worker` process, its output in a log file."""

    def __init__(self, url: str, log_path: Path) -> None:
        cmd = [
            sys.executable, "-m", "tidings", "worker", APP,
            "--url", url, "--concurrency", "4", "--log-level", "info",
        ]  # fmt: skip
        # A short lease: a job whose worker lost the server comes back soon.
        env = {**os.environ, "TEST_WORKER_LEASE": "3"}
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def workers(tmp_path: Path) -> Iterator[Callable[[str], WorkerProcess]]:
    """A test module's `worker` fixture (`yield from workers(tmp_path)`): a factory,
    `worker(server_url)` starts a worker process; all are killed after."""
    started: list[WorkerProcess] = []

    def start(url: str) -> WorkerProcess:
        w = WorkerProcess(url, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def jobs_of(url: str, type_: str) -> list[dict[str, Any]]:
    """Every job of `type_` the server holds (newest first)."""
    r = httpx.get(f"{url}/v1/jobs", params={"type": type_, "limit": 100}, timeout=20)
    r.raise_for_status()
    out: list[dict[str, Any]] = r.json()["jobs"]
    return out


def job(url: str, job_id: str) -> dict[str, Any]:
    """One job as GET /v1/jobs/{id} shows it."""
    r = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=20)
    r.raise_for_status()
    found: dict[str, Any] = r.json()
    return found
