"""The Worker that tests/e2e/test_jobs_workers.py runs as real processes:
`python -m tidings worker tests.e2e.jobs_worker_app:worker --url URL --concurrency N`.

The lease is short (JOBS_WORKER_LEASE, default 2 s) so the jobs of a killed worker come
back to the others quickly. Results carry the worker's pid and the attempt, so a test can
tell which process finished a job, and on which delivery.
"""

from __future__ import annotations

import os
import time
from typing import Any

from tidings.sdk.worker import JobContext, Worker

worker = Worker(concurrency=4, lease=float(os.environ.get("JOBS_WORKER_LEASE", "2")))


@worker.handler("noop")
def noop(job: JobContext) -> Any:
    """Return the payload unchanged."""
    return job.payload


@worker.handler("sleepy")
def sleepy(job: JobContext) -> dict[str, Any]:
    """Sleep `payload` seconds (a number); report who slept, on which attempt."""
    seconds = float(job.payload)
    time.sleep(seconds)
    return {"slept": seconds, "pid": os.getpid(), "attempt": job.attempt}


@worker.handler("progressive")
def progressive(job: JobContext) -> dict[str, Any]:
    """Report progress in `payload` steps of 0.1 s, the last one (100%) just before returning."""
    steps = int(job.payload)
    for i in range(steps):
        time.sleep(0.1)
        job.progress(100.0 * (i + 1) / steps, f"step {i + 1}/{steps}")
    return {"steps": steps}
