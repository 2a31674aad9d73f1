"""The lab's clients: one process holding many clients of one pattern, on raw sockets.

The orchestrator (tidings.lab.measure) starts several such processes so that the server
process does nothing but serve, and drives them through shared `Control` values:

1. each process connects and subscribes all its clients, then says `ready`;
2. the orchestrator sets `go` (job clients start submitting) and publishes or waits;
3. it sets `expected` (messages published), `end_at` and `drain_until`, then `finish`:
   channel clients that hold every message stop, job clients stop submitting and wait for
   their last result; any still running at `drain_until` are stopped and their missing
   messages counted as missed;
4. each process sends back one `ProcessReport`.

A delivery's latency is the time from the moment it was published (the publisher's clock,
in the message's data) or finished (the job's `finished_at`) to the moment the client read
it: every process is on one machine, so one clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import quote

from tidings.lab.wire import Conn, LabWireError, Meter
from tidings.lab.workload import Pattern, Workload

__all__ = ["Control", "ProcessReport", "ProcessSpec", "client_process", "lab_worker_process"]

# A long poll's `wait=`: under the server's default cap (30 s) and the lab's drain.
LONG_POLL_WAIT = 20
# Latencies kept per process (a uniform sample beyond): percentiles need no more.
LATENCY_SAMPLE = 50_000
# How often a process samples its connections held, seconds.
SAMPLE_EVERY = 0.01
# Longest wait for a process's clients to connect and subscribe, seconds.
READY_TIMEOUT = 60.0
_TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class ProcessSpec:
    """What one client process runs."""

    index: int
    host: str
    port: int
    authority: str
    pattern: Pattern
    target: str  # the channel, or the job type
    first_client: int
    clients: int
    workload: Workload
    token: str | None = None  # sent as `Authorization: Bearer` on every request


@dataclass
class Control:
    """The orchestrator's signals to every client process of one pattern (multiprocessing
    Events and Values, shared by the processes)."""

    go: Any
    finish: Any
    expected: Any  # Value("q"): messages published
    end_at: Any  # Value("d"): time.time() after which job clients submit no more
    drain_until: Any  # Value("d"): time.time() at which unfinished clients are stopped


@dataclass
class ProcessReport:
    """What one client process measured."""

    index: int
    requests: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    connects: int = 0
    held_mean: float = 0.0  # connections busy with a request or stream, averaged
    open_mean: float = 0.0  # connections open, averaged
    expected: int = 0  # deliveries wanted: messages x clients, or jobs submitted
    delivered: int = 0  # distinct deliveries
    duplicated: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, a sample
    latency_max: float = 0.0
    errors: list[str] = field(default_factory=list)


class _Client:
    """One client's tally."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.seen: set[int] = set()
        self.duplicated = 0
        self.submitted = 0
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class _Process:
    """The clients of one process and what they share: the meter, the sample of
    latencies, and the orchestrator's signals mirrored on this process's loop."""

    def __init__(self, spec: ProcessSpec, control: Control) -> None:
        self.spec = spec
        self.control = control
        self.meter = Meter()
        self.go = asyncio.Event()
        # Jitter and sampling, not secrets.
        self.rng = random.Random(spec.index)  # noqa: S311
        self.latencies: list[float] = []
        self.latency_count = 0
        self.latency_max = 0.0
        self.end_at = 0.0
        self.errors: list[str] = []

    def conn(self) -> Conn:
        spec = self.spec
        return Conn(spec.host, spec.port, self.meter, spec.authority, spec.token)

    def latency(self, seconds: float) -> None:
        """Keep a uniform sample of at most LATENCY_SAMPLE latencies (reservoir)."""
        self.latency_count += 1
        self.latency_max = max(self.latency_max, seconds)
        if len(self.latencies) < LATENCY_SAMPLE:
            self.latencies.append(seconds)
        else:
            slot = self.rng.randrange(self.latency_count)
            if slot < LATENCY_SAMPLE:
                self.latencies[slot] = seconds

    def deliver(self, client: _Client, data: Any) -> None:
        """A channel message's data (`{"seq", "t"}`) reached `client`."""
        now = time.time()
        seq = int(data["seq"])
        if seq in client.seen:
            client.duplicated += 1
            return
        client.seen.add(seq)
        self.latency(now - float(data["t"]))

    # Channel patterns ------------------------------------------------------------------

    async def poll(self, client: _Client) -> None:
        conn = self.conn()
        try:
            await conn.connect()
            client.ready.set()
            interval = self.spec.workload.interval
            path = f"/v1/channels/{quote(self.spec.target)}/messages?limit=1000&after="
            cursor = "0"
            # Real clients are not in step: each starts at its own point of the interval.
            next_at = time.monotonic() + self.rng.uniform(0, interval)
            while True:
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at + interval, time.monotonic())
                cursor = self._page(client, await conn.request("GET", path + quote(cursor)))
        finally:
            await conn.close()

    async def longpoll(self, client: _Client) -> None:
        conn = self.conn()
        try:
            await conn.connect()
            client.ready.set()
            path = (
                f"/v1/channels/{quote(self.spec.target)}/messages"
                f"?limit=1000&wait={LONG_POLL_WAIT}&after="
            )
            cursor = "0"
            while True:
                cursor = self._page(client, await conn.request("GET", path + quote(cursor)))
        finally:
            await conn.close()

    def _page(self, client: _Client, answer: Any) -> str:
        if answer.status != 200:
            raise LabWireError(f"a poll answered HTTP {answer.status}: {answer.body[:300]!r}")
        page = json.loads(answer.body)
        for message in page["messages"]:
            self.deliver(client, message["data"])
        return str(page["next"])

    async def sse(self, client: _Client) -> None:
        conn = self.conn()
        try:
            path = f"/v1/channels/{quote(self.spec.target)}/events?after=0"
            async for event in conn.sse(path, on_open=client.ready):
                if event.event in ("reset", "close"):
                    raise LabWireError(f"the stream sent {event.event}: {event.text}")
                self.deliver(client, json.loads(event.text))
        finally:
            await conn.close()

    async def ws(self, client: _Client) -> None:
        conn = self.conn()
        try:
            socket = await conn.websocket(f"/v1/channels/{quote(self.spec.target)}/ws?after=0")
            client.ready.set()
            async for text in socket.messages():
                frame = json.loads(text)
                if "type" in frame:
                    raise LabWireError(f"the socket sent a {frame['type']} frame: {text[:300]}")
                self.deliver(client, frame["data"])
        finally:
            await conn.close()

    # Job patterns ----------------------------------------------------------------------

    async def jobs(self, client: _Client) -> None:
        """Submit a job, wait for its result the pattern's way; again until `end_at`."""
        conn = self.conn()
        try:
            await conn.connect()
            client.ready.set()
            await self.go.wait()
            n = 0
            while time.time() < self.end_at:
                n += 1
                body = {"type": self.spec.target, "payload": {"client": client.number, "n": n}}
                client.submitted += 1
                job, seen_at = await self._job(conn, json.dumps(body).encode())
                if job.get("status") == "succeeded":
                    if n in client.seen:
                        client.duplicated += 1
                    else:
                        client.seen.add(n)
                        self.latency(seen_at - _epoch(job["finished_at"]))
        finally:
            await conn.close()

    async def _job(self, conn: Conn, body: bytes) -> tuple[dict[str, Any], float]:
        """Submit `body`; return the finished job and when the client learned of its end."""
        pattern = self.spec.pattern
        json_type = [("Content-Type", "application/json")]
        if pattern is Pattern.JOB_REQUEST:
            answer = await conn.request("POST", f"/v1/jobs?wait={LONG_POLL_WAIT}", body, json_type)
        else:
            answer = await conn.request("POST", "/v1/jobs", body, json_type)
        if answer.status not in (200, 202):
            raise LabWireError(
                f"POST /v1/jobs answered HTTP {answer.status}: {answer.body[:300]!r}"
            )
        job: dict[str, Any] = json.loads(answer.body)
        path = f"/v1/jobs/{job['id']}"
        if pattern is Pattern.JOB_PUSH:
            seen_at = 0.0
            async for event in conn.sse(path + "/events"):
                if event.event in _TERMINAL:
                    job, seen_at = json.loads(event.text), time.time()
            # Read to the stream's end (the server ends it after the terminal event), so
            # that the connection serves the next submit.
            return job, seen_at
        while job["status"] not in _TERMINAL:
            if pattern is Pattern.JOB_POLL:
                await asyncio.sleep(self.spec.workload.interval)
                answer = await conn.request("GET", path)
            else:  # long-polled, or a request/response whose wait ran out
                answer = await conn.request("GET", f"{path}?wait={LONG_POLL_WAIT}")
            if answer.status != 200:
                raise LabWireError(f"GET {path} answered HTTP {answer.status}")
            job = json.loads(answer.body)
        return job, time.time()

    # The process -----------------------------------------------------------------------

    async def run(self, ready: Any) -> ProcessReport:
        spec = self.spec
        run_one = {
            Pattern.POLL: self.poll,
            Pattern.LONGPOLL: self.longpoll,
            Pattern.SSE: self.sse,
            Pattern.WS: self.ws,
        }.get(spec.pattern, self.jobs)
        clients = [_Client(spec.first_client + i) for i in range(spec.clients)]
        for client in clients:
            client.task = asyncio.create_task(self._guarded(run_one, client))
        tasks = [c.task for c in clients if c.task is not None]
        await self._until_ready(clients, tasks)
        ready.put(spec.index)
        held = [0.0, 0.0, 0]  # busy sum, open sum, samples
        sampler = asyncio.create_task(self._sample(held))
        # multiprocessing Events cannot be awaited: look at them often.
        while not self.control.go.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        self.end_at = self.control.end_at.value
        self.go.set()
        while not self.control.finish.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        expected = int(self.control.expected.value)
        drain_until = float(self.control.drain_until.value)
        # A channel client is done once it holds every message; a job client ends itself.
        while time.time() < drain_until:
            for client in clients:
                task = client.task
                if not spec.pattern.is_job and task and len(client.seen) >= expected:
                    task.cancel()
            if all(t.done() for t in tasks):
                break
            await asyncio.sleep(0.005)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        samples = max(1, int(held[2]))
        if spec.pattern.is_job:
            wanted = sum(c.submitted for c in clients)
        else:
            wanted = expected * len(clients)
        m = self.meter
        return ProcessReport(
            index=spec.index,
            requests=m.requests,
            bytes_out=m.bytes_out,
            bytes_in=m.bytes_in,
            connects=m.connects,
            held_mean=held[0] / samples,
            open_mean=held[1] / samples,
            expected=wanted,
            delivered=sum(len(c.seen) for c in clients),
            duplicated=sum(c.duplicated for c in clients),
            latencies=self.latencies,
            latency_max=self.latency_max,
            errors=self.errors[:5],
        )

    async def _guarded(self, run_one: Any, client: _Client) -> None:
        """Run a client; its failure is reported (its undelivered messages count as
        missed), not raised into the process."""
        try:
            await run_one(client)
        except (LabWireError, OSError, ValueError, KeyError) as exc:
            self.errors.append(f"client {client.number}: {type(exc).__name__}: {exc}")
        finally:
            client.ready.set()

    async def _until_ready(self, clients: list[_Client], tasks: list[asyncio.Task[None]]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        for client in clients:
            left = deadline - time.monotonic()
            try:
                await asyncio.wait_for(client.ready.wait(), max(0.0, left))
            except TimeoutError:
                for task in tasks:
                    task.cancel()
                raise LabWireError(
                    f"{len(clients)} {self.spec.pattern} clients did not all connect in "
                    f"{READY_TIMEOUT:g} s"
                ) from None
        if self.errors:
            for task in tasks:
                task.cancel()
            raise LabWireError(self.errors[0])

    async def _sample(self, held: list[float]) -> None:
        while True:
            held[0] += self.meter.busy_now
            held[1] += self.meter.open_now
            held[2] += 1
            await asyncio.sleep(SAMPLE_EVERY)


def _epoch(stamp: str) -> float:
    """An RFC 3339 time from the server (`...Z`) as seconds since the epoch."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _raise_file_limit() -> None:
    """Let this process open as many sockets as the system allows it (one per client)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass  # not POSIX, or not allowed: the clients that cannot connect say so


def client_process(spec: ProcessSpec, control: Control, ready: Any, results: Any) -> None:
    """A client process's entry point: run the clients of `spec`, put one ProcessReport
    (or an error string) on `results`."""
    _raise_file_limit()
    try:
        report: ProcessReport | str = asyncio.run(_Process(spec, control).run(ready))
    except Exception as exc:
        report = f"{type(exc).__name__}: {exc}"
    results.put((spec.index, report))


def lab_worker_process(
    url: str, job_type: str, concurrency: int, seconds: float, token: str | None = None
) -> None:
    """The lab's worker: leases jobs of `job_type` from `url`, each taking `seconds`, until
    SIGTERM."""
    import logging

    from tidings.sdk.worker import JobContext, Worker

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    worker = Worker(concurrency=concurrency)

    @worker.handler(job_type)
    async def work(job: JobContext) -> dict[str, Any]:
        await asyncio.sleep(seconds)
        return {"done": job.payload}

    worker.run(url, token=token)
