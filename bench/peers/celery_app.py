"""Peer for the jobs measurement: a Celery app with one no-op task, broker and results on Redis.

`BENCH_REDIS_URL` names the private redis-server that bench/run.py starts. Run the worker
with the peers' venv: `celery -A celery_app worker --pool prefork -c 2` (cwd bench/peers).
"""

from __future__ import annotations

import os

from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("bench", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_ignore_result=False,
    result_expires=3600,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop() -> None:
    """Do nothing: the measurement is the queue's own cost."""
