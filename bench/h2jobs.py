"""The jobs measurement over HTTP/2 or HTTP/1.1: an httpx client and the SDK's worker.

Usage:

    python h2jobs.py worker URL --proto h2|h1 [--cafile CERT] [--concurrency N]
    python h2jobs.py client URL JOBS --proto h2|h1 [--cafile CERT] [--tasks 4] [--warmup 20]

`worker` runs bench/noop_worker.py's Worker (the SDK runtime: lease loop, reports) on an
`HttpBackend` whose httpx client speaks only the chosen protocol, until SIGTERM. `client`
has the shape of bench/jobs_client.py on one httpx.AsyncClient: 4 tasks each POST their
share of `{"type": "noop"}` to /v1/jobs, then ask `GET /v1/jobs/{id}?wait=30` for each.
Over HTTP/2 the tasks share one connection (streams); over HTTP/1.1 each request has a
connection of its own from the pool. It prints one JSON line: {"jobs", "secs", "rate",
"cpu_s"} (cpu_s: this process's CPU seconds over the measured run).

TLS (https URL): the server's certificate is checked against CAFILE; ALPN offers only the
chosen protocol. Cleartext (http URL) with h2: HTTP/2 with prior knowledge.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import uvloop

from tidings.sdk.worker import HttpBackend

BENCH = Path(__file__).resolve().parent
SUBMIT = json.dumps({"type": "noop"}).encode()
HEADERS = {"Content-Type": "application/json"}


def cpu_now() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def http_client(url: str, proto: str, cafile: str | None, **kwargs: Any) -> httpx.AsyncClient:
    """An httpx client that speaks only `proto` ("h2" or "h1") to `url`."""
    verify: ssl.SSLContext | bool = True
    if cafile is not None:
        verify = ssl.create_default_context(cafile=cafile)
    return httpx.AsyncClient(
        base_url=url, http1=proto == "h1", http2=proto == "h2", verify=verify, **kwargs
    )


class ProtoBackend(HttpBackend):
    """The SDK's worker protocol over a client that speaks only the chosen protocol."""

    def __init__(self, url: str, proto: str, cafile: str | None) -> None:
        super().__init__(url)
        # The SDK's own client speaks HTTP/1.1 only: swap it for one of the same limits
        # that speaks `proto` (the attribute is the backend's one HTTP client).
        self._http = http_client(
            url,
            proto,
            cafile,
            timeout=self.timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
        )


async def work(url: str, proto: str, cafile: str | None, concurrency: int) -> None:
    sys.path.insert(0, str(BENCH))
    from noop_worker import worker

    worker.concurrency = concurrency

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    backend = ProtoBackend(url, proto, cafile)
    try:
        await worker.run_backend(backend, stop)
    finally:
        await backend.aclose()


async def submit_and_wait(http: httpx.AsyncClient, jobs: int, tasks: int) -> float:
    """Each task submits its share, then waits for each of its jobs; returns seconds."""
    share = [jobs // tasks + (1 if i < jobs % tasks else 0) for i in range(tasks)]

    async def call(method: str, path: str, body: bytes | None) -> Any:
        resp = await http.request(method, path, content=body, headers=HEADERS if body else None)
        if resp.status_code >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {resp.status_code} {resp.text[:200]!r}")
        return resp.json()

    async def one(n: int) -> None:
        ids = [(await call("POST", "/v1/jobs", SUBMIT))["id"] for _ in range(n)]
        for job_id in ids:
            job = await call("GET", f"/v1/jobs/{job_id}?wait=30", None)
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {job['status']}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(n) for n in share))
    return time.perf_counter() - t0


async def client(
    url: str, proto: str, cafile: str | None, jobs: int, tasks: int, warmup: int
) -> dict[str, float]:
    async with http_client(url, proto, cafile, timeout=60) as http:
        await submit_and_wait(http, warmup, tasks)
        cpu0 = cpu_now()
        secs = await submit_and_wait(http, jobs, tasks)
        cpu = cpu_now() - cpu0
        resp = await http.get("/healthz")
        if resp.http_version != ("HTTP/2" if proto == "h2" else "HTTP/1.1"):
            raise RuntimeError(f"asked for {proto}, spoke {resp.http_version}")
    return {"jobs": jobs, "secs": round(secs, 3), "rate": round(jobs / secs, 1), "cpu_s": cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = p.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("worker")
    w.add_argument("url")
    w.add_argument("--proto", choices=["h2", "h1"], required=True)
    w.add_argument("--cafile")
    w.add_argument("--concurrency", type=int, default=16)
    c = sub.add_parser("client")
    c.add_argument("url")
    c.add_argument("jobs", type=int)
    c.add_argument("--proto", choices=["h2", "h1"], required=True)
    c.add_argument("--cafile")
    c.add_argument("--tasks", type=int, default=4)
    c.add_argument("--warmup", type=int, default=20)
    a = p.parse_args()
    if a.cmd == "worker":
        uvloop.run(work(a.url, a.proto, a.cafile, a.concurrency))
    else:
        got = uvloop.run(client(a.url, a.proto, a.cafile, a.jobs, a.tasks, a.warmup))
        print(json.dumps(got))


if __name__ == "__main__":
    main()
