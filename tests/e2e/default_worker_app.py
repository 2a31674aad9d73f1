"""Workers that set no concurrency, for the defaults test in tests/e2e/test_workers_list.py:
`python -m tidings worker tests.e2e.default_worker_app:sync_worker --url URL` (or
`async_worker`, `mixed_worker`).

`nap` sleeps `payload` seconds and returns when it ran, so a test can count how many jobs
ran at once.
"""

from __future__ import annotations

import asyncio
import time

from tidings.sdk.worker import JobContext, Worker

sync_worker = Worker()
async_worker = Worker()
mixed_worker = Worker()


@sync_worker.handler("nap")
def nap(job: JobContext) -> dict[str, float]:
    """Sleep `payload` seconds in the handler's thread."""
    started = time.time()
    time.sleep(float(job.payload))
    return {"started": started, "ended": time.time()}


@async_worker.handler("nap")
async def async_nap(job: JobContext) -> dict[str, float]:
    """Sleep `payload` seconds on the worker's event loop."""
    started = time.time()
    await asyncio.sleep(float(job.payload))
    return {"started": started, "ended": time.time()}


mixed_worker.handler("nap")(async_nap)
mixed_worker.handler("sync_nap")(nap)
