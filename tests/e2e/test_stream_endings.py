"""Streams the server ends leave nothing behind: no error in its log, whoever hangs up first."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

pytestmark = pytest.mark.timeout(30)


def _open_sse(port: int, path: str, ready: bytes) -> tuple[socket.socket, bytes]:
    """Open a raw SSE stream and read until `ready` has arrived."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    sock.sendall(request.encode())
    data = b""
    while ready not in data:
        data += sock.recv(65536)
    return sock, data


def _read_until_then_hang_up(sock: socket.socket, data: bytes, marker: bytes) -> bytes:
    with sock:
        while marker not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


def test_a_client_hanging_up_after_a_jobs_last_event_leaves_no_error(tidings_server):
    """Regression: the stream's end raced the client's close and uvicorn logged an
    'ASGI callable returned without completing response' error."""
    srv = tidings_server(store="memory://", env={"TIDINGS_LOG_LEVEL": "info"})
    port = int(srv.url.rsplit(":", 1)[1])
    for _ in range(5):
        job = httpx.post(f"{srv.url}/v1/jobs", json={"type": "t"}).json()
        leased = httpx.post(f"{srv.url}/v1/workers/lease", json={"types": ["t"]}).json()["jobs"]
        token = leased[0]["lease_token"]
        # Follow the job live, then let its last event arrive while the client listens.
        sock, data = _open_sse(port, f"/v1/jobs/{job['id']}/events", b"event: running")
        done = httpx.post(
            f"{srv.url}/v1/jobs/{job['id']}/complete", json={"lease_token": token, "result": 1}
        )
        assert done.status_code == 200
        body = _read_until_then_hang_up(sock, data, b"event: succeeded")
        assert b"event: succeeded" in body
    time.sleep(0.5)
    assert httpx.get(f"{srv.url}/healthz").status_code == 200
    assert "ERROR" not in srv.log()
    assert "Exception" not in srv.log()
