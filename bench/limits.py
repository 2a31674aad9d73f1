#!/usr/bin/env python3
"""A rate-limited job type under a backlog: how close the leased rate stays to its limit,
through real servers and real `tidings worker` processes, on SQLite and on Redis.

Usage: `.venv/bin/python bench/limits.py [--seconds N] [--rate N] [--backlog N]
[--stores sqlite,redis] [--json]`.

For each store it starts `tidings serve` (SQLite: one server on a fresh file; Redis: two
server nodes sharing a private redis-server on a free loopback port, nothing on disk),
limits the type `noop` to `--rate` jobs per second (`PUT /v1/queues/noop`), submits a
backlog of `--backlog` jobs, then starts two `tidings worker` processes (bench/
noop_worker.py, 64 slots each: ample) — on Redis one per node — and lets them work for
`--seconds`. It then reads every succeeded job's lease time (`started_at`) and reports
the rate over the steady part: from 2 s after the first lease (the bucket's initial burst
of `--rate` jobs is left out) to the end of the run, and its error against the limit.

Prints a table; with --json, also one JSON line of every figure last. It stops every
process it started (by PID).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tidings.protocol.codecs import parse_time

BENCH = Path(__file__).resolve().parent
HOST = "127.0.0.1"
TYPE = "noop"  # the type bench/noop_worker.py handles
WORKER_SLOTS = "64"
WARMUP = 2.0  # seconds after the first lease left out of the steady part


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
    with tempfile.TemporaryDirectory(prefix="tidings-limits-redis-") as tmp:
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
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The processes started inside, stopped (by PID) on the way out, last first."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            stop(proc)


def serve(store: str, started: list[subprocess.Popen[bytes]]) -> str:
    """Start `tidings serve` on `store`; its base URL once /readyz answers."""
    port = free_port()
    tidings = Path(sys.executable).parent / "tidings"
    argv = [str(tidings), "serve", "--host", HOST, "--port", str(port), "--store", store]
    proc = subprocess.Popen([*argv, "--log-level", "warning"])
    started.append(proc)
    wait_port(port, proc, "tidings serve")
    url = f"http://{HOST}:{port}"
    for _ in range(600):
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return url
        time.sleep(0.1)
    raise SystemExit(f"{url}/readyz never answered 200")


def work(url: str, started: list[subprocess.Popen[bytes]]) -> None:
    """Start a `tidings worker` of bench/noop_worker.py on the server at `url`."""
    tidings = Path(sys.executable).parent / "tidings"
    argv = [str(tidings), "worker", "noop_worker:worker", "--url", url]
    started.append(
        subprocess.Popen(
            [*argv, "--concurrency", WORKER_SLOTS, "--log-level", "warning"],
            env={**os.environ, "PYTHONPATH": str(BENCH)},
        )
    )


async def submit_backlog(url: str, count: int) -> None:
    """Submit `count` jobs, 50 requests at a time."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for at in range(0, count, 50):
            answers = await asyncio.gather(
                *(
                    http.post("/v1/jobs", json={"type": TYPE, "payload": n})
                    for n in range(at, min(count, at + 50))
                )
            )
            for answer in answers:
                answer.raise_for_status()


def lease_times(url: str) -> list[float]:
    """The lease time (`started_at`) of every succeeded job of the type, sorted."""
    out: list[float] = []
    params: dict[str, Any] = {"type": TYPE, "status": "succeeded", "limit": 1000}
    with httpx.Client(base_url=url, timeout=60) as http:
        while True:
            page = http.get("/v1/jobs", params=params).json()
            out += [parse_time(job["started_at"]) for job in page["jobs"]]
            if page["next"] is None:
                return sorted(out)
            params["before"] = page["next"]


def run_store(name: str, store: str, args: argparse.Namespace) -> dict[str, float]:
    """One measurement: servers (two nodes on Redis), the limit, the backlog, two workers."""
    with processes() as started:
        urls = [serve(store, started)]
        if name == "redis":
            urls.append(serve(store, started))
        limit = {"rate": {"limit": args.rate, "per": 1.0}}
        httpx.put(f"{urls[0]}/v1/queues/{TYPE}", json=limit, timeout=10).raise_for_status()
        asyncio.run(submit_backlog(urls[0], args.backlog))
        began = time.time()
        for n in range(2):
            work(urls[n % len(urls)], started)
        time.sleep(args.seconds)
        for proc in started[len(urls) :]:  # the workers: what they leased is what counts
            stop(proc)
        ended = time.time()
        leases = lease_times(urls[-1])
    if not leases:
        raise SystemExit(f"{name}: no job was leased in {args.seconds} s")
    first = leases[0]
    start, end = first + WARMUP, min(ended, leases[-1] + 1.0 / args.rate)
    steady = [t for t in leases if start <= t < end]
    rate = len(steady) / (end - start) if end > start else 0.0
    return {
        "leased": len(leases),
        "first lease s": round(first - began, 3),
        "steady s": round(end - start, 2),
        "steady leases": len(steady),
        "rate": round(rate, 2),
        "error %": round(100 * (rate - args.rate) / args.rate, 2),
        "in burst": sum(1 for t in leases if t < first + 1.0),
    }


def render(results: dict[str, dict[str, float]], limit: int) -> str:
    lines = [
        f"| store | leased | steady s | steady leases | rate /s | error vs {limit} | "
        "first second |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['leased']:.0f} | {r['steady s']:.1f} | {r['steady leases']:.0f} | "
            f"{r['rate']:.2f} | {r['error %']:+.2f} % | {r['in burst']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=int, default=50, help="the limit, jobs per second")
    parser.add_argument("--backlog", type=int, default=2000)
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--json", action="store_true", help="a JSON line of every figure last")
    args = parser.parse_args()
    if args.seconds <= WARMUP + 1:
        parser.error(f"--seconds must be over {WARMUP + 1:g}: the first {WARMUP:g} are a warm-up")
    stores: dict[str, Callable[[], contextlib.AbstractContextManager[str]]] = {
        "sqlite": lambda: contextlib.nullcontext("sqlite:///@TMP@/limits.db"),
        "redis": redis_server,
    }
    results: dict[str, dict[str, float]] = {}
    for name in args.stores.split(","):
        if name not in stores:
            parser.error(f"unknown store {name!r}: sqlite or redis")
        with stores[name]() as url, tempfile.TemporaryDirectory(prefix="tidings-limits-") as tmp:
            results[name] = run_store(name, url.replace("@TMP@", tmp), args)
    title = (
        f"### Limits: type limited to {args.rate} jobs/s, backlog {args.backlog:,}, two "
        f"workers of {WORKER_SLOTS} slots, {args.seconds:g} s ({os.cpu_count()} cores; "
        "Redis: two server nodes)"
    )
    table = f"{title}\n\n{render(results, args.rate)}"
    print("\n" + table)
    if args.json:
        print(json.dumps({"table": table, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
