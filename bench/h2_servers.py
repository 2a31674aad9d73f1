"""HTTP/2 for tidings: its own h2 protocol against Hypercorn and Granian running its app.

Usage: `.venv/bin/python bench/h2_servers.py [--rounds 2] [--subs 2000 8000]`

Needs `h2load` (Debian's nghttp2-client), openssl, and Hypercorn and Granian in their own
venv (the same tidings, installed editable):

    python3 -m venv bench/.h2-venv
    bench/.h2-venv/bin/pip install -e '.[server]' hypercorn granian

Every server is one serving process on a free loopback port, over TLS with a self-signed
certificate made here (ALPN h2, HTTP/1.1 for clients that offer nothing else), on a
memory store:

- tidings: `tidings serve --ssl-certfile C --ssl-keyfile K` (its httptools protocol,
  HTTP/2 with the h2 library);
- hypercorn: `hypercorn -k uvloop` running `bench/peers/tidings_asgi.py`'s `app`, with
  `keep_alive_max_requests` lifted (by default it closes a connection after 1,000);
- granian: `granian --interface asgi --http auto` running its `app_coro_send` (the app
  as is fails every live delivery under Granian: the compatibility check shows it), with
  `--backpressure` (its cap on work in progress per worker, by default backlog/workers
  = 1,024) set above the largest fan-out so that it cannot be what limits one.

For each server, in an order that alternates between rounds (the machine is shared):

1. compatibility: one HTTP/2 event stream gets three messages published after it opened,
   and stays open;
2. publish: `h2load -n REQUESTS -c 8 -m 8` POSTing a JSON message to one channel (after a
   warm-up run): requests/s, p50/p99 latency, the server's CPU per request;
3. SSE fan-out, for each SUBS, on a fresh server: bench/h2sse.py opens SUBS event
   streams on one channel over HTTP/2 (100 streams per connection, 2 client processes),
   then MESSAGES messages are published back to back over HTTP/1.1: deliveries/s,
   publish-to-delivery p50/p99 (a burst's latency: it depends on how fast the publisher
   got through, `publish_s`), the time until every stream answered, the server's RSS
   (total and per subscriber) and CPU per delivery, the client's CPU per delivery (what
   the server's framing costs a receiver);
4. a stalled reader, after a control run without one: one HTTP/2 connection with
   STALL_STREAMS event streams, one of which never gives its flow-control window back;
   STALL_MESSAGES messages of STALL_BYTES are published one every STALL_INTERVAL (each
   publish timed, the pace one every stream keeps up with in the control): do the others
   get every message, and one more afterwards; is the stalled stream reset or left open;
   does the connection stay open; how much the server's memory grows beyond the
   control's (a server that keeps everything for the stalled stream grows by all that
   was published); how long publishes take.

Prints one line per measurement, then a table per figure with every round's values and
their ratio to tidings'. Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from h2sse import H2Subscribers, Tally  # noqa: E402

HOST = "127.0.0.1"
VENV = BENCH / ".h2-venv" / "bin"
PEERS = BENCH / "peers"
SERVERS = ("tidings", "hypercorn", "granian")
# Subscribers per HTTP/2 connection in the fan-out: within every server's stream limit
# (tidings 128, Hypercorn 100, Granian 200).
STREAMS_PER_CONN = 100
CLIENT_PROCS = 2
# Granian's cap on work in progress per worker: above the largest fan-out.
GRANIAN_BACKPRESSURE = 20000


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (PKCS#8, as Granian wants)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def server_argv(name: str, port: int, cert: Path, key: Path) -> list[str]:
    if name == "tidings":
        return [
            str(VENV / "tidings"), "serve", "--host", HOST, "--port", str(port),
            "--store", "memory://", "--log-level", "warning", "--no-access-log",
            "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
        ]  # fmt: skip
    if name == "hypercorn":
        # Hypercorn closes a connection after 1,000 requests by default
        # (keep_alive_max_requests); h2load does not reconnect, so the cap is lifted.
        config = cert.parent / "hypercorn.toml"
        config.write_text("keep_alive_max_requests = 1000000000\n")
        return [
            str(VENV / "hypercorn"), "-c", str(config), "-k", "uvloop", "-w", "1",
            "--bind", f"{HOST}:{port}",
            "--certfile", str(cert), "--keyfile", str(key), "--log-level", "warning",
            "tidings_asgi:app",
        ]  # fmt: skip
    target = "tidings_asgi:app" if name == "granian-raw" else "tidings_asgi:app_coro_send"
    return [
        str(VENV / "granian"), "--interface", "asgi", "--http", "auto", "--workers", "1",
        "--host", HOST, "--port", str(port), "--ssl-certificate", str(cert),
        "--ssl-keyfile", str(key), "--backpressure", str(GRANIAN_BACKPRESSURE),
        "--log-level", "warning", target,
    ]  # fmt: skip


def children(pid: int) -> list[int]:
    """Every descendant of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        out += kids
        todo += kids
    return out


def serving_pid(root: int) -> int:
    """The process that runs the app: the one of `root`'s tree that loaded msgspec
    (Hypercorn and Granian serve from a child process; tidings serve from itself)."""
    for pid in [root, *children(root)]:
        with contextlib.suppress(OSError):
            if "msgspec" in Path(f"/proc/{pid}/maps").read_text():
                return pid
    raise RuntimeError(f"no process under {root} has loaded the app")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    pid: int  # the serving process
    tls: ssl.SSLContext  # a client context trusting the certificate (no ALPN: HTTP/1.1)

    def rss(self) -> int:
        return rss_kib(self.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)


def get(srv: Server, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection(HOST, srv.port, context=srv.tls, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@contextlib.contextmanager
def serve(name: str, cert: Path, key: Path, log: Path) -> Iterator[Server]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(PEERS)}
    with log.open("ab") as out:
        out.write(f"==== {name} on {port}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            server_argv(name, port, cert, key),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    tls = ssl.create_default_context(cafile=str(cert))
    try:
        deadline = time.monotonic() + 30
        srv: Server | None = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: see {log}")
            try:
                status, _ = get(Server(name, port, proc, proc.pid, tls), "/readyz")
            except OSError:
                status = 0
            if status == 200:
                srv = Server(name, port, proc, serving_pid(proc.pid), tls)
                break
            time.sleep(0.1)
        if srv is None:
            raise RuntimeError(f"{name}: /readyz did not answer 200 within 30 s")
        yield srv
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server (its own children follow), SIGKILL what is left of its tree."""
    tree = children(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------------------- clients


def publish(srv: Server, channel: str, count: int, text: str, interval: float = 0.0) -> list[float]:
    """POST `count` messages on one HTTP/1.1 keep-alive connection, back to back or one
    every `interval` seconds; each publish's latency in ms. `text` may hold {i} and {ts}
    (microseconds since the epoch)."""
    conn = http.client.HTTPSConnection(HOST, srv.port, context=srv.tls, timeout=60)
    took = []
    start = time.monotonic()
    try:
        for i in range(count):
            if interval:
                time.sleep(max(0.0, start + i * interval - time.monotonic()))
            body = text.format(i=i, ts=time.time_ns() // 1000).encode()
            t0 = time.perf_counter()
            conn.request(
                "POST",
                f"/v1/channels/{channel}/messages",
                body=body,
                headers={"Content-Type": "text/plain"},
            )
            resp = conn.getresponse()
            answer = resp.read()
            took.append((time.perf_counter() - t0) * 1000)
            if resp.status != 201:
                raise RuntimeError(f"publish {i}: HTTP {resp.status} {answer[:200]!r}")
    finally:
        conn.close()
    return took


def h2_headers(port: int, path: str) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", f"{HOST}:{port}".encode()),
        (b":path", path.encode()),
        (b"accept", b"text/event-stream"),
    ]


async def open_streams(
    srv: Server, cert: Path, path: str, count: int, tally: Tally, stall: frozenset[int]
) -> H2Subscribers:
    """`count` event streams on one HTTP/2 connection (TLS, ALPN h2)."""
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.set_alpn_protocols(["h2"])
    tally.streams = count
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: H2Subscribers(tally, h2_headers(srv.port, path), count, 0, stall),
        HOST,
        srv.port,
        ssl=ctx,
        server_hostname=HOST,
    )
    await asyncio.wait_for(proto.opened, 10)
    return proto


async def compat_check(srv: Server, cert: Path) -> dict[str, Any]:
    """One stream, three messages published after it opened: all arrive, it stays open."""
    tally = Tally(expected=3)
    proto = await open_streams(srv, cert, "/v1/channels/compat/events", 1, tally, frozenset())
    await asyncio.sleep(0.2)
    await asyncio.to_thread(publish, srv, "compat", 3, "compat {i}")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.done.wait(), 5)
    await asyncio.sleep(0.2)
    ok = tally.events == 3 and tally.closed == 0 and tally.resets == 0
    proto.transport.close()
    return {"ok": ok, "events": tally.events, "closed": tally.closed, "resets": tally.resets}


def h2load(srv: Server, body: Path, requests: int) -> dict[str, float]:
    """h2load POSTing `body` as JSON: a warm-up run, then `requests` with a request log."""
    url = f"https://{HOST}:{srv.port}/v1/channels/bench/messages"
    argv = ["h2load", "-c", "8", "-m", "8", "-d", str(body), "-H", "content-type: application/json"]
    warm = str(max(requests // 10, 100))
    subprocess.run([*argv, "-n", warm, url], check=True, capture_output=True)
    with tempfile.TemporaryDirectory(prefix="tidings-h2load-") as tmp:
        log = Path(tmp) / "requests.log"
        cpu0 = srv.cpu()
        out = subprocess.run(
            [*argv, "-n", str(requests), "--log-file", str(log), url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cpu = srv.cpu() - cpu0
        micros = sorted(int(line.split()[2]) for line in log.read_text().splitlines() if line)
    rps = re.search(r"finished in [0-9.]+m?s, ([0-9.]+) req/s", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    proto = re.search(r"Application protocol: (\S+)", out)
    if rps is None or codes is None or proto is None:
        raise RuntimeError(f"h2load printed no figures: {out[-600:]!r}")
    if proto.group(1) != "h2":
        raise RuntimeError(f"h2load spoke {proto.group(1)}, not h2")
    n = max(len(micros), 1)
    return {
        "req_s": float(rps.group(1)),
        "p50_ms": micros[n // 2] / 1000 if micros else 0.0,
        "p99_ms": micros[min(n - 1, int(n * 0.99))] / 1000 if micros else 0.0,
        "srv_us_req": cpu / requests * 1e6,
        "non_2xx": float(requests - int(codes.group(1))),
    }


DONE_RE = re.compile(r"(\w+)=([0-9.]+)")


def fanout(srv: Server, cert: Path, subs: int, messages: int) -> dict[str, float]:
    """bench/h2sse.py opens `subs` streams, then `messages` are published back to back."""
    channel = f"fan{subs}"
    argv = [
        sys.executable, str(BENCH / "h2sse.py"), HOST, str(srv.port),
        f"/v1/channels/{channel}/events", str(subs), str(messages),
        "--proto", "h2", "--streams", str(STREAMS_PER_CONN), "--procs", str(CLIENT_PROCS),
        "--tls", str(cert), "--timeout", "60",
    ]  # fmt: skip
    rss0, cpu0 = srv.rss(), srv.cpu()
    client = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        line = client.stdout.readline()
        if not line.startswith("READY"):
            client.wait(70)
            err = client.stderr.read() if client.stderr else ""
            return {"failed": 1.0, **_note(f"not ready: {line!r} {err[-300:]!r}")}
        ready_ms = float(line.split()[1])
        cpu1 = srv.cpu()
        time.sleep(0.5)  # the last handshakes settle before memory is read
        rss1, cpu2 = srv.rss(), srv.cpu()
        t0 = time.monotonic()
        publish(srv, channel, messages, "msg {i} ts={ts}")
        publish_s = time.monotonic() - t0
        out, err = client.communicate(timeout=90)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait(5)
    cpu3 = srv.cpu()
    done = [ln for ln in out.splitlines() if ln.startswith("DONE")]
    if not done:
        return {"failed": 1.0, **_note(f"no DONE line: {out[-200:]!r} {err[-300:]!r}")}
    d = {k: float(v) for k, v in DONE_RE.findall(done[-1])}
    return {
        "deliveries_s": d["rate"],
        "p50_ms": d["p50_ms"],
        "p99_ms": d["p99_ms"],
        "connect_ms": ready_ms,
        "srv_cpu_connect_s": cpu1 - cpu0,
        "srv_us_delivery": (cpu3 - cpu2) / max(d["events"], 1) * 1e6,
        "rss_mib": rss1 / 1024,
        "rss_kib_sub": (rss1 - rss0) / subs,
        "client_cpu_deliver_s": d["cpu_deliver_s"],
        "client_us_delivery": d["cpu_deliver_s"] / max(d["events"], 1) * 1e6,
        "publish_s": publish_s,
        "secs": d["secs"],
        "delivered": d["events"],
        "expected": float(subs * messages),
        "failed": 0.0 if d["ok"] else 1.0,
    }


NOTES: list[str] = []


def _note(text: str) -> dict[str, float]:
    NOTES.append(text)
    return {}


def cut_count(srv: Server) -> float:
    """tidings_subscribers_cut_total from /metrics (-1 when it cannot be read)."""
    status, body = get(srv, "/metrics")
    m = re.search(rb"^tidings_subscribers_cut_total(?:\{[^}]*\})? ([0-9.e+]+)", body, re.M)
    return float(m.group(1)) if status == 200 and m else -1.0


@dataclass
class StallPlan:
    streams: int
    messages: int
    size: int
    interval: float  # seconds between publishes


async def stall_check(srv: Server, cert: Path, plan: StallPlan, stall: bool) -> dict[str, Any]:
    """One connection with `plan.streams` event streams; with `stall` the 4th never gives
    its flow-control window back. `plan.messages` of `plan.size` bytes are published one
    every `plan.interval` s; what the other streams got, what happened to the stalled one,
    and what it cost the publisher and the server's memory. Without `stall` (the control)
    it shows the load alone is within what every stream can take."""
    stalled_index = 3
    stalled_id = 1 + 2 * stalled_index  # client streams are numbered 1, 3, 5, ...
    channel = f"stall{int(stall)}"
    tally = Tally(expected=plan.streams * plan.messages)  # done only by the wait below
    cuts0 = cut_count(srv)
    rss0 = srv.rss()
    proto = await open_streams(
        srv,
        cert,
        f"/v1/channels/{channel}/events",
        plan.streams,
        tally,
        frozenset({stalled_id}) if stall else frozenset(),
    )
    if tally.ready != plan.streams:
        return {"error": f"only {tally.ready} of {plan.streams} streams answered 200"}
    await asyncio.sleep(0.2)
    text = "x" * plan.size + " n={i} ts={ts}"
    t0 = time.monotonic()
    took = await asyncio.to_thread(publish, srv, channel, plan.messages, text, plan.interval)
    publish_s = time.monotonic() - t0
    others = [k for k in range(plan.streams) if k != stalled_index or not stall]
    deadline = time.monotonic() + 15
    # h2sse's Tally signals only a total; the per-stream counts are polled.
    while time.monotonic() < deadline and any(  # noqa: ASYNC110
        tally.per_stream.get(k, 0) < plan.messages for k in others
    ):
        await asyncio.sleep(0.02)
    others_done_s = time.monotonic() - t0
    await asyncio.sleep(0.5)  # whatever the server does about the stalled stream, done
    rss1 = srv.rss()
    counts = [tally.per_stream.get(k, 0) for k in others]
    # The neighbours go on afterwards: one more message reaches every one of them.
    before = dict(tally.per_stream)
    await asyncio.to_thread(publish, srv, channel, 1, "after n={i}")
    await asyncio.sleep(1.0)
    after_ok = all(tally.per_stream.get(k, 0) > before.get(k, 0) for k in others)
    stalled_resets = [r for r in proto.reset_log if r[0] == stalled_id and stall]
    other_resets = [r for r in proto.reset_log if r[0] != stalled_id or not stall]
    conn_open = proto.goaway is None and not proto.transport.is_closing()
    cuts = cut_count(srv) - cuts0 if cuts0 >= 0 else -1.0
    proto.transport.close()
    ordered = sorted(took)
    got: dict[str, Any] = {
        "others_all": min(counts) == plan.messages,
        "others_min": min(counts),
        "others_after": after_ok,
        "other_resets": len(other_resets),
        "conn_open": conn_open,
        "hub_cuts": cuts,
        "publish_s": round(publish_s, 2),
        "publish_p50_ms": round(ordered[len(ordered) // 2], 2),
        "publish_max_ms": round(ordered[-1], 1),
        "others_done_s": round(others_done_s, 2),
        "rss_growth_mib": round((rss1 - rss0) / 1024, 1),
    }
    if stall:
        got["stalled_got"] = tally.per_stream.get(stalled_index, 0)
        got["stalled_reset"] = stalled_resets[0][1] if stalled_resets else None
        got["stalled_open"] = stalled_id in proto.bodies
    return got


# ---------------------------------------------------------------------------- report


def fmt(v: float) -> str:
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:,.2f}"


def table(title: str, rows: dict[str, list[dict[str, float]]], keys: list[str]) -> None:
    """Each server's per-round values of `keys` and the median's ratio to tidings'."""
    print(f"\n## {title}")
    base = rows.get("tidings", [])
    for key in keys:
        print(f"  {key}")
        ref = statistics.median([r[key] for r in base if key in r]) if base else None
        for name, runs in rows.items():
            vals = [r[key] for r in runs if key in r]
            if not vals:
                print(f"    {name:<10} -")
                continue
            med = statistics.median(vals)
            ratio = f"  x{med / ref:.2f} of tidings" if ref and name != "tidings" else ""
            print(f"    {name:<10} {' / '.join(fmt(v) for v in vals):<32} median {fmt(med)}{ratio}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--servers", nargs="+", default=list(SERVERS), choices=SERVERS)
    p.add_argument("--subs", type=int, nargs="+", default=[2000, 8000])
    p.add_argument("--messages", type=int, default=100)
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--stall-streams", type=int, default=20)
    p.add_argument("--stall-messages", type=int, default=600)
    p.add_argument("--stall-bytes", type=int, default=16000)
    p.add_argument("--stall-interval", type=float, default=0.004)
    p.add_argument("--skip", nargs="*", default=[], choices=["publish", "fanout", "stall"])
    p.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    a = p.parse_args()
    for tool in ("h2load", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (h2load: apt-get install -y nghttp2-client)")
    for exe in ("tidings", "hypercorn", "granian"):
        if not (VENV / exe).exists():
            sys.exit(f"{VENV / exe} is missing: make bench/.h2-venv (see this file's help)")

    stall_plan = StallPlan(a.stall_streams, a.stall_messages, a.stall_bytes, a.stall_interval)
    results: dict[str, Any] = {"compat": {}, "publish": {}, "fanout": {}, "stall": {}}
    with tempfile.TemporaryDirectory(prefix="tidings-h2-servers-") as tmp:
        cert, key = make_cert(Path(tmp))
        body = Path(tmp) / "body.json"
        body.write_text(json.dumps({"data": "msg 0 ts=1700000000000000"}))
        log = Path(tmp) / "servers.log"
        t_start = time.monotonic()

        print("== compatibility: one HTTP/2 stream gets 3 live messages and stays open")
        for name in ("tidings", "hypercorn", "granian-raw", "granian"):
            with serve(name, cert, key, log) as srv:
                got = uvloop.run(compat_check(srv, cert))
            results["compat"][name] = got
            print(f"  {name:<12} {got}", flush=True)

        for r in range(a.rounds):
            order = a.servers if r % 2 == 0 else a.servers[::-1]
            print(f"== round {r + 1}: {' '.join(order)}", flush=True)
            for name in order:
                with serve(name, cert, key, log) as srv:
                    print(f"  {name} (pid {srv.pid}, RSS {srv.rss() / 1024:.0f} MiB idle)")
                    if "publish" not in a.skip:
                        got = h2load(srv, body, a.requests)
                        results["publish"].setdefault(name, []).append(got)
                        print(f"    publish: {got}", flush=True)
                    if "stall" not in a.skip:
                        for stall in (False, True):
                            got = uvloop.run(stall_check(srv, cert, stall_plan, stall))
                            what = "stalled reader" if stall else "control (nobody stalls)"
                            results["stall"].setdefault(what, {}).setdefault(name, []).append(got)
                            print(f"    {what}: {got}", flush=True)
                if "fanout" not in a.skip:
                    for subs in a.subs:
                        # A fresh server per size: RSS per subscriber from a clean start.
                        with serve(name, cert, key, log) as srv:
                            got = fanout(srv, cert, subs, a.messages)
                        results["fanout"].setdefault(subs, {}).setdefault(name, []).append(got)
                        print(f"    fan-out {subs}: {got}", flush=True)
        elapsed = time.monotonic() - t_start
        server_log = log.read_text(errors="replace")

    if results["publish"]:
        table(
            f"publish: h2load -n {a.requests} -c 8 -m 8, JSON body, TLS h2",
            results["publish"],
            ["req_s", "p50_ms", "p99_ms", "srv_us_req", "non_2xx"],
        )
    for subs, rows in results["fanout"].items():
        table(
            f"SSE fan-out over TLS h2: {subs} subscribers ({STREAMS_PER_CONN} per connection), "
            f"{a.messages} messages",
            rows,
            [
                "deliveries_s", "p50_ms", "p99_ms", "connect_ms", "srv_cpu_connect_s",
                "srv_us_delivery", "rss_mib", "rss_kib_sub", "client_us_delivery", "publish_s",
                "secs", "failed",
            ],
        )  # fmt: skip
    for what, rows in results["stall"].items():
        print(
            f"\n## {what}: {a.stall_streams} streams on one connection; {a.stall_messages} "
            f"messages of {a.stall_bytes} bytes, one every {a.stall_interval * 1000:g} ms"
        )
        for name, runs in rows.items():
            for run in runs:
                print(f"  {name:<10} {run}")
    for note in NOTES:
        print(f"note: {note}")
    said = [ln for ln in server_log.splitlines() if ln.strip() and not ln.startswith("====")]
    if said:
        print("\nwhat the servers logged (last 40 lines):\n  " + "\n  ".join(said[-40:]))
    print(f"\nmeasured in {elapsed:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
