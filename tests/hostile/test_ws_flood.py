"""WebSocket clients that send without end and never read: the server's memory stays
bounded (the socket is paused, or dropped) and other clients are served meanwhile."""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory

pytestmark = pytest.mark.timeout(90)

OP_TEXT = 0x1
OP_PING = 0x9
# What a flood may add to the server's resident memory: kernel socket buffers are not in
# it, a write buffer growing with every unread pong or ack would be.
RSS_GROWTH_LIMIT = 40 * 1024 * 1024


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def open_ws(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), 10)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def flood(sock: socket.socket, batch: bytes, total: int) -> str:
    """Send `batch` until `total` bytes went out: 'sent', or how the server stopped it."""
    sock.settimeout(3)
    sent = 0
    try:
        while sent < total:
            sock.sendall(batch)
            sent += len(batch)
    except TimeoutError:
        return "paused"
    except OSError:
        return "dropped"
    return "sent"


def test_a_client_that_floods_pings_and_never_reads_cannot_grow_the_server(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    sock = open_ws(srv.port, "/v1/channels/flood/ws")
    try:
        before = rss(srv.pid)
        pings = frame(OP_PING, b"p" * 125) * 500
        outcome = flood(sock, pings, 300 * 1024 * 1024)
        growth = rss(srv.pid) - before
        assert outcome in ("paused", "dropped"), "300 MiB of pings were all taken"
        assert growth < RSS_GROWTH_LIMIT, f"the server grew by {growth / 2**20:.0f} MiB"
        started = time.monotonic()
        assert httpx.get(f"{srv.url}/healthz", timeout=5).is_success
        assert time.monotonic() - started < 2
    finally:
        sock.close()


def test_a_client_that_floods_publishes_and_never_reads_its_acks_cannot_grow_the_server(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server(args=["--max-messages", "100"])
    sock = open_ws(srv.port, "/v1/channels/flood/ws")
    try:
        before = rss(srv.pid)
        publishes = frame(OP_TEXT, b'{"data": "' + b"x" * 4000 + b'"}') * 16
        outcome = flood(sock, publishes, 300 * 1024 * 1024)
        growth = rss(srv.pid) - before
        assert outcome in ("paused", "dropped"), "300 MiB of publishes were all taken"
        assert growth < RSS_GROWTH_LIMIT, f"the server grew by {growth / 2**20:.0f} MiB"
        assert httpx.get(f"{srv.url}/healthz", timeout=5).is_success
    finally:
        sock.close()
