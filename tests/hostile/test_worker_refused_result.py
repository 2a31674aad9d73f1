"""A result the server refuses fails its job at once, saying why.

The breakage: a handler returning a value nested past --max-depth had its report refused
(400) and the worker SDK only logged it, so the job sat `running` until its lease ran out,
then ran again to produce the same refused result.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.e2e.test_worker_sdk import WorkerProcess
from tidings.sdk.client import Client


@pytest.mark.timeout(60)
def test_a_refused_result_fails_the_job_at_once_without_a_retry(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    srv = tidings_server()
    # A long lease: a job left running for nobody would not come back within the test.
    os.environ["TEST_WORKER_LEASE"] = "120"
    try:
        worker = WorkerProcess(srv.url, tmp_path / "worker.log", ["--concurrency", "1"])
    finally:
        del os.environ["TEST_WORKER_LEASE"]
    try:
        with Client(srv.url) as client:
            job = client.submit("deep", {"depth": 100}, max_attempts=3).wait(30)
        assert job.status == "failed", worker.log()
        assert job.attempt == 1
        assert job.error is not None
        assert job.error["type"] == "ResultRefused"
        assert "nested" in job.error["message"], job.error
    finally:
        worker.stop()
