"""The Worker that the e2e tests run as a real process:
`python -m tidings worker tests.e2e.worker_app:worker --url URL`.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from tidings.sdk.worker import JobContext, Worker

# A short lease, so a lost worker's job comes back quickly; heartbeats every lease / 3.
worker = Worker(concurrency=4, lease=float(os.environ.get("TEST_WORKER_LEASE", "6")))


@worker.handler("echo")
def echo(job: JobContext) -> Any:
    """Return the payload unchanged."""
    return job.payload


@worker.handler("async_echo")
async def async_echo(job: JobContext) -> Any:
    """Return the payload unchanged, from a coroutine."""
    await asyncio.sleep(0)
    return {"echo": job.payload, "attempt": job.attempt}


@worker.handler("slow")
def slow(job: JobContext) -> dict[str, Any]:
    """Sleep `payload["seconds"]` in 0.1 s steps, reporting progress, stopping if cancelled."""
    seconds = float(job.payload.get("seconds", 1.0))
    steps = max(1, round(seconds / 0.1))
    for i in range(steps):
        job.raise_if_cancelled()
        time.sleep(seconds / steps)
        job.progress(100.0 * (i + 1) / steps, f"step {i + 1}/{steps}")
    return {"slept": seconds, "steps": steps}


@worker.handler("quiet")
def quiet(job: JobContext) -> dict[str, Any]:
    """Sleep `payload["seconds"]` without a progress report: only heartbeats keep the lease."""
    seconds = float(job.payload.get("seconds", 1.0))
    time.sleep(seconds)
    return {"slept": seconds}


@worker.handler("fail")
def fail(job: JobContext) -> None:
    """Always raise."""
    raise RuntimeError(f"failing on purpose (attempt {job.attempt})")


@worker.handler("deep")
def deep(job: JobContext) -> Any:
    """Return a value nested `payload["depth"]` lists deep (past the server's --max-depth)."""
    value: Any = []
    for _ in range(int(job.payload.get("depth", 100))):
        value = [value]
    return value


@worker.handler("parents")
def parents(job: JobContext) -> dict[str, Any]:
    """Return the payload and what the job sees of its parents (`after`)."""
    return {
        "payload": job.payload,
        "parents": [
            {
                "id": p.id,
                "type": p.type,
                "result": p.result,
                **({"omitted": p.omitted} if p.omitted else {}),
            }
            for p in job.parents
        ],
    }
