"""Celery side of the jobs measurement: submit from 4 threads, then wait for each result.

Usage (peers' venv, cwd bench/peers): `python celery_client.py JOBS [THREADS] [WARMUP]`.
Prints one JSON line: {"jobs", "secs", "rate"}.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from celery_app import noop


def run(jobs: int, threads: int) -> float:
    """Each thread submits its share, then waits for each of its results; returns seconds."""
    share = [jobs // threads + (1 if i < jobs % threads else 0) for i in range(threads)]
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            pending = [noop.apply_async() for _ in range(n)]
            for result in pending:
                result.get(timeout=60)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=client, args=(n,)) for n in share]
    t0 = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    secs = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return secs


def main() -> None:
    jobs = int(sys.argv[1])
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    run(warmup, threads)
    secs = run(jobs, threads)
    print(json.dumps({"jobs": jobs, "secs": round(secs, 3), "rate": round(jobs / secs, 1)}))


if __name__ == "__main__":
    main()
