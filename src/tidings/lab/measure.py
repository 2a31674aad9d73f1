"""The lab's orchestrator: the server under test, its CPU time, and one run per pattern.

`Target` is the server: one the lab starts (`tidings serve` on a chosen store, in its own
process) or one already running at a URL. Each pattern runs on its own channel (or job
type) with fresh client processes; the server's CPU time (user + system, from
/proc/PID/stat, its child processes included) is read before the clients connect and
again when the last has reported, so it holds that pattern's connections, subscriptions
and serving and nothing else the lab does — except the publisher's requests (channel
patterns) and the lab worker's leases and reports (job patterns), which every pattern of a
kind pays alike, and the idle server's timers (a few ms a second).
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tidings.lab.clients import (
    Control,
    ProcessReport,
    ProcessSpec,
    client_process,
    lab_worker_process,
)
from tidings.lab.wire import Conn, Meter
from tidings.lab.workload import Pattern, Workload

__all__ = [
    "LabError",
    "PatternResult",
    "Target",
    "cpu_seconds",
    "percentile",
    "run_point",
    "started_server",
    "target_at",
]

# Seconds the clients have to read what was published last before what they lack counts
# as missed (short pollers get one interval more, job clients one job more).
DRAIN_GRACE = 3.0
# Longest wait for every client process to report, past the drain, seconds.
REPORT_TIMEOUT = 60.0
# Where CPU times are read from (Linux); elsewhere the server's CPU is unknown.
HAS_PROC = Path("/proc/self/stat").exists()
# Client processes per pattern, at most.
MAX_PROCESSES = 4


class LabError(Exception):
    """The lab cannot run as asked: the message says what to change."""


@dataclass(frozen=True)
class Target:
    """The server under test."""

    url: str
    host: str
    port: int
    authority: str
    pid: int | None  # whose CPU time is read; None: unknown
    store: str | None  # None: not started by the lab, not known
    token: str | None = None  # API or session token for every request


@dataclass
class PatternResult:
    """One pattern's figures at one workload point (see the JSON of `tidings lab`)."""

    pattern: str
    clients: int
    rate: float
    published: int  # messages published (channel patterns), jobs submitted (job patterns)
    expected: int  # deliveries wanted
    delivered: int
    missed: int
    duplicated: int
    requests: int
    bytes_out: int
    bytes_in: int
    connects: int
    conns_held: float  # busy with a request or stream, averaged over the run
    conns_open: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    server_cpu_s: float | None
    wall_s: float
    errors: list[str] = field(default_factory=list)
    # Seconds the publisher took (channel patterns): past the workload's seconds when the
    # server fell behind, and then the rate served was lower than the rate asked.
    publish_s: float | None = None

    @property
    def requests_per_delivery(self) -> float:
        return self.requests / self.delivered if self.delivered else math.inf

    @property
    def bytes_per_delivery(self) -> float:
        total = self.bytes_out + self.bytes_in
        return total / self.delivered if self.delivered else math.inf

    @property
    def cpu_ms_per_delivery(self) -> float | None:
        if self.server_cpu_s is None or not self.delivered:
            return None
        return 1000 * self.server_cpu_s / self.delivered

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["title"] = Pattern(self.pattern).label
        out["endpoint"] = Pattern(self.pattern).endpoint
        out["requests_per_delivery"] = _finite(self.requests_per_delivery)
        out["bytes_per_delivery"] = _finite(self.bytes_per_delivery)
        out["cpu_ms_per_delivery"] = self.cpu_ms_per_delivery
        return out


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


# Server CPU ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and of its children now alive (the
    processes of `tidings serve --workers N`), from /proc."""
    if not Path(f"/proc/{pid}").exists():
        raise LabError(f"no process {pid} to measure: pass the server's pid to --server-pid")
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        # fields[1] is the parent's pid; fields[11] and [12] are utime and stime in ticks.
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += int(fields[11]) + int(fields[12])
    return total / tick


# The server under test -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _ready(host: str, port: int, authority: str, token: str | None = None) -> int | None:
    """The status /readyz answers, or None when nothing answers."""
    conn = Conn(host, port, Meter(), authority, token)
    try:
        answer = await asyncio.wait_for(conn.request("GET", "/readyz"), 2.0)
    except Exception:  # refused, reset, timed out: not ready
        return None
    finally:
        await conn.close()
    return answer.status


def target_at(url: str, server_pid: int | None, token: str | None = None) -> Target:
    """The running server at `url` (http:// only: the lab counts plain HTTP/1.1 bytes)."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LabError(
            f"--url {url!r}: the lab speaks plain HTTP/1.1 (it counts the bytes itself): "
            "give http://host:port"
        )
    port = parts.port or 80
    authority = parts.netloc
    if asyncio.run(_ready(parts.hostname, port, authority, token)) != 200:
        raise LabError(f"--url {url}: no tidings server ready there (GET /readyz)")
    if server_pid is not None and not Path(f"/proc/{server_pid}").exists():
        raise LabError(f"--server-pid {server_pid}: no such process on this machine")
    return Target(url.rstrip("/"), parts.hostname, port, authority, server_pid, None, token)


@contextmanager
def started_server(store: str | None, log_path: Path | None = None) -> Iterator[Target]:
    """`tidings serve` on a free loopback port and `store` (default: a SQLite file in a
    temporary directory), stopped (SIGTERM, by its pid) on leaving."""
    with tempfile.TemporaryDirectory(prefix="tidings-lab-") as folder:
        store = store or f"sqlite:///{folder}/lab.db"
        log = log_path or Path(folder) / "server.log"
        for _ in range(4):
            port = _free_port()
            cmd = [
                sys.executable, "-m", "tidings", "serve", "--host", "127.0.0.1",
                "--port", str(port), "--store", store, "--log-level", "warning",
            ]  # fmt: skip
            env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
            with log.open("ab") as out:
                # This Python's own `tidings serve`, with arguments the lab chose.
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)  # noqa: S603
            try:
                if _wait_ready(proc, port):
                    break
            except BaseException:
                _stop(proc)
                raise
            said = log.read_text(errors="replace")
            if f"port {port} on 127.0.0.1 is in use" not in said:
                raise LabError(f"tidings serve --store {store} did not start:\n{said[-2000:]}")
        else:
            raise LabError("no free loopback port could be bound for the server")
        try:
            authority = f"127.0.0.1:{port}"
            yield Target(f"http://{authority}", "127.0.0.1", port, authority, proc.pid, store)
        finally:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, timeout: float = 30.0) -> bool:
    """True once the server answers /readyz; False when it exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        if asyncio.run(_ready("127.0.0.1", port, f"127.0.0.1:{port}")) == 200:
            return True
        time.sleep(0.05)
    _stop(proc)
    raise LabError(f"the server did not become ready in {timeout:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# One point: every pattern ---------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The nearest-rank `q` percentile (0-100) of sorted values, or None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


async def _publish(target: Target, channel: str, workload: Workload) -> tuple[int, float]:
    """Publish the workload's messages at its rate (each carrying its sequence number and
    the time it was sent), one after another; returns how many were published and in how
    many seconds (longer than the workload's when the server falls behind)."""
    conn = Conn(target.host, target.port, Meter(), target.authority, target.token)
    start = time.monotonic()
    path = f"/v1/channels/{channel}/messages"
    try:
        for seq in range(workload.messages):
            await asyncio.sleep(max(0.0, start + seq / workload.rate - time.monotonic()))
            body = json.dumps({"data": {"seq": seq, "t": time.time()}}).encode()
            answer = await conn.request("POST", path, body, [("Content-Type", "application/json")])
            if answer.status != 201:
                raise LabError(
                    f"publishing to {channel} answered HTTP {answer.status}: "
                    f"{answer.body[:300].decode(errors='replace')}"
                )
    finally:
        await conn.close()
    return workload.messages, time.monotonic() - start


def _processes(clients: int, processes: int | None) -> list[tuple[int, int]]:
    """(first client, clients) for each client process."""
    count = processes or max(1, min(MAX_PROCESSES, os.cpu_count() or 1))
    count = max(1, min(count, clients))
    share, extra = divmod(clients, count)
    out, first = [], 0
    for i in range(count):
        n = share + (i < extra)
        out.append((first, n))
        first += n
    return out


def run_pattern(
    target: Target,
    pattern: Pattern,
    workload: Workload,
    name: str,
    processes: int | None = None,
) -> PatternResult:
    """Run one pattern of `workload` against `target` on channel (or job type) `name`."""
    ctx = multiprocessing.get_context("spawn")
    control = Control(
        go=ctx.Event(),
        finish=ctx.Event(),
        expected=ctx.Value("q", 0),
        end_at=ctx.Value("d", 0.0),
        drain_until=ctx.Value("d", 0.0),
    )
    ready: Any = ctx.Queue()
    results: Any = ctx.Queue()
    # From before the clients connect: a pattern's cost includes its connections and
    # subscriptions (and the idle server's timers meanwhile, a few ms a second).
    cpu0 = cpu_seconds(target.pid) if target.pid and HAS_PROC else None
    procs = []
    for index, (first, n) in enumerate(_processes(workload.clients, processes)):
        spec = ProcessSpec(
            index,
            target.host,
            target.port,
            target.authority,
            pattern,
            name,
            first,
            n,
            workload,
            target.token,
        )
        proc = ctx.Process(target=client_process, args=(spec, control, ready, results))
        proc.start()
        procs.append(proc)
    reports: dict[int, ProcessReport] = {}
    try:
        _await_ready(procs, ready, results, reports)
        started = time.monotonic()
        if pattern.is_job:
            control.end_at.value = time.time() + workload.seconds
            control.go.set()
            time.sleep(workload.seconds)
            published, publish_s = 0, None
            grace = workload.job_seconds + workload.interval + DRAIN_GRACE
        else:
            control.go.set()
            published, publish_s = asyncio.run(_publish(target, name, workload))
            grace = workload.interval + DRAIN_GRACE
        control.expected.value = published
        control.drain_until.value = time.time() + grace
        control.finish.set()
        deadline = time.monotonic() + grace + REPORT_TIMEOUT
        while len(reports) < len(procs):
            _take(results, reports, max(0.05, deadline - time.monotonic()))
            if time.monotonic() > deadline:
                raise LabError(f"the {pattern} client processes did not report in time")
        cpu1 = cpu_seconds(target.pid) if target.pid and HAS_PROC else None
        wall = time.monotonic() - started
    finally:
        if not control.finish.is_set():
            # Failed before the end: every client stops at once (a channel client holds
            # "every" message of none; the drain is over).
            control.expected.value = 0
            control.drain_until.value = 0.0
            control.go.set()
            control.finish.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    result = _combine(pattern, workload, published, list(reports.values()), cpu0, cpu1, wall)
    result.publish_s = None if publish_s is None else round(publish_s, 3)
    return result


def _take(results: Any, reports: dict[int, ProcessReport], timeout: float) -> None:
    """Take one report off `results` (within `timeout`); a process's failure is raised."""
    try:
        index, report = results.get(timeout=timeout)
    except queue.Empty:
        return
    if isinstance(report, str):
        raise LabError(f"a client process failed: {report}")
    reports[index] = report


def _await_ready(
    procs: list[Any], ready: Any, results: Any, reports: dict[int, ProcessReport]
) -> None:
    deadline = time.monotonic() + 90.0
    waiting = len(procs)
    while waiting:
        try:
            ready.get(timeout=0.1)
            waiting -= 1
            continue
        except queue.Empty:
            pass
        _take(results, reports, 0.0)  # a process that failed to connect says so here
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead:
            raise LabError(f"a client process exited with {dead[0].exitcode} before it was ready")
        if time.monotonic() > deadline:
            raise LabError("the client processes did not connect in 90 s")


def _combine(
    pattern: Pattern,
    workload: Workload,
    published: int,
    reports: list[ProcessReport],
    cpu0: float | None,
    cpu1: float | None,
    wall: float,
) -> PatternResult:
    latencies = sorted(x for r in reports for x in r.latencies)
    expected = sum(r.expected for r in reports)
    delivered = sum(r.delivered for r in reports)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(1000 * value, 3)

    return PatternResult(
        pattern=pattern.value,
        clients=workload.clients,
        rate=workload.rate,
        published=published if not pattern.is_job else expected,
        expected=expected,
        delivered=delivered,
        missed=max(0, expected - delivered),
        duplicated=sum(r.duplicated for r in reports),
        requests=sum(r.requests for r in reports),
        bytes_out=sum(r.bytes_out for r in reports),
        bytes_in=sum(r.bytes_in for r in reports),
        connects=sum(r.connects for r in reports),
        conns_held=round(sum(r.held_mean for r in reports), 3),
        conns_open=round(sum(r.open_mean for r in reports), 3),
        latency_p50_ms=ms(percentile(latencies, 50)),
        latency_p99_ms=ms(percentile(latencies, 99)),
        latency_max_ms=ms(max((r.latency_max for r in reports), default=None)),
        server_cpu_s=None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 3),
        wall_s=round(wall, 3),
        errors=[e for r in reports for e in r.errors][:5],
    )


@dataclass
class _Worker:
    """The lab's worker process (job patterns)."""

    process: Any = None

    def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.is_alive():
            proc.terminate()  # SIGTERM: the worker drains
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


@contextmanager
def lab_worker(target: Target, job_type: str, concurrency: int, seconds: float) -> Iterator[None]:
    """A worker for `job_type` (each job taking `seconds`) while the block runs."""
    ctx = multiprocessing.get_context("spawn")
    worker = _Worker(
        ctx.Process(
            target=lab_worker_process,
            args=(target.url, job_type, concurrency, seconds, target.token),
        )
    )
    worker.process.start()
    try:
        yield
    finally:
        worker.stop()


def run_point(
    target: Target,
    workload: Workload,
    patterns: list[Pattern],
    run_id: str,
    job_type: str,
    processes: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[PatternResult]:
    """Every pattern of `patterns` at `workload`, one after the other."""
    out = []
    for pattern in patterns:
        if progress:
            progress(f"{pattern} ({workload.clients} clients, {workload.rate:g} msg/s)")
        name = f"lab.{run_id}.{workload.clients}.{workload.rate:g}.{pattern}"
        out.append(
            run_pattern(target, pattern, workload, job_type if pattern.is_job else name, processes)
        )
    return out


def run_lab(
    target: Target,
    points: list[Workload],
    patterns: list[Pattern],
    processes: int | None = None,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Every pattern at every point against `target`: the lab's JSON (figures, a
    sentence per seed claim at each point, and the sweep's notes)."""
    from tidings._version import __version__
    from tidings.lab.report import claims, sweep_notes

    run_id = os.urandom(4).hex()
    job_type = f"lab.{run_id}"
    out_points = []
    jobs = any(p.is_job for p in patterns)
    most = max(w.clients for w in points)
    job_seconds = points[0].job_seconds
    worker = lab_worker(target, job_type, most, job_seconds) if jobs else _no_worker()
    with worker:
        for workload in points:
            results = run_point(target, workload, patterns, run_id, job_type, processes, progress)
            rows = [r.to_json() for r in results]
            out_points.append(
                {
                    "clients": workload.clients,
                    "rate": workload.rate,
                    "results": rows,
                    "claims": claims(rows, workload.interval),
                }
            )
    first = points[0]
    return {
        "tidings": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": command,
        "server": {
            "url": target.url,
            "store": target.store,
            "pid": target.pid,
            "cpu": (
                "unknown (no /proc on this system)"
                if not HAS_PROC
                else "measured"
                if target.pid
                else "unknown (pass --server-pid)"
            ),
        },
        "workload": {
            "seconds": first.seconds,
            "interval": first.interval,
            "job_seconds": first.job_seconds,
            "patterns": [p.value for p in patterns],
        },
        "points": out_points,
        "sweep_notes": sweep_notes(out_points, first.interval),
    }


@contextmanager
def _no_worker() -> Iterator[None]:
    yield
