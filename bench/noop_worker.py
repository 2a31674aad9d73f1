"""The tidings workers of the jobs measurement: one no-op handler each, at the defaults.

Run as `tidings worker noop_worker:worker --url URL` (a sync handler, like the README's)
or `noop_worker:async_worker` (an `async def` handler) with bench/ on PYTHONPATH. Neither
sets a concurrency: the measurement is of the default `tidings worker` (`--concurrency`
overrides it).
"""

from __future__ import annotations

from tidings import JobContext, Worker

worker = Worker()
async_worker = Worker()


@worker.handler("noop")
def noop(job: JobContext) -> None:
    """Do nothing: the measurement is the queue's own cost."""


@async_worker.handler("noop")
async def async_noop(job: JobContext) -> None:
    """Do nothing, on the worker's event loop."""
