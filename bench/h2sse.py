"""h2sse: many Server-Sent Events streams over HTTP/2 or HTTP/1.1, TLS or cleartext.

Usage: `python h2sse.py HOST PORT PATH SUBS EVENTS_PER_SUB [options]`

    --proto h2|h1    h2: SUBS streams multiplexed on ceil(SUBS / --streams) connections;
                     h1: one HTTP/1.1 connection per subscriber (default h2)
    --streams N      HTTP/2 streams per connection (default 100)
    --tls CAFILE     TLS, the server's certificate checked against CAFILE, ALPN offering
                     only the chosen protocol; without it, cleartext (h2: prior knowledge)
    --procs K        split the subscribers across K processes (default 1)
    --timeout S      give up after S seconds (default 120)

The same client for both protocols, so that the two columns of a comparison differ only
in the protocol. Like sseload.c it prints `READY <ms>` once every stream has answered
200, then counts `data:` lines until SUBS * EVENTS_PER_SUB have arrived, every stream has
ended, or the timeout passes. A data line carrying `ts=<microseconds since the epoch>`
gives a publish-to-delivery latency. The last line:

    DONE events=E subs=S ready=R closed=C resets=X secs=S rate=R/s p50_ms=.. p99_ms=..
         max_ms=.. cpu_connect_s=.. cpu_deliver_s=.. ok=0|1

`cpu_connect_s` is the client's CPU time (all its processes) until its streams were
ready, `cpu_deliver_s` after that: a client near 1 CPU-second per second of delivery is
the bottleneck, not the server.

HTTP/2 flow control: each stream's window is the protocol's default (65,535 bytes), the
connection's is opened to 16 MiB as browsers do; the client gives every byte back
(WINDOW_UPDATE, batched by the `h2` library) as soon as it has parsed it. Streams listed
in `H2Subscribers(stall=...)` are never given their bytes back: a reader that stopped
(bench/h2_stall_check.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import re
import resource
import ssl
import sys
import time
from array import array
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import h2.config
import h2.connection
import h2.events
import uvloop

TS = re.compile(rb"ts=(\d+)")
CONNECTION_WINDOW = 16 * 1024 * 1024
# Connections being opened at once: enough to keep the server busy without overflowing
# its accept queue.
CONNECTING = 256


def cpu_now() -> float:
    """This process's user + system CPU seconds."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Tally:
    """What one process received: counts, the delivery window, latency samples (µs)."""

    expected: int
    events: int = 0
    ready: int = 0
    closed: int = 0
    resets: int = 0
    failed: int = 0
    first: float = 0.0
    last: float = 0.0
    samples: array[int] = field(default_factory=lambda: array("q"))
    per_stream: dict[int, int] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    streams: int = 0

    def lines(self, data: bytes, key: int) -> None:
        """Count the `data:` lines of complete lines in `data` (one stream's bytes)."""
        n = data.count(b"\ndata:") + data.startswith(b"data:")
        if not n:
            return
        now_us = time.time_ns() // 1000
        self.samples.extend([now_us - int(ts) for ts in TS.findall(data)])
        now = time.monotonic()
        if not self.first:
            self.first = now
        self.last = now
        self.events += n
        self.per_stream[key] = self.per_stream.get(key, 0) + n
        if self.events >= self.expected:
            self.done.set()

    def ended(self, how: str) -> None:
        """A stream ended: "closed" by the server, "reset" (HTTP/2), or "failed" (not
        answered 200)."""
        if how == "reset":
            self.resets += 1
        elif how == "failed":
            self.failed += 1
        else:
            self.closed += 1
        if self.closed + self.resets + self.failed >= self.streams:
            self.done.set()


class _Lines:
    """Bytes of one stream, cut at the last newline: the rest waits for the next chunk."""

    __slots__ = ("rest",)

    def __init__(self) -> None:
        self.rest = b""

    def complete(self, data: bytes) -> bytes:
        if self.rest:
            data = self.rest + data
        end = data.rfind(b"\n")
        if end < 0:
            self.rest = data
            return b""
        self.rest = data[end + 1 :]
        return data[:end]


class H1Subscriber(asyncio.Protocol):
    """One HTTP/1.1 event stream on its own connection."""

    def __init__(self, tally: Tally, request: bytes, key: int) -> None:
        self.tally = tally
        self.request = request
        self.key = key
        self.head = b""
        self.body: _Lines | None = None
        self.transport: Any = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        body = self.body
        if body is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end], self.head[end + 4 :]
            self.head = b""
            if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                status = head.split(b"\r\n", 1)[0]
                print(f"status: {status!r}", file=sys.stderr)
                self.tally.ended("failed")
                self.opened.set_result(None)
                return
            self.tally.ready += 1
            if not self.opened.done():
                self.opened.set_result(None)
            body = self.body = _Lines()
        lines = body.complete(data)
        if lines:
            self.tally.lines(lines, self.key)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(None)
        if self.body is not None:
            self.tally.ended("closed")


class H2Subscribers(asyncio.Protocol):
    """`count` event streams on one HTTP/2 connection; streams in `stall` are never
    given their flow-control window back."""

    def __init__(
        self,
        tally: Tally,
        headers: list[tuple[bytes, bytes]],
        count: int,
        base: int,
        stall: frozenset[int] = frozenset(),
    ) -> None:
        self.tally = tally
        self.headers = headers
        self.count = count
        self.base = base  # this connection's first subscriber number
        self.stall = stall
        # The requests' headers are this client's own and known valid: not checked again
        # for every stream. What the server sends is checked.
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.bodies: dict[int, _Lines] = {}
        self.keys: dict[int, int] = {}
        # Each RST_STREAM from the server: (stream id, error code, events counted by then).
        self.reset_log: list[tuple[int, int, int]] = []
        self.goaway: int | None = None  # the error code of the server's GOAWAY, if any
        self.pending = count
        self.transport: Any = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        conn = self.conn
        conn.initiate_connection()
        conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        for i in range(self.count):
            sid = conn.get_next_available_stream_id()
            self.keys[sid] = self.base + i
            conn.send_headers(sid, self.headers, end_stream=True)
        transport.write(conn.data_to_send())

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        tally = self.tally
        try:
            events = conn.receive_data(data)
        except Exception as exc:
            print(f"HTTP/2 error: {exc!r}", file=sys.stderr)
            self.transport.close()
            return
        for ev in events:
            kind = type(ev)
            if kind is h2.events.DataReceived:
                sid = ev.stream_id
                body = self.bodies.get(sid)
                if body is not None:
                    lines = body.complete(ev.data)
                    if lines:
                        tally.lines(lines, self.keys[sid])
                if sid not in self.stall:
                    conn.acknowledge_received_data(ev.flow_controlled_length, sid)
            elif kind is h2.events.ResponseReceived:
                status = dict(ev.headers).get(b":status")
                if status == b"200":
                    tally.ready += 1
                    self.bodies[ev.stream_id] = _Lines()
                else:
                    print(f"status: {status!r}", file=sys.stderr)
                    tally.ended("failed")
                self._answered()
            elif kind is h2.events.StreamReset:
                self.reset_log.append((ev.stream_id, int(ev.error_code or 0), tally.events))
                if self.bodies.pop(ev.stream_id, None) is not None:
                    tally.ended("reset")
                else:
                    tally.ended("failed")
                    self._answered()
            elif kind is h2.events.StreamEnded:
                if self.bodies.pop(ev.stream_id, None) is not None:
                    tally.ended("closed")
            elif kind is h2.events.ConnectionTerminated:
                self.goaway = int(ev.error_code or 0)
                print(f"GOAWAY: {ev.error_code!r}", file=sys.stderr)
        out = conn.data_to_send()
        if out:
            self.transport.write(out)

    def _answered(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.opened.done():
            self.opened.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(None)
        for _ in list(self.bodies):
            self.tally.ended("closed")
        self.bodies.clear()


def tls_context(cafile: str, proto: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.set_alpn_protocols(["h2" if proto == "h2" else "http/1.1"])
    return ctx


@dataclass
class Plan:
    host: str
    port: int
    path: str
    subs: int
    events: int
    proto: str
    streams: int
    cafile: str | None
    timeout: float
    first: int = 0  # the first subscriber number of this process


async def subscribe(plan: Plan, tally: Tally, stall: frozenset[int] = frozenset()) -> list[Any]:
    """Open every stream of `plan`; returns the protocols once all have answered."""
    loop = asyncio.get_running_loop()
    ctx = tls_context(plan.cafile, plan.proto) if plan.cafile else None
    gate = asyncio.Semaphore(CONNECTING)
    authority = f"{plan.host}:{plan.port}".encode()
    protos: list[Any] = []

    async def open_one(factory: Any) -> None:
        async with gate:
            _, proto = await loop.create_connection(
                factory, plan.host, plan.port, ssl=ctx, server_hostname=plan.host if ctx else None
            )
            protos.append(proto)
            if ctx is not None:
                got = proto.transport.get_extra_info("ssl_object").selected_alpn_protocol()
                want = "h2" if plan.proto == "h2" else "http/1.1"
                if got != want:
                    raise RuntimeError(f"ALPN chose {got!r}, not {want!r}")
            await proto.opened

    tally.streams = plan.subs
    if plan.proto == "h1":
        request = (
            f"GET {plan.path} HTTP/1.1\r\nHost: {authority.decode()}\r\n"
            "Accept: text/event-stream\r\n\r\n"
        ).encode()
        jobs = [
            open_one(lambda k=plan.first + i: H1Subscriber(tally, request, k))
            for i in range(plan.subs)
        ]
    else:
        headers = [
            (b":method", b"GET"),
            (b":scheme", b"https" if ctx else b"http"),
            (b":authority", authority),
            (b":path", plan.path.encode()),
            (b"accept", b"text/event-stream"),
        ]
        jobs = []
        for start in range(0, plan.subs, plan.streams):
            n = min(plan.streams, plan.subs - start)
            base = plan.first + start
            jobs.append(open_one(lambda n=n, b=base: H2Subscribers(tally, headers, n, b, stall)))
    await asyncio.gather(*jobs)
    return protos


async def run_share(plan: Plan, pipe: Connection) -> None:
    tally = Tally(plan.subs * plan.events)
    protos = await subscribe(plan, tally)
    cpu_ready = cpu_now()
    gc.freeze()  # the connections live until the end: keep them out of collections
    pipe.send(("ready", tally.ready, tally.failed))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.done.wait(), plan.timeout)
    cpu_end = cpu_now()
    for proto in protos:
        transport = getattr(proto, "transport", None)
        if transport is not None:
            transport.abort()
    pipe.send(
        (
            "done",
            {
                "events": tally.events,
                "ready": tally.ready,
                "closed": tally.closed,
                "resets": tally.resets,
                "failed": tally.failed,
                "first": tally.first,
                "last": tally.last,
                "cpu_connect": cpu_ready,
                "cpu_deliver": cpu_end - cpu_ready,
                "samples": tally.samples.tobytes(),
            },
        )
    )


def child(plan: Plan, pipe: Connection) -> None:
    try:
        uvloop.run(run_share(plan, pipe))
    except BaseException as exc:
        pipe.send(("error", repr(exc)))
        raise


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("path")
    p.add_argument("subs", type=int)
    p.add_argument("events", type=int)
    p.add_argument("--proto", choices=["h2", "h1"], default="h2")
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--tls", metavar="CAFILE")
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    # Each process takes whole connections' worth of subscribers (h2) or an equal share.
    unit = a.streams if a.proto == "h2" else 1
    units = -(-a.subs // unit)
    shares = []
    first = 0
    for k in range(a.procs):
        n_units = units // a.procs + (1 if k < units % a.procs else 0)
        n = min(n_units * unit, a.subs - first)
        if n > 0:
            shares.append(first)
            shares.append(n)
        first += n
    ctx = multiprocessing.get_context("fork")
    t0 = time.monotonic()
    pipes: list[Connection] = []
    procs = []
    for k in range(0, len(shares), 2):
        plan = Plan(
            a.host, a.port, a.path, shares[k + 1], a.events, a.proto, a.streams, a.tls, a.timeout
        )
        plan.first = shares[k]
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=child, args=(plan, theirs), daemon=True)
        proc.start()
        procs.append(proc)
        pipes.append(ours)
    ready = failed = 0
    for pipe in pipes:
        msg = pipe.recv()
        if msg[0] == "error":
            print(f"a client process failed: {msg[1]}", file=sys.stderr)
            return 2
        ready += msg[1]
        failed += msg[2]
    if ready == a.subs:
        print(f"READY {(time.monotonic() - t0) * 1000:.0f}", flush=True)
    else:
        print(f"only {ready} of {a.subs} streams became ready ({failed} refused)", file=sys.stderr)
    results = []
    for pipe in pipes:
        msg = pipe.recv()
        if msg[0] == "error":
            print(f"a client process failed: {msg[1]}", file=sys.stderr)
            return 2
        results.append(msg[1])
    for proc in procs:
        proc.join(10)
    samples = array("q")
    for r in results:
        samples.frombytes(r["samples"])
    ordered = sorted(samples)
    events = sum(r["events"] for r in results)
    firsts = [r["first"] for r in results if r["first"]]
    secs = max(r["last"] for r in results) - min(firsts) if firsts else 0.0

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * q))] / 1000 if ordered else 0.0

    ok = events >= a.subs * a.events
    print(
        f"DONE events={events} subs={a.subs} ready={ready} "
        f"closed={sum(r['closed'] for r in results)} resets={sum(r['resets'] for r in results)} "
        f"secs={secs:.3f} rate={events / secs if secs > 0 else 0:.0f}/s "
        f"p50_ms={pct(0.5):.2f} p99_ms={pct(0.99):.2f} max_ms={pct(1.0):.2f} "
        f"cpu_connect_s={sum(r['cpu_connect'] for r in results):.2f} "
        f"cpu_deliver_s={sum(r['cpu_deliver'] for r in results):.2f} ok={int(ok)}",
        flush=True,
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
