"""WebSocket fan-out in whole frames: the hub builds each message's frame once and writes
a batch's frames to a socket in one write (hub.Batch.ws_frames, http/ws_protocol.py).

The bytes must be exactly RFC 6455 server frames — one text frame per message, unmasked,
with the 7-bit, 16-bit and 64-bit length forms — whatever the TCP segments, and a
client's own extension offer (permessage-deflate) is declined so that every socket
takes the shared frames.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerFactory

pytestmark = pytest.mark.timeout(60)


def publish_many(url: str, channel: str, bodies: list[str]) -> None:
    with httpx.Client(base_url=url, timeout=20) as client:
        for body in bodies:
            r = client.post(
                f"/v1/channels/{channel}/messages",
                content=body,
                headers={"Content-Type": "text/plain"},
            )
            assert r.status_code == 201, r.text


class RawWebSocket:
    """A WebSocket client on a raw socket that offers no extension and reads frames;
    `extra` is sent with the handshake, in the same write."""

    def __init__(self, port: int, path: str, extra: bytes = b"") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n".encode()
            + extra
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, "closed during the handshake"
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.head = head.decode()
        assert self.head.startswith("HTTP/1.1 101"), self.head

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            assert chunk, "connection closed mid-frame"
            self.buf += chunk

    def frame(self) -> tuple[int, bytes]:
        """(first byte, payload) of the next frame; server frames carry no mask."""
        self._need(2)
        first, second = self.buf[0], self.buf[1]
        assert second & 0x80 == 0, "a server frame must not be masked"
        n, at = second & 0x7F, 2
        if n == 126:
            self._need(4)
            n, at = int.from_bytes(self.buf[2:4], "big"), 4
        elif n == 127:
            self._need(10)
            n, at = int.from_bytes(self.buf[2:10], "big"), 10
        self._need(at + n)
        payload = self.buf[at : at + n]
        self.buf = self.buf[at + n :]
        return first, payload

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, ref: str) -> dict[str, object]:
        """The next text frame whose `ref` is `ref` (messages before it are skipped)."""
        while True:
            first, payload = self.frame()
            if first == 0x81:
                body = json.loads(payload)
                if body.get("ref") == ref:
                    return dict(body)

    def close(self) -> None:
        self.sock.close()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A final client frame, masked as RFC 6455 requires (short payloads only)."""
    assert len(payload) < 126
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


def publish_frame(data: str, ref: str) -> bytes:
    return client_frame(0x1, json.dumps({"data": data, "ref": ref}).encode())


def wait_for_ws(url: str, channel: str, n: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        subs = httpx.get(f"{url}/v1/channels/{channel}", timeout=10).json()["subscribers"]
        if subs["ws"] >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} WebSocket subscribers on {channel}")


def test_frames_on_the_wire_are_rfc_6455_text_frames(tidings_server: ServerFactory) -> None:
    """Back-to-back messages of every length form reach a raw client as one unmasked
    text frame each, in order, with no extension negotiated."""
    srv = tidings_server()
    publish_many(srv.url, "frames", ["seed"])
    ws = RawWebSocket(srv.port, "/v1/channels/frames/ws")
    try:
        assert "sec-websocket-extensions" not in ws.head.lower()
        wait_for_ws(srv.url, "frames", 1)
        bodies = ["x", "y" * 200, "z" * 70_000] + [f"m{i}" for i in range(40)]
        publish_many(srv.url, "frames", bodies)
        got = []
        for _ in bodies:
            first, payload = ws.frame()
            assert first == 0x81, f"not a final text frame: {first:#x}"
            got.append(json.loads(payload)["data"])
        assert got == bodies
    finally:
        ws.close()


def test_many_sockets_get_every_message_in_order(tidings_server: ServerFactory) -> None:
    """Thirty `websockets` clients (which offer permessage-deflate) and a burst of 200
    messages: each client gets all of them, in order, once."""
    srv = tidings_server()
    publish_many(srv.url, "burst", ["seed"])
    want = [f"n{i}" for i in range(200)]
    results: dict[int, list[str]] = {}
    ready = threading.Barrier(31, timeout=20)

    def reader(i: int) -> None:
        with ws_connect(f"{srv.ws_url}/v1/channels/burst/ws", open_timeout=20) as ws:
            assert ws.protocol.extensions == []
            ready.wait()
            got: list[str] = []
            while len(got) < len(want):
                frame = json.loads(ws.recv(timeout=20))
                got.append(frame["data"])
            results[i] = got

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(30)]
    for t in threads:
        t.start()
    ready.wait()
    wait_for_ws(srv.url, "burst", 30)
    publish_many(srv.url, "burst", want)
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(30))
    assert all(got == want for got in results.values())


def messages(url: str, channel: str) -> list[str]:
    r = httpx.get(f"{url}/v1/channels/{channel}/messages?after=0", timeout=10)
    assert r.status_code == 200, r.text
    return [m["data"] for m in r.json()["messages"]]


def test_a_frame_sent_with_the_handshake_is_received(tidings_server: ServerFactory) -> None:
    """A publish frame in the handshake's own packet, then one split over two packets
    around an idle pause: each is acknowledged and published (the server swaps the
    parser that read the handshake for a frame-only one between frames only)."""
    srv = tidings_server()
    ws = RawWebSocket(srv.port, "/v1/channels/early/ws", publish_frame("first", "a"))
    try:
        assert ws.reply("a")["type"] == "ack"
        late = publish_frame("second", "b")
        ws.send(late[:3])
        time.sleep(0.3)
        ws.send(late[3:])
        assert ws.reply("b")["type"] == "ack"
        assert messages(srv.url, "early") == ["first", "second"]
    finally:
        ws.close()
    split = publish_frame("third", "c")
    ws = RawWebSocket(srv.port, "/v1/channels/early/ws", split[:5])
    try:
        time.sleep(0.3)
        ws.send(split[5:])
        assert ws.reply("c")["type"] == "ack"
        ws.send(publish_frame("fourth", "d"))
        assert ws.reply("d")["type"] == "ack"
        assert messages(srv.url, "early") == ["first", "second", "third", "fourth"]
    finally:
        ws.close()


def test_an_idle_socket_answers_ping_and_close(tidings_server: ServerFactory) -> None:
    """After the handshake and a pause, a ping gets its pong and a close its close."""
    srv = tidings_server()
    publish_many(srv.url, "idle", ["seed"])
    ws = RawWebSocket(srv.port, "/v1/channels/idle/ws")
    try:
        wait_for_ws(srv.url, "idle", 1)
        time.sleep(0.5)
        ws.send(client_frame(0x9, b"are you there"))
        first, payload = ws.frame()
        assert (first, payload) == (0x8A, b"are you there")
        publish_many(srv.url, "idle", ["still here"])
        first, payload = ws.frame()
        assert first == 0x81 and json.loads(payload)["data"] == "still here"
        ws.send(client_frame(0x8, (1000).to_bytes(2, "big") + b"bye"))
        while True:
            first, payload = ws.frame()
            if first == 0x88:
                break
            assert first == 0x81, f"unexpected frame {first:#x}"
        assert int.from_bytes(payload[:2], "big") == 1000
        ws.sock.settimeout(10)
        assert ws.sock.recv(1) == b"", "the server did not close the connection"
    finally:
        ws.close()
