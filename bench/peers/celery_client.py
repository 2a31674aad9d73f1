"""Celery side of the jobs measurement: submit from 4 threads, then wait for each result.

Usage (peers' venv, cwd bench/peers): `python celery_client.py JOBS [THREADS] [WARMUP]`.
Prints one JSON line: {"jobs", "secs", "rate", "cpu_s"} (its CPU seconds in
the measured run), and "cpu_NAME" for each process BENCH_CPU_PIDS names (`NAME=PID,...`)
over the same run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

from celery_app import noop


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (from /proc); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _others_cpu() -> dict[str, float]:
    """CPU seconds so far of the processes BENCH_CPU_PIDS names (`name=pid,...`; a name
    given more than once sums its processes), by name."""
    spent: dict[str, float] = {}
    for item in filter(None, os.environ.get("BENCH_CPU_PIDS", "").split(",")):
        name, pid = item.split("=")
        spent[name] = spent.get(name, 0.0) + _cpu_seconds(int(pid))
    return spent


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
    cpu, others = time.process_time(), _others_cpu()
    secs = run(jobs, threads)
    cpu = time.process_time() - cpu
    spent = {f"cpu_{k}": round(v - others[k], 3) for k, v in _others_cpu().items()}
    print(
        json.dumps(
            {
                "jobs": jobs,
                "secs": round(secs, 3),
                "rate": round(jobs / secs, 1),
                "cpu_s": round(cpu, 3),
                **spent,
            }
        )
    )


if __name__ == "__main__":
    main()
