"""Where a jobs run's server time goes, one phase at a time: CPU per job of each part.

Usage (from a checkout whose .venv has tidings installed):

    .venv/bin/python bench/jobs_phases.py STORE [JOBS] [--async]

STORE is a store URL (`@TMP@` becomes a fresh folder, as in jobs_harness.py). The jobs
of bench/run.py's measurement, taken apart on one server:

1. submit: JOBS no-op jobs from 4 threads (`POST /v1/jobs`), no worker running;
2. work: the default `tidings worker` (bench/noop_worker.py) leases, runs and reports
   them all (nothing else talks to the server);
3. read: the 4 threads ask `GET /v1/jobs/{id}?wait=30` for each (all finished).

Prints one JSON line per phase: its seconds, requests per route (and the SQLite store's
commits: each durable one is an fsync), and the CPU µs per job
of the server's event loop thread, of its other threads (the SQLite writer), of the
worker and of the client. The three phases' server figures add up to what one job costs
the server in the measurement, where they overlap.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from jobs_client import _call  # noqa: E402
from jobs_harness import HOST, free_port, wait_port  # noqa: E402


def threads_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds so far of a process's main thread and of its other threads."""
    tick = os.sysconf("SC_CLK_TCK")
    main = rest = 0.0
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        spent = (int(fields[11]) + int(fields[12])) / tick
        if task.endswith(f"/{pid}"):
            main += spent
        else:
            rest += spent
    return main, rest


def route_counts(port: int) -> dict[str, float]:
    """Requests per route so far (`/metrics`), and the store's commits (SQLite)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics") as resp:
        text = resp.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tidings_store_commits_total "):
            counts["store commits"] = float(line.rsplit(" ", 1)[1])
        if line.startswith("tidings_request_duration_seconds_count"):
            labels, value = line.rsplit(" ", 1)
            route = labels.split('route="', 1)[1].split('"', 1)[0]
            method = labels.split('method="', 1)[1].split('"', 1)[0]
            counts[f"{method} {route}"] = counts.get(f"{method} {route}", 0) + float(value)
    return counts


def in_threads(port: int, shares: list[list[str]] | list[int], work: str) -> list[list[str]]:
    """4 threads, one connection each: submit `n` jobs each, or read the ids given."""
    out: list[list[str]] = [[] for _ in shares]
    errors: list[BaseException] = []

    def run(i: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=60)
        try:
            share = shares[i]
            if work == "submit":
                assert isinstance(share, int)
                body = json.dumps({"type": "noop"}).encode()
                out[i] = [_call(conn, "POST", "/v1/jobs", body)["id"] for _ in range(share)]
            else:
                assert isinstance(share, list)
                for job_id in share:
                    job = _call(conn, "GET", f"/v1/jobs/{job_id}?wait=30", None)
                    assert job["status"] == "succeeded", job
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(shares))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def succeeded(port: int) -> int:
    """Jobs of type noop that succeeded (`GET /v1/queues`)."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/v1/queues") as resp:
        counts: dict[str, int] = json.loads(resp.read())["queues"].get("noop", {})
    return counts.get("succeeded", 0)


def wait_listed(port: int) -> None:
    """Return once the server lists a worker (its first lease is under way)."""
    for _ in range(600):
        with urllib.request.urlopen(f"http://{HOST}:{port}/v1/workers") as resp:
            if json.loads(resp.read())["workers"]:
                return
        time.sleep(0.05)
    raise SystemExit("the worker was not listed within 30 s")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not args:
        raise SystemExit(__doc__)
    store, jobs = args[0], int(args[1]) if len(args) > 1 else 4000
    jobs -= jobs % 4
    target = "noop_worker:async_worker" if "--async" in sys.argv else "noop_worker:worker"
    tidings = str(Path(sys.executable).parent / "tidings")
    per = 1e6 / jobs
    with tempfile.TemporaryDirectory(prefix="tidings-phases-") as tmp:
        port = free_port()
        url = store.replace("@TMP@", tmp)
        serve = ["serve", "--host", HOST, "--port", str(port), "--store", url]
        server = subprocess.Popen([tidings, *serve, "--log-level", "warning"])
        worker: subprocess.Popen[bytes] | None = None

        def snapshot() -> tuple[float, float, float, float, dict[str, float]]:
            loop, other = threads_cpu(server.pid)
            working = sum(threads_cpu(worker.pid)) if worker is not None else 0.0
            return loop, other, working, time.process_time(), route_counts(port)

        def report(phase: str, before: tuple[Any, ...], secs: float) -> None:
            after = snapshot()
            was = before[4]
            figures = {
                "phase": phase,
                "secs": round(secs, 2),
                "server_loop_us": round((after[0] - before[0]) * per),
                "server_other_us": round((after[1] - before[1]) * per),
                "worker_us": round((after[2] - before[2]) * per),
                "client_us": round((after[3] - before[3]) * per),
                "requests": {
                    k: int(v - was.get(k, 0))
                    for k, v in after[4].items()
                    if v > was.get(k, 0) and "/metrics" not in k
                },
            }
            print(json.dumps(figures), flush=True)

        try:
            wait_port(port, server)
            in_threads(port, [5] * 4, "submit")  # warm-up: the paths are loaded

            before, t0 = snapshot(), time.perf_counter()
            ids = in_threads(port, [jobs // 4] * 4, "submit")
            report("submit", before, time.perf_counter() - t0)

            before, t0 = snapshot(), time.perf_counter()
            worker = subprocess.Popen(
                [
                    tidings,
                    "worker",
                    target,
                    "--url",
                    f"http://{HOST}:{port}",
                    "--log-level",
                    "warning",
                ],
                env={**os.environ, "PYTHONPATH": str(BENCH)},
            )
            wait_listed(port)
            # Its start-up is not the work: its CPU counts from here (one lease in).
            before = (*before[:2], sum(threads_cpu(worker.pid)), *before[3:])
            while succeeded(port) < jobs + 20:
                time.sleep(0.02)
            report("work", before, time.perf_counter() - t0)

            before, t0 = snapshot(), time.perf_counter()
            in_threads(port, ids, "read")
            report("read", before, time.perf_counter() - t0)
        finally:
            for proc in (worker, server):
                if proc is not None:
                    proc.terminate()
                    proc.wait(15)


if __name__ == "__main__":
    main()
