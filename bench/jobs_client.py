"""tidings side of the jobs measurement: submit from 4 threads, then wait for each result.

Usage: `python jobs_client.py HOST PORT JOBS [THREADS] [WARMUP]`. Each thread keeps one
HTTP/1.1 connection, POSTs its share of `{"type": "noop"}` to /v1/jobs, then asks
`GET /v1/jobs/{id}?wait=30` for each. Prints one JSON line:
{"jobs", "secs", "rate", "cpu_s"} (cpu_s: its CPU seconds in the measured run), and
"cpu_NAME" for each process BENCH_CPU_PIDS names (`NAME=PID,...`) over the same run.
The same shape as peers/celery_client.py (`apply_async`, then `.get()`).
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time

SUBMIT = json.dumps({"type": "noop"}).encode()
HEADERS = {"Content-Type": "application/json"}


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


def _call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None) -> dict:
    conn.request(method, path, body=body, headers=HEADERS if body else {})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: HTTP {resp.status} {data[:200]!r}")
    return json.loads(data)


def _wait_all(conn: http.client.HTTPConnection, ids: list[str]) -> None:
    for job_id in ids:
        job = _call(conn, "GET", f"/v1/jobs/{job_id}?wait=30", None)
        if job["status"] != "succeeded":
            raise RuntimeError(f"job {job_id} ended {job['status']}")


def run(host: str, port: int, jobs: int, threads: int) -> float:
    """Each thread submits its share, then waits for each of its jobs; returns seconds."""
    share = [jobs // threads + (1 if i < jobs % threads else 0) for i in range(threads)]
    errors: list[BaseException] = []

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        try:
            ids = [_call(conn, "POST", "/v1/jobs", SUBMIT)["id"] for _ in range(n)]
            _wait_all(conn, ids)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

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
    host, port, jobs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    threads = int(sys.argv[4]) if len(sys.argv) > 4 else 4
    warmup = int(sys.argv[5]) if len(sys.argv) > 5 else 20
    run(host, port, warmup, threads)
    cpu, others = time.process_time(), _others_cpu()
    secs = run(host, port, jobs, threads)
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
