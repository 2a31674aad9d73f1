"""The fan-out's straight writes, against a real uvicorn with tidings' protocols and raw
sockets reading the exact bytes: an SSE stream's HTTP chunk (http/protocol.py
ChunkWriter) and a WebSocket's whole frames (ws_protocol.write_frames).

A writer must write only where `send` would write the same bytes at once: after the
head (the handshake), on a response not yet complete (a socket open), while the
transport takes writes. Anywhere else it refuses (False), and the caller goes through
`send`.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from tests.unit.server.http.servers import uvicorn_thread
from tidings.server.http.protocol import chunk_writer
from tidings.server.http.ws_protocol import TidingsWebSocketProtocol
from tidings.server.transports.kind import ws_text_frame

pytestmark = pytest.mark.timeout(30)


def chunk(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(body), body)


def request(port: int, method: str = "GET", path: str = "/") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return sock


def read_until_closed_or(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        got = sock.recv(65536)
        if not got:
            break
        data += got
    return data


def dechunk(body: bytes) -> bytes:
    """The payload of a chunked body, checking every chunk's framing."""
    out = b""
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line, 16)
        assert rest[size : size + 2] == b"\r\n", f"bad chunk framing at {body[:40]!r}"
        out += rest[:size]
        body = rest[size + 2 :]
        if size == 0:
            assert body == b""
            return out


def test_writes_only_between_the_head_and_the_end_of_a_chunked_response() -> None:
    seen: list[Any] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        write = chunk_writer(send)
        if write is None:
            seen.append(None)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        seen.append(write(chunk(b"before the head;")))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        seen.append(write(chunk(b"A")))
        await send({"type": "http.response.body", "body": b"B", "more_body": True})
        seen.append(write(chunk(b"C")))
        await send({"type": "http.response.body", "body": b"D"})
        seen.append(write(chunk(b"after the end;")))

    with uvicorn_thread(app) as server:
        with request(server.config.port) as sock:
            raw = read_until_closed_or(sock, b"0\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"transfer-encoding: chunked" in head
        assert dechunk(body) == b"ABCD"
        assert seen == [False, True, True, False]

        # HEAD has no body to write: no writer at all.
        seen.clear()
        with request(server.config.port, "HEAD") as sock:
            read_until_closed_or(sock, b"\r\n\r\n")
        assert seen == [None]


def test_a_response_with_a_length_is_not_written_to() -> None:
    seen: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        write = chunk_writer(send)
        assert write is not None
        headers = [(b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        seen.append(write(chunk(b"X")))
        await send({"type": "http.response.body", "body": b"ok"})

    with uvicorn_thread(app) as server, request(server.config.port) as sock:
        raw = read_until_closed_or(sock, b"\r\n\r\nok")
    assert raw.endswith(b"\r\n\r\nok")
    assert seen == [False]


def test_it_stops_writing_when_the_client_stops_reading_and_nothing_is_lost() -> None:
    """A reader that does not read fills the socket buffers and the transport's: the
    transport pauses writing and the writer refuses, leaving the caller to `send` (which
    waits for the drain). Everything written arrives, in order."""
    piece = b"x" * 4000
    written: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        write = chunk_writer(send)
        assert write is not None
        await send({"type": "http.response.start", "status": 200, "headers": []})
        n = 0
        while write(chunk(b"%08d" % n + piece)):
            n += 1
            if n % 64 == 0:
                await asyncio.sleep(0)  # let the loop notice the socket is full
            assert n < 100_000, "the writer never refused"
        written.append(n)
        # `send` waits until the client reads again, then the response ends.
        await send({"type": "http.response.body", "body": b"end"})

    with uvicorn_thread(app) as server, request(server.config.port) as sock:
        deadline = time.monotonic() + 20
        while not written:
            assert time.monotonic() < deadline, "the writer never refused"
            time.sleep(0.05)
        raw = read_until_closed_or(sock, b"0\r\n\r\n")
    body = dechunk(raw.partition(b"\r\n\r\n")[2])
    n = written[0]
    assert n > 0
    expected = b"".join(b"%08d" % i + piece for i in range(n)) + b"end"
    assert body == expected


def test_a_websocket_takes_whole_frames_while_open_and_writable() -> None:
    """Frames written straight arrive as the client's messages, in order with those sent
    through `send`; a socket that stopped reading refuses them (and everything written
    arrives once it reads); a closed one refuses them."""
    results: list[Any] = []
    count: list[int] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        owner = send.__self__
        await send({"type": "websocket.accept"})
        results.append(owner.write_frames(ws_text_frame("one") + ws_text_frame("two")))
        await send({"type": "websocket.send", "text": "three"})
        # The client reads nothing for now: write until the socket pushes back.
        n = 0
        while owner.write_frames(ws_text_frame(f"{n:08d}" + "x" * 4000)):
            n += 1
            if n % 64 == 0:
                await asyncio.sleep(0)
            assert n < 100_000, "the socket never pushed back"
        count.append(n)
        await send({"type": "websocket.send", "text": "last"})  # waits for the drain
        await send({"type": "websocket.close", "code": 1000})
        results.append(owner.write_frames(ws_text_frame("after the close")))

    with uvicorn_thread(app, ws=TidingsWebSocketProtocol) as server:
        with ws_connect(f"ws://127.0.0.1:{server.config.port}/", max_size=None) as ws:
            deadline = time.monotonic() + 20
            while not count:
                assert time.monotonic() < deadline, "the socket never pushed back"
                time.sleep(0.05)
            got = [ws.recv(timeout=10) for _ in range(3 + count[0] + 1)]
            assert got[:3] == ["one", "two", "three"]
            assert got[3:-1] == [f"{i:08d}" + "x" * 4000 for i in range(count[0])]
            assert got[-1] == "last"
        deadline = time.monotonic() + 10
        while len(results) < 2:
            assert time.monotonic() < deadline, "the app did not finish"
            time.sleep(0.02)
    assert results == [True, False]
