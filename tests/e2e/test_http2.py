"""HTTP/2: over TLS by ALPN (HTTP/1.1 still offered), and cleartext with prior knowledge.

Real clients against the real server: httpx with `http2=True` (the h2 library), curl, and
the websockets library for a WebSocket beside HTTP/2 on the same TLS port.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerFactory, ServerProcess


def tls_args(self_signed: tuple[Path, Path]) -> list[str]:
    cert, key = self_signed
    return ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]


@pytest.fixture
def tls_server(tidings_server: ServerFactory, self_signed: tuple[Path, Path]) -> ServerProcess:
    return tidings_server(args=tls_args(self_signed))


@pytest.mark.timeout(30)
def test_tls_offers_http2_by_alpn_and_still_serves_http11(tls_server: ServerProcess) -> None:
    srv = tls_server
    with httpx.Client(base_url=srv.url, http2=True, verify=srv.verify, timeout=10) as h2c:
        r = h2c.post("/v1/channels/tls/messages", json={"data": 1})
        assert r.status_code == 201, r.text
        assert r.http_version == "HTTP/2"
        page = h2c.get("/v1/channels/tls/messages", params={"after": "0"})
        assert page.http_version == "HTTP/2"
        assert [m["data"] for m in page.json()["messages"]] == [1]
        assert "date" in page.headers
        assert page.headers["content-type"] == "application/json"
    with httpx.Client(base_url=srv.url, http2=False, verify=srv.verify, timeout=10) as h1c:
        old = h1c.get("/v1/channels/tls/messages", params={"after": "0"})
        assert old.http_version == "HTTP/1.1"
        assert old.json() == page.json()


@pytest.mark.timeout(30)
def test_cleartext_prior_knowledge_serves_http2(tidings_server: ServerFactory) -> None:
    """`curl --http2-prior-knowledge` and httpx's cleartext HTTP/2 both get HTTP/2; a plain
    HTTP/1.1 request on the same port is still HTTP/1.1."""
    srv = tidings_server()
    curl = shutil.which("curl")
    if curl is None:
        pytest.fail("curl is missing: install the Debian package curl")
    out = subprocess.run(
        [curl, "-s", "-i", "--http2-prior-knowledge", f"{srv.url}/healthz"],
        capture_output=True,
        timeout=10,
        check=True,
    ).stdout.decode()
    assert out.startswith("HTTP/2 200"), out
    with httpx.Client(base_url=srv.url, http1=False, http2=True, timeout=10) as h2c:
        r = h2c.post("/v1/channels/clear/messages", json={"data": "x"})
        assert (r.status_code, r.http_version) == (201, "HTTP/2")
        # A long poll answered by a publish from another connection.
        waiting = h2c.build_request(
            "GET", "/v1/channels/clear/messages", params={"after": r.json()["id"], "wait": "5"}
        )
        with httpx.Client(base_url=srv.url, timeout=10) as other:
            other.post("/v1/channels/clear/messages", json={"data": "y"})
        answer = h2c.send(waiting)
        assert [m["data"] for m in answer.json()["messages"]] == ["y"]
    assert httpx.get(f"{srv.url}/healthz", timeout=5).http_version == "HTTP/1.1"


class RawH2:
    """An HTTP/2 client on one TLS connection (ALPN h2), driven frame by frame with the
    h2 library: streams are opened and read exactly as the test says."""

    def __init__(self, srv: ServerProcess) -> None:
        assert isinstance(srv.verify, ssl.SSLContext)
        context = srv.verify
        context.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        assert self.sock.selected_alpn_protocol() == "h2"
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.sock.sendall(self.conn.data_to_send())

    def get(self, path: str) -> int:
        stream_id: int = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", b"GET"),
            (b":path", path.encode()),
            (b":scheme", b"https"),
            (b":authority", b"127.0.0.1"),
        ]
        self.conn.send_headers(stream_id, headers, end_stream=True)
        self.sock.sendall(self.conn.data_to_send())
        return stream_id

    def events(self, timeout: float) -> list[h2.events.Event]:
        """What arrives within `timeout` seconds (at least one read); data is acknowledged."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 16)
        except TimeoutError:
            return []
        if not data:
            raise ConnectionError("the server closed the connection")
        got = self.conn.receive_data(data)
        for event in got:
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        self.sock.sendall(self.conn.data_to_send())
        return got

    def close(self) -> None:
        self.sock.close()


@pytest.mark.timeout(40)
def test_twenty_sse_streams_share_one_http2_connection_and_all_stay_live(
    tls_server: ServerProcess,
) -> None:
    """What a browser page with 20 EventSources does over HTTP/2: one connection, 20
    streams, each answered at once and each receiving every message, typed (format=json)."""
    srv = tls_server
    client = RawH2(srv)
    try:
        streams = {
            client.get(f"/v1/channels/page.{n % 4}/events?format=json"): n for n in range(20)
        }
        heads: dict[int, list[tuple[bytes, bytes]]] = {}
        got: dict[int, list[Any]] = {sid: [] for sid in streams}
        deadline = time.monotonic() + 10
        while len(heads) < len(streams) and time.monotonic() < deadline:
            for event in client.events(1):
                if isinstance(event, h2.events.ResponseReceived):
                    heads[event.stream_id] = list(event.headers)
        assert len(heads) == len(streams)
        for headers in heads.values():
            assert (b":status", b"200") in headers
            assert (b"content-type", b"text/event-stream; charset=utf-8") in headers
        values: list[Any] = ["1", 1, {"a": [True]}]
        with httpx.Client(base_url=srv.url, http2=True, verify=srv.verify, timeout=10) as pub:
            for v in values:
                for ch in range(4):
                    r = pub.post(f"/v1/channels/page.{ch}/messages", json={"data": v})
                    assert r.status_code == 201
        text: dict[int, str] = dict.fromkeys(streams, "")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(len(g) < len(values) for g in got.values()):
            for event in client.events(1):
                if isinstance(event, h2.events.DataReceived):
                    text[event.stream_id] += event.data.decode()
                    frames = text[event.stream_id].split("\n\n")
                    text[event.stream_id] = frames.pop()
                    for frame in frames:
                        for line in frame.split("\n"):
                            if line.startswith("data: "):
                                got[event.stream_id].append(json.loads(line[6:])["data"])
        assert got == dict.fromkeys(streams, values)
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_websocket_and_jobs_work_beside_http2_on_the_tls_port(tls_server: ServerProcess) -> None:
    """A WebSocket upgrade is HTTP/1.1 (ALPN offers both); a job submitted over HTTP/2 is
    followed to its end over HTTP/2 by a long poll."""
    srv = tls_server
    with ws_connect(f"{srv.ws_url}/v1/channels/wss/ws", ssl=srv.verify, open_timeout=5) as ws:  # type: ignore[arg-type]
        with httpx.Client(base_url=srv.url, http2=True, verify=srv.verify, timeout=10) as c:
            c.post("/v1/channels/wss/messages", json={"data": "over wss"})
        frame = json.loads(ws.recv(timeout=5))
        assert frame["data"] == "over wss"
    with httpx.Client(base_url=srv.url, http2=True, verify=srv.verify, timeout=15) as c:
        job = c.post("/v1/jobs", json={"type": "h2.echo", "payload": {"n": 1}}).json()
        lease = c.post("/v1/workers/lease", json={"types": ["h2.echo"], "max": 1, "wait": 5}).json()
        leased = lease["jobs"][0]
        assert leased["id"] == job["id"]
        done = c.post(
            f"/v1/jobs/{job['id']}/complete",
            json={"lease_token": leased["lease_token"], "result": {"ok": True}},
        )
        assert done.status_code == 200, done.text
        final = c.get(f"/v1/jobs/{job['id']}", params={"wait": "5"})
        assert final.http_version == "HTTP/2"
        assert (final.json()["status"], final.json()["result"]) == ("succeeded", {"ok": True})


@pytest.mark.timeout(30)
def test_shutdown_ends_http2_streams_with_a_close_event(tls_server: ServerProcess) -> None:
    """SIGTERM drains: an HTTP/2 SSE stream gets its `close` event and the server exits cleanly."""
    srv = tls_server

    async def main() -> str:
        async with (
            httpx.AsyncClient(
                base_url=srv.url, http2=True, verify=srv.verify, timeout=20
            ) as client,
            client.stream("GET", "/v1/channels/bye/events") as resp,
        ):
            assert resp.http_version == "HTTP/2"
            loop = asyncio.get_running_loop()
            stopping = loop.run_in_executor(None, srv.stop)
            text = ""
            async for chunk in resp.aiter_text():
                text += chunk
                if "event: close" in text:
                    break
            # A clean shutdown; uvicorn then re-raises the signal it caught.
            assert await stopping in (0, -signal.SIGTERM)
            return text

    assert "event: close" in asyncio.run(main())
