"""What the limits refuse shows in /metrics, so an operator sees an attack as it happens."""

from __future__ import annotations

import re
import socket
import time

import httpx
import pytest

from tests.conftest import ServerFactory


def _samples(url: str) -> dict[str, float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^(tidings_\S+) (\S+)$", text, re.MULTILINE)
    }


def _raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        if data:
            sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.timeout(60)
def test_refused_connections_heads_and_logins_are_counted_in_metrics(
    tidings_server: ServerFactory,
) -> None:
    limits = ["--limit-loopback", "--max-connections-per-address", "2"]
    srv = tidings_server(args=[*limits, "--login-rate-per-address", "1"])
    before = _samples(srv.url)
    assert before['tidings_connections_refused_total{reason="head_too_large"}'] == 0
    assert before["tidings_connections_limit"] > 0
    # A header block over the limit: 431, counted.
    answer = _raw(srv.port, b"GET /healthz HTTP/1.1\r\nX-Big: " + b"x" * 40_000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431")
    # Two connections held: the third from this address is refused, counted.
    held = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.2)
        # Refused as it connects; the request it sent is never read, yet the client
        # gets the answer, not a reset (the server lingers until the client closes).
        answer = _raw(srv.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 429"), answer
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    # A second login within the minute from this address: 429, counted by its limit.
    body = {"username": "nobody", "password": "wrong"}
    assert httpx.post(f"{srv.url}/v1/auth/login", json=body, timeout=10).status_code == 401
    assert httpx.post(f"{srv.url}/v1/auth/login", json=body, timeout=10).status_code == 429
    after = _samples(srv.url)
    assert after['tidings_connections_refused_total{reason="head_too_large"}'] == 1
    assert after['tidings_connections_refused_total{reason="per_address"}'] == 1
    assert after['tidings_logins_refused_total{reason="address"}'] == 1
    assert after['tidings_logins_refused_total{reason="account"}'] == 0
    assert after["tidings_connections"] >= 1  # this scrape's own connection
