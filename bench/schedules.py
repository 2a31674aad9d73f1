#!/usr/bin/env python3
"""Schedules on two nodes: a schedule every second, fired by two tidings servers sharing
one Redis — how many firings, none twice, none missed, and how late each was.

Usage: `.venv/bin/python bench/schedules.py [--seconds 60] [--json]`.

It starts a private redis-server on a free loopback port (nothing on disk) and two
`tidings serve` processes on it, puts a schedule `every: 1` of a fresh job type on the
first, lets it run for `--seconds` slots (whole seconds), then deletes it through the
second, half a second after the last. Then it reads:

* the jobs of the type (each firing's job id is `sched:{name}:{slot}`): firings, and the
  slots of the run that have no job (missed);
* duplicates: slots whose job channel holds more than one `queued` event (the job written
  twice), and firings the nodes counted beyond the jobs (`tidings_schedule_firings_total`
  of both: a node counts a slot when its compare-and-set advanced the schedule past it,
  so a slot counted by both was advanced twice);
* drift: each job's `created_at` (when a node submitted it) minus its slot: p50, p99, max.

Prints a table; with --json, also one JSON line of every figure last. Exits 1 unless every
slot fired once. It stops every process it started (by PID).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tidings.protocol.codecs import parse_time
from tidings.protocol.schedules import slot_of_job_id

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {HOST}:{port} after {timeout}s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process this script started, by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A private redis-server on a free loopback port, keeping nothing on disk."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian package redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tidings-sched-redis-") as tmp:
        argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        proc = subprocess.Popen(
            [*argv, "--dir", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            wait_port(port, proc, "redis-server")
            yield f"redis://{HOST}:{port}/0"
        finally:
            stop(proc)


@contextlib.contextmanager
def tidings_server(store: str) -> Iterator[str]:
    """`tidings serve` on `store`; yields its base URL once /readyz answers."""
    port = free_port()
    tidings = Path(sys.executable).parent / "tidings"
    argv = [str(tidings), "serve", "--host", HOST, "--port", str(port), "--store", store]
    proc = subprocess.Popen([*argv, "--log-level", "warning"])
    try:
        wait_port(port, proc, "tidings serve")
        url = f"http://{HOST}:{port}"
        for _ in range(600):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        stop(proc)


def firings_counted(base: str) -> int:
    """The slots a node fired (`tidings_schedule_firings_total`)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    m = re.search(r"^tidings_schedule_firings_total ([0-9.e+]+)$", text, re.MULTILINE)
    return 0 if m is None else int(float(m.group(1)))


def jobs_of(base: str, type_: str) -> list[dict[str, Any]]:
    """Every job of `type_`, following the pages."""
    jobs: list[dict[str, Any]] = []
    params: dict[str, Any] = {"type": type_, "limit": 1000}
    with httpx.Client(base_url=base, timeout=30) as http:
        while True:
            page = http.get("/v1/jobs", params=params).json()
            jobs += page["jobs"]
            if page["next"] is None:
                return jobs
            params["before"] = page["next"]


def queued_events(base: str, job_id: str) -> int:
    r = httpx.get(f"{base}/v1/channels/job.{job_id}/messages", params={"after": "0"}, timeout=10)
    return sum(1 for m in r.json()["messages"] if m["event"] == "queued")


def percentile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def run(seconds: float) -> dict[str, Any]:
    type_ = f"bench.sched.{uuid.uuid4().hex[:8]}"
    with redis_server() as store, tidings_server(store) as a, tidings_server(store) as b:
        r = httpx.put(f"{a}/v1/schedules/bench", json={"type": type_, "every": 1}, timeout=10)
        r.raise_for_status()
        first = parse_time(r.json()["next_run_at"])
        print(f"== schedule every 1 s on two nodes for {seconds:g} s", flush=True)
        # Half a second past the last slot of the run: `seconds` slots are due.
        time.sleep(max(0.0, first + int(seconds) - 0.5 - time.time()))
        httpx.delete(f"{b}/v1/schedules/bench", timeout=10).raise_for_status()
        jobs = jobs_of(b, type_)
        counted = {"node A": firings_counted(a), "node B": firings_counted(b)}
        twice = [j["id"] for j in jobs if queued_events(a, j["id"]) != 1]
    slots: list[float] = []
    drift_ms: list[float] = []
    for job in jobs:
        named = slot_of_job_id(job["id"])
        if named is None:
            continue
        slots.append(named[1])
        drift_ms.append((parse_time(job["created_at"]) - named[1]) * 1000)
    expected = {first + i for i in range(int(seconds))}
    missed = sorted(expected - set(slots))
    return {
        "seconds": seconds,
        "firings": len(slots),
        "expected slots": len(expected),
        "missed": len(missed),
        "written twice": len(twice),
        "counted twice": sum(counted.values()) - len(slots),
        "by node": counted,
        "drift p50 ms": percentile(drift_ms, 50),
        "drift p99 ms": percentile(drift_ms, 99),
        "drift max ms": max(drift_ms, default=0.0),
    }


def render(f: dict[str, Any]) -> str:
    by_node = ", ".join(f"{n}: {c}" for n, c in f["by node"].items())
    rows = [
        ("firings", f"{f['firings']}"),
        ("slots due in the run", f"{f['expected slots']}"),
        ("missed slots", f"{f['missed']}"),
        ("jobs written twice", f"{f['written twice']}"),
        ("slots both nodes counted as fired", f"{f['counted twice']}"),
        ("firings by node", by_node),
        ("drift p50", f"{f['drift p50 ms']:.1f} ms"),
        ("drift p99", f"{f['drift p99 ms']:.1f} ms"),
        ("drift max", f"{f['drift max ms']:.1f} ms"),
    ]
    lines = ["| figure | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true", help="a JSON line of every figure last")
    args = parser.parse_args()
    figures = run(args.seconds)
    title = (
        f"### Schedules: every 1 s for {args.seconds:g} s on two nodes sharing Redis "
        f"({os.cpu_count()} cores)"
    )
    table = f"{title}\n\n{render(figures)}"
    print("\n" + table)
    if args.json:
        print(json.dumps({"table": table, "results": figures}))
    clean = figures["written twice"] == figures["counted twice"] == figures["missed"] == 0
    return 0 if clean and figures["firings"] == figures["expected slots"] else 1


if __name__ == "__main__":
    sys.exit(main())
