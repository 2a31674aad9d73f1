"""One HTTP/2 stream that stops reading is reset; its neighbours get every message.

Usage: `.venv/bin/python bench/h2_stall_check.py [--streams 20] [--messages 200]`

Starts a `tidings serve` (memory store) on a free loopback port, once over TLS (ALPN h2,
a self-signed certificate made here with openssl) and once in cleartext (h2c with prior
knowledge). Each time one HTTP/2 connection opens STREAMS event streams on one channel;
one of them never gives its flow-control window back (no WINDOW_UPDATE for that stream:
a reader that stopped), the others give back every byte they parse. MESSAGES messages
of ~4 KiB are published back to back, more than the stalled stream's window plus the
server's per-subscriber buffer. Checks, and prints one line per mode:

- the stalled stream, and it alone, is reset by the server (RST_STREAM);
- every other stream on the same connection gets every message;
- the connection itself is not closed (no GOAWAY).

Exits 1 if any check fails. Every process it starts is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h2.errors
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from h2sse import H2Subscribers, Tally

HOST = "127.0.0.1"
PATH = "/v1/channels/stall/events"
PUB = "/v1/channels/stall/messages"
STALLED_INDEX = 3  # the 4th stream of the connection stops reading


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def make_cert(folder: Path) -> tuple[Path, Path]:
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


def publish(port: int, ctx: ssl.SSLContext | None, count: int) -> None:
    conn: http.client.HTTPConnection = (
        http.client.HTTPSConnection(HOST, port, context=ctx, timeout=30)
        if ctx is not None
        else http.client.HTTPConnection(HOST, port, timeout=30)
    )
    pad = "x" * 4000
    try:
        for i in range(count):
            body = f"{pad} n={i} ts={time.time_ns() // 1000}".encode()
            conn.request("POST", PUB, body=body, headers={"Content-Type": "text/plain"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 201:
                raise RuntimeError(f"publish {i}: HTTP {resp.status}")
    finally:
        conn.close()


async def check(port: int, cafile: Path | None, streams: int, messages: int) -> list[str]:
    """The failed checks (empty: all held)."""
    loop = asyncio.get_running_loop()
    ctx = None
    if cafile is not None:
        ctx = ssl.create_default_context(cafile=str(cafile))
        ctx.set_alpn_protocols(["h2"])
    tally = Tally(expected=(streams - 1) * messages)
    tally.streams = streams
    headers = [
        (b":method", b"GET"),
        (b":scheme", b"https" if ctx else b"http"),
        (b":authority", f"{HOST}:{port}".encode()),
        (b":path", PATH.encode()),
        (b"accept", b"text/event-stream"),
    ]
    stalled_id = 1 + 2 * STALLED_INDEX  # client streams are numbered 1, 3, 5, ...
    _, proto = await loop.create_connection(
        lambda: H2Subscribers(tally, headers, streams, 0, frozenset({stalled_id})),
        HOST,
        port,
        ssl=ctx,
        server_hostname=HOST if ctx else None,
    )
    await asyncio.wait_for(proto.opened, 10)
    failed = []
    if tally.ready != streams:
        return [f"only {tally.ready} of {streams} streams answered 200"]
    # The publisher speaks HTTP/1.1 (its context offers no ALPN).
    pub_ctx = ssl.create_default_context(cafile=str(cafile)) if cafile is not None else None
    await asyncio.to_thread(publish, port, pub_ctx, messages)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.done.wait(), 30)
    stalled_key = STALLED_INDEX
    others = {k: n for k, n in tally.per_stream.items() if k != stalled_key}
    counts = {k: others.get(k, 0) for k in range(streams) if k != stalled_key}
    short = {k: n for k, n in counts.items() if n < messages}
    if short:
        failed.append(f"streams short of {messages} messages: {short}")
    resets = proto.reset_log
    if [r[0] for r in resets] != [stalled_id]:
        failed.append(f"expected one reset, of stream {stalled_id}; got {resets}")
    elif resets[0][1] != h2.errors.ErrorCodes.CANCEL:
        failed.append(f"the reset's code is {resets[0][1]}, not CANCEL")
    if proto.goaway is not None or proto.transport.is_closing():
        failed.append("the connection was closed")
    got = tally.per_stream.get(stalled_key, 0)
    when = resets[0][2] if resets else None
    mode = "TLS h2" if ctx else "h2c"
    print(
        f"{mode}: stalled stream {stalled_id} received {got} of {messages} messages, then "
        f"RST_STREAM {resets[0][1] if resets else '-'} after {when} deliveries in all; "
        f"{len(counts)} other streams received {min(counts.values(), default=0)}-"
        f"{max(counts.values(), default=0)} each; connection open: "
        f"{not proto.transport.is_closing()}",
        flush=True,
    )
    proto.transport.close()
    return failed


def serve(port: int, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    tidings = str(Path(sys.executable).parent / "tidings")
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [tidings, "serve", "--host", HOST, "--port", str(port), "--store", "memory://",
             "--log-level", "info", "--no-access-log", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: see {log}")
        try:
            socket.create_connection((HOST, port), 0.5).close()
        except OSError:
            time.sleep(0.05)
        else:
            return proc
    raise RuntimeError("the server did not listen")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--messages", type=int, default=200)
    a = p.parse_args()
    failures = []
    with tempfile.TemporaryDirectory(prefix="tidings-h2-stall-") as tmp:
        cert, key = make_cert(Path(tmp))
        for tls in (True, False):
            port = free_port()
            args = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)] if tls else []
            log = Path(tmp) / "server.log"
            proc = serve(port, args, log)
            try:
                failed = uvloop.run(check(port, cert if tls else None, a.streams, a.messages))
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            cuts = [ln for ln in log.read_text().splitlines() if "slow consumer" in ln]
            print(f"  server log: {cuts[-1].strip() if cuts else 'no slow-consumer line'}")
            log.unlink()
            failures += [f"{'TLS' if tls else 'h2c'}: {f}" for f in failed]
    for f in failures:
        print(f"FAILED {f}")
    if not failures:
        print("held: the stalled stream alone was reset; the others got every message")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
