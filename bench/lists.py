#!/usr/bin/env python3
"""Listing many channels and jobs: how long a page of `GET /v1/channels` and `GET /v1/jobs`
takes through the real server, on SQLite and on Redis.

Usage: `.venv/bin/python bench/lists.py [--channels N] [--jobs N] [--requests N]
[--stores sqlite,redis] [--json]` (`bench/run.py --only lists` runs it).

For each store it seeds, in process through the store API (batches of concurrent calls,
so SQLite's group commit takes many per transaction), N channels (one message each) and
N jobs of 8 types — each with its own channel `job.{id}` — of which the oldest three
quarters are leased (oldest first, as workers take them): 80% of those succeed, 7% fail
for good (dead letters), the rest stay running; a fifth of the still queued ones are
cancelled. Then it starts `tidings serve` on the store (Redis: a private redis-server on
a free loopback port, nothing on disk) and times each request with httpx over one
keep-alive connection: p50 and p99 in milliseconds over `--requests` requests, after 3
unmeasured ones, and how many items the page held (a Redis page filtered by a job's
status or type may hold fewer than the limit: see the Redis store's list_jobs). A deep
page's cursor comes from following `next` from the first page. Last, it follows every
page of the dead letters (`status=failed`) to the end.

Prints a table per store pair; with --json, also one JSON line of every figure last.
It stops every process it started (by PID).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tidings.server.constants import DEFAULT_MAX_AGE, DEFAULT_MAX_MESSAGES
from tidings.server.hub import Hub
from tidings.server.jobs import JobService
from tidings.server.stores import open_store
from tidings.server.stores.base import Retention

HOST = "127.0.0.1"
TYPES = ["email", "resize", "report", "webhook", "transcode", "index", "export", "sync"]
BATCH = 1000  # concurrent store calls per gather while seeding
PAGE = 100  # the page size every measured request asks for

Rows = dict[str, dict[str, float]]  # per request: p50, p99, items, next
Figures = tuple[dict[str, float], Rows, dict[str, float]]  # seeding, rows, dead-letter walk


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
    with tempfile.TemporaryDirectory(prefix="tidings-lists-redis-") as tmp:
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


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for at in range(0, len(items), size):
        yield items[at : at + size]


async def seed(url: str, channels: int, jobs: int) -> dict[str, float]:
    """Fill a store (see the module docstring); the seconds each part took."""
    store = open_store(url, Retention(DEFAULT_MAX_MESSAGES, DEFAULT_MAX_AGE))
    await store.start()
    svc = JobService(store, Hub(store.channels.cursor_key))
    took: dict[str, float] = {}
    try:
        started = time.perf_counter()
        names = [f"bench.{i:05d}" for i in range(channels)]
        for batch in chunks(names, BATCH):
            await asyncio.gather(*(store.channels.publish(n, {"n": n}) for n in batch))
        took["seed channels s"] = time.perf_counter() - started

        started = time.perf_counter()
        ids: list[str] = []
        for batch in chunks(list(range(jobs)), BATCH):
            made = await asyncio.gather(
                *(svc.submit(TYPES[i % len(TYPES)], {"i": i}, max_attempts=1) for i in batch)
            )
            ids.extend(job.id for job, _ in made)
        took["seed submits s"] = time.perf_counter() - started

        started = time.perf_counter()
        leased: list[Any] = []
        while len(leased) < jobs * 3 // 4:
            rounds = await asyncio.gather(*(svc.lease(None, 100, 0, 3600.0) for _ in range(10)))
            got = [job for jobs_ in rounds for job in jobs_]
            if not got:
                break
            leased.extend(got)
        leased = leased[: jobs * 3 // 4]
        finishing = [(n, job) for n, job in enumerate(leased) if n % 100 < 87]
        for batch in chunks(finishing, BATCH):
            await asyncio.gather(
                *(
                    svc.complete(job.id, job.lease_token, {"ok": True})
                    if n % 100 < 80
                    else svc.fail(job.id, job.lease_token, "boom", retry=False)
                    for n, job in batch
                )
            )
        taken = {job.id for job in leased}
        queued = [job_id for job_id in ids if job_id not in taken]
        for batch in chunks(queued[::5], BATCH):
            await asyncio.gather(*(svc.cancel(job_id) for job_id in batch))
        took["seed transitions s"] = time.perf_counter() - started
        took["transitions"] = len(leased) + len(finishing) + len(queued[::5])
    finally:
        svc.close()
        await store.close()
    return took


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def timed(http: httpx.Client, path: str, params: dict[str, Any], requests: int) -> dict[str, float]:
    """p50 and p99 (ms) of `requests` GETs, and the items of the last answer."""
    samples = []
    answer: dict[str, Any] = {}
    for n in range(requests + 3):
        began = time.perf_counter()
        r = http.get(path, params=params)
        spent = time.perf_counter() - began
        if r.status_code != 200:
            raise SystemExit(f"GET {path} {params}: {r.status_code} {r.text[:200]}")
        if n >= 3:
            samples.append(spent * 1000)
        answer = r.json()
    items = answer.get("channels", answer.get("jobs", answer.get("queues")))
    return {
        "p50": statistics.median(samples),
        "p99": percentile(samples, 0.99),
        "items": float(len(items) if items is not None else 0),
        "next": float(answer.get("next") is not None),
    }


def cursor_of_page(http: httpx.Client, path: str, key: str, page: int, **params: Any) -> str:
    """The `next` that leads to page `page` (1-based), following `next` from the first."""
    query: dict[str, Any] = {"limit": PAGE, **params}
    for _ in range(page - 1):
        answer = http.get(path, params=query).json()
        if answer["next"] is None:
            raise SystemExit(f"{path} {params}: fewer than {page} pages")
        query[key] = answer["next"]
    return str(query[key])


def walk(http: httpx.Client, params: dict[str, Any]) -> dict[str, float]:
    """Every page of a job listing, to the end: requests, seconds, jobs found."""
    query: dict[str, Any] = {"limit": PAGE, **params}
    began = time.perf_counter()
    requests = found = 0
    while True:
        answer = http.get("/v1/jobs", params=query).json()
        requests += 1
        found += len(answer["jobs"])
        if answer["next"] is None:
            break
        query["before"] = answer["next"]
    return {"requests": requests, "seconds": time.perf_counter() - began, "jobs": found}


def measure(url: str, requests: int, channels: int, jobs: int) -> tuple[Rows, dict[str, float]]:
    """Every timed request on one running server, and the dead-letter walk."""
    rows: Rows = {}
    with httpx.Client(base_url=url, timeout=60) as http:

        def row(name: str, path: str, **params: Any) -> None:
            rows[name] = timed(http, path, params, requests)

        row("channels: first page", "/v1/channels", limit=PAGE)
        far = min(50, max(2, channels // PAGE // 2))
        after = cursor_of_page(http, "/v1/channels", "after", far)
        row(f"channels: page {far} (after=next)", "/v1/channels", limit=PAGE, after=after)
        row("jobs: first page", "/v1/jobs", limit=PAGE)
        for status in ("queued", "running", "succeeded", "failed"):
            row(f"jobs: status={status}", "/v1/jobs", limit=PAGE, status=status)
        row("jobs: type=email", "/v1/jobs", limit=PAGE, type="email")
        row("jobs: type=email status=failed", "/v1/jobs", limit=PAGE, type="email", status="failed")
        deep = min(500, jobs // PAGE // 2)
        before = cursor_of_page(http, "/v1/jobs", "before", deep)
        row(f"jobs: page {deep} (before=next)", "/v1/jobs", limit=PAGE, before=before)
        typed = max(2, min(50, jobs // len(TYPES) // PAGE // 2))
        before = cursor_of_page(http, "/v1/jobs", "before", typed, type="email")
        row(
            f"jobs: type=email page {typed} (before=next)",
            "/v1/jobs",
            limit=PAGE,
            type="email",
            before=before,
        )
        row("/v1/queues", "/v1/queues")
        dead = walk(http, {"status": "failed"})
    return rows, dead


def run_store(name: str, url: str, args: argparse.Namespace) -> Figures:
    print(f"== {name}: seeding {args.channels:,} channels and {args.jobs:,} jobs", flush=True)
    took = asyncio.run(seed(url, args.channels, args.jobs))
    print("   " + "  ".join(f"{k}={v:,.1f}" for k, v in took.items()), flush=True)
    with tidings_server(url) as base:
        print(f"== {name}: timing {args.requests} requests per row", flush=True)
        rows, dead = measure(base, args.requests, args.channels, args.jobs)
    return took, rows, dead


def render(results: dict[str, Figures]) -> str:
    names = list(results)
    head = "| request | " + " | ".join(f"{n} p50 ms | {n} p99 ms | {n} items" for n in names)
    lines = [head + " |", "|" + " --- |" * (1 + 3 * len(names))]
    first = results[names[0]][1]
    for key in first:
        cells = []
        for n in names:
            r = results[n][1][key]
            cells += [f"{r['p50']:.2f}", f"{r['p99']:.2f}", f"{r['items']:.0f}"]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        took, _, dead = results[n]
        lines.append(
            f"- {n}: seeded in {took['seed channels s']:.1f} s (channels) + "
            f"{took['seed submits s']:.1f} s (submits) + {took['seed transitions s']:.1f} s "
            f"({took['transitions']:,.0f} transitions); every page of status=failed: "
            f"{dead['requests']} requests, {dead['seconds']:.2f} s, {dead['jobs']:,} jobs"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--json", action="store_true", help="a JSON line of every figure last")
    args = parser.parse_args()
    stores: dict[str, Callable[[], contextlib.AbstractContextManager[str]]] = {
        "sqlite": lambda: contextlib.nullcontext("sqlite:///@TMP@/lists.db"),
        "redis": redis_server,
    }
    results: dict[str, Figures] = {}
    for name in args.stores.split(","):
        if name not in stores:
            parser.error(f"unknown store {name!r}: sqlite or redis")
        with stores[name]() as url, tempfile.TemporaryDirectory(prefix="tidings-lists-") as tmp:
            results[name] = run_store(name, url.replace("@TMP@", tmp), args)
    title = (
        f"### Lists: {args.channels:,} channels and {args.jobs:,} jobs, pages of {PAGE}, "
        f"{args.requests} requests per row ({os.cpu_count()} cores)"
    )
    table = f"{title}\n\n{render(results)}"
    print("\n" + table)
    if args.json:
        print(json.dumps({"table": table, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
