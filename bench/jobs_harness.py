"""Profile the jobs pipeline: one server, one worker, the jobs client; CPU per process.

Usage (from a checkout whose .venv has tidings installed):

    .venv/bin/python bench/jobs_harness.py STORE [JOBS] [CONCURRENCY] [--async] [--metrics]

STORE is a store URL; `@TMP@` in it becomes a fresh temporary folder (for
`sqlite:///@TMP@/jobs.db`). Set TIDINGS_SQLITE_SYNCHRONOUS=NORMAL for the non-fsync row.
CONCURRENCY is the worker's `--concurrency`; `default` (the default) passes none, as
bench/run.py does. `--async` runs the `async def` no-op handler instead of the plain one.
Prints one JSON line — rate, seconds, and the CPU seconds the server, the worker and the
client spent on the measured run — then, with --metrics, the server's request counts and
latency sums per route (from /metrics) and its store commit counters. `make bench`
compares against Celery; this is the instrument for changing tidings itself (run it
against two checkouts, alternating, and compare medians: one run is noise here).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), 0.2).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise SystemExit("the server did not start listening")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if not args:
        raise SystemExit(__doc__)
    store = args[0]
    jobs = int(args[1]) if len(args) > 1 else 4000
    concurrency = args[2] if len(args) > 2 else "default"  # as bench/run.py
    target = "noop_worker:async_worker" if "--async" in sys.argv else "noop_worker:worker"
    flags = [] if concurrency == "default" else ["--concurrency", concurrency]
    tidings = str(Path(sys.executable).parent / "tidings")
    sys.path.insert(0, str(BENCH))
    import jobs_client

    with tempfile.TemporaryDirectory(prefix="tidings-jobs-") as tmp:
        port = free_port()
        url = store.replace("@TMP@", tmp)
        serve = ["serve", "--host", HOST, "--port", str(port), "--store", url]
        server = subprocess.Popen([tidings, *serve, "--log-level", "warning"])
        worker = None
        try:
            wait_port(port, server)
            work = ["worker", target, "--url", f"http://{HOST}:{port}", *flags]
            worker = subprocess.Popen(
                [tidings, *work, "--log-level", "warning"],
                env={**os.environ, "PYTHONPATH": str(BENCH)},
            )
            jobs_client.run(HOST, port, 40, 4)  # warm-up: both processes are up and leasing
            before = (cpu_seconds(server.pid), cpu_seconds(worker.pid), time.process_time())
            secs = jobs_client.run(HOST, port, jobs, 4)
            after = (cpu_seconds(server.pid), cpu_seconds(worker.pid), time.process_time())
            cpu = [round(b - a, 2) for a, b in zip(before, after, strict=True)]
            print(
                json.dumps(
                    {
                        "store": store.split(":", 1)[0],
                        "jobs": jobs,
                        "rate": round(jobs / secs, 1),
                        "secs": round(secs, 2),
                        "cpu_server": cpu[0],
                        "cpu_worker": cpu[1],
                        "cpu_client": cpu[2],
                    }
                )
            )
            if "--metrics" in sys.argv:
                with urllib.request.urlopen(f"http://{HOST}:{port}/metrics") as resp:
                    text = resp.read().decode()
                for line in text.splitlines():
                    timed = "request_duration" in line and ("_count" in line or "_sum" in line)
                    if timed or line.startswith("tidings_store_"):
                        print(line)
        finally:
            for proc in (worker, server):
                if proc is not None:
                    proc.terminate()
                    proc.wait(15)


if __name__ == "__main__":
    main()
