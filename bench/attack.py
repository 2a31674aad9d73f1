#!/usr/bin/env python3
"""The hostile clients of `make bench`'s "under attack" row, and the normal client it times.

Two roles:

* `attack.py attack --port P --source ADDR [--slowloris N] [--logins N] [--endless N]
  --secs S` runs, from local address ADDR, until S seconds have passed:
  - N slowloris connections: each sends a request line and one header byte every few
    seconds, and reconnects a second after the server cuts or refuses it (as slowloris
    tools re-open dropped sockets on their next round);
  - N concurrent wrong-password logins, each repeated as soon as it is answered (a 429's
    Retry-After ignored), on a connection re-opened a second after it is cut or refused;
  - N endless headers: one header value written in 64 KiB pieces without end, the
    connection reopened when the server cuts it.
  It prints one JSON line of what it did (connections opened, cut, answers by status).

* `timed(port, source, count)` (used by bench/run.py) times `count` GET /healthz and
  `count` publishes, each on a fresh connection from `source`, and counts every request
  that was refused, reset or answered with an error.

Every loop is bounded by the deadline; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import socket
import statistics
import sys
import time
from collections import Counter

HOST = "127.0.0.1"


# ---------------------------------------------------------------------------- the normal client


def _request(port: int, source: str, method: str, path: str, body: bytes | None) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=10, source_address=(source, 0))
    try:
        headers = {"Content-Type": "text/plain"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def timed(
    port: int, source: str, count: int, pause: float = 0.01, budget: float = 60.0
) -> dict[str, float]:
    """p50/p99 of /healthz and of a publish, each on a fresh connection; failures counted.

    Requests still unsent when `budget` seconds have passed are counted as refused.
    """
    figures: dict[str, float] = {}
    failed = 0
    deadline = time.monotonic() + budget
    for name, method, path, body in (
        ("healthz", "GET", "/healthz", None),
        ("publish", "POST", "/v1/channels/attack/messages", b"hello"),
    ):
        times: list[float] = []
        for _ in range(count):
            if time.monotonic() > deadline:
                failed += 1
                continue
            start = time.perf_counter()
            try:
                status = _request(port, source, method, path, body)
            except OSError:
                status = 0
            if status >= 300 or status == 0:
                failed += 1
            else:
                times.append((time.perf_counter() - start) * 1000)
            time.sleep(pause)
        times.sort()
        figures[f"{name}_p50_ms"] = statistics.median(times) if times else 0.0
        figures[f"{name}_p99_ms"] = times[max(0, int(len(times) * 0.99) - 1)] if times else 0.0
    figures["refused"] = float(failed)
    return figures


# ---------------------------------------------------------------------------- the attackers


class Tally:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()


async def _open(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port, local_addr=(source, 0))


async def slowloris(port: int, source: str, deadline: float, tally: Tally) -> None:
    """A request whose headers never end: one byte every 3 s, reconnecting when cut."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await _open(port, source)
        except OSError:
            tally.counts["slowloris_connect_failed"] += 1
            await asyncio.sleep(1)
            continue
        tally.counts["slowloris_connections"] += 1
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            while time.monotonic() < deadline:
                await writer.drain()
                # Anything the server says (a 408, or the end of the stream) means it cut us.
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(4096), 3.0) is not None:
                        tally.counts["slowloris_cut"] += 1
                        break
                writer.write(b"a")
        except OSError:
            tally.counts["slowloris_cut"] += 1
        finally:
            writer.close()
        await asyncio.sleep(1)


async def bad_logins(port: int, source: str, deadline: float, tally: Tally) -> None:
    """Wrong passwords, one request after another on one connection (a new one when cut)."""
    body = json.dumps({"username": "alice", "password": "not the password"}).encode()
    request = (
        b"POST /v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    while time.monotonic() < deadline:
        try:
            reader, writer = await _open(port, source)
        except OSError:
            tally.counts["login_connect_failed"] += 1
            await asyncio.sleep(0.5)
            continue
        try:
            while time.monotonic() < deadline:
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
                status = head.split(b" ", 2)[1].decode()
                tally.counts[f"login_{status}"] += 1
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if b"connection: close" in head.lower():
                    break
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            tally.counts["login_cut"] += 1
        finally:
            writer.close()
        await asyncio.sleep(1)


async def endless_header(port: int, source: str, deadline: float, tally: Tally) -> None:
    """One header value written in 64 KiB pieces until the server cuts the connection."""
    piece = b"x" * 65536
    while time.monotonic() < deadline:
        try:
            _reader, writer = await _open(port, source)
        except OSError:
            tally.counts["endless_connect_failed"] += 1
            await asyncio.sleep(0.2)
            continue
        tally.counts["endless_connections"] += 1
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
            while time.monotonic() < deadline:
                writer.write(piece)
                await asyncio.wait_for(writer.drain(), 5)
                tally.counts["endless_bytes"] += len(piece)
        except (OSError, TimeoutError):
            tally.counts["endless_cut"] += 1
        finally:
            writer.close()


async def attack(args: argparse.Namespace) -> dict[str, int]:
    deadline = time.monotonic() + args.secs
    tally = Tally()
    tasks = [
        *(slowloris(args.port, args.source, deadline, tally) for _ in range(args.slowloris)),
        *(bad_logins(args.port, args.source, deadline, tally) for _ in range(args.logins)),
        *(endless_header(args.port, args.source, deadline, tally) for _ in range(args.endless)),
    ]
    print("ATTACKING", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    return dict(tally.counts)


def main() -> int:
    parser = argparse.ArgumentParser(description="hostile clients for the under-attack bench")
    sub = parser.add_subparsers(dest="role", required=True)
    a = sub.add_parser("attack")
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--source", default="127.0.0.2")
    a.add_argument("--slowloris", type=int, default=1000)
    a.add_argument("--logins", type=int, default=300)
    a.add_argument("--endless", type=int, default=1)
    a.add_argument("--secs", type=float, default=30.0)
    t = sub.add_parser("timed")
    t.add_argument("--port", type=int, required=True)
    t.add_argument("--source", default="127.0.0.1")
    t.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    if args.role == "attack":
        socket.setdefaulttimeout(10)
        print(json.dumps(asyncio.run(attack(args))), flush=True)
    else:
        print(json.dumps(timed(args.port, args.source, args.count)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
