"""The tidings worker of the jobs measurement: one no-op handler.

Run as `tidings worker noop_worker:worker --url URL` with bench/ on PYTHONPATH.
"""

from __future__ import annotations

import os

from tidings import JobContext, Worker

worker = Worker(concurrency=int(os.environ.get("BENCH_WORKER_CONCURRENCY", "16")))


@worker.handler("noop")
def noop(job: JobContext) -> None:
    """Do nothing: the measurement is the queue's own cost."""
