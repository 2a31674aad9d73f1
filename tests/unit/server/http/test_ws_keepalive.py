"""WebSocket keep-alive pings on the server's sweep (http/ws_protocol.py).

Through a real uvicorn server with tidings' protocols and a ping every 0.5 s: a client
that answers the pings stays connected, one that does not is closed with 1011 once its
pong is overdue, and a socket gone leaves nothing in the sweep.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
import uvicorn
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.unit.server.http.servers import echo, uvicorn_thread
from tidings.server.http.limits import ConnectionLimits
from tidings.server.http.ws_protocol import TidingsWebSocketProtocol

pytestmark = pytest.mark.timeout(20)

INTERVAL = 0.5


@pytest.fixture
def server() -> Iterator[tuple[int, uvicorn.Config]]:
    with uvicorn_thread(
        echo, ws=TidingsWebSocketProtocol, ws_ping_interval=INTERVAL, ws_ping_timeout=INTERVAL
    ) as server:
        yield server.config.port, server.config


def connect(port: int) -> tuple[socket.socket, ClientProtocol]:
    """A raw socket with websockets' sans-I/O client on it, past the handshake."""
    client = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"))
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.send_request(client.connect())
    sock.sendall(b"".join(client.data_to_send()))
    while client.state is not State.OPEN:
        data = sock.recv(65536)
        assert data, "closed during the handshake"
        client.receive_data(data)
    assert isinstance(client.events_received()[0], Response)
    return sock, client


def read_frames(
    sock: socket.socket, client: ClientProtocol, answer: bool, secs: float
) -> list[Frame]:
    """The frames the server sends for `secs` (or until it closes); pongs sent back (as
    websockets' client queues them) only when `answer`."""
    got: list[Frame] = []
    end = time.monotonic() + secs
    while time.monotonic() < end:
        sock.settimeout(max(0.05, end - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        if not data:
            client.receive_eof()
            break
        client.receive_data(data)
        got += [e for e in client.events_received() if isinstance(e, Frame)]
        reply = b"".join(client.data_to_send())
        if answer and reply:
            sock.sendall(reply)
    return got


def test_a_client_that_answers_the_pings_stays(server: tuple[int, uvicorn.Config]) -> None:
    port, _ = server
    sock, client = connect(port)
    with sock:
        frames = read_frames(sock, client, answer=True, secs=INTERVAL * 7)
        pings = [f for f in frames if f.opcode is Opcode.PING]
        assert len(pings) >= 3, frames
        assert not any(f.opcode is Opcode.CLOSE for f in frames), frames
        client.send_text(b"still here")
        sock.sendall(b"".join(client.data_to_send()))
        echoed = read_frames(sock, client, answer=True, secs=2)
        assert any(f.opcode is Opcode.TEXT and f.data == b"still here" for f in echoed)


def test_a_client_that_never_answers_is_closed_with_1011(
    server: tuple[int, uvicorn.Config],
) -> None:
    port, _ = server
    sock, client = connect(port)
    began = time.monotonic()
    with sock:
        frames = read_frames(sock, client, answer=False, secs=8)
    took = time.monotonic() - began
    assert frames and frames[0].opcode is Opcode.PING, frames
    closes = [f for f in frames if f.opcode is Opcode.CLOSE]
    assert closes, frames
    assert int.from_bytes(closes[0].data[:2], "big") == 1011
    # The ping after INTERVAL, the pong overdue INTERVAL later, found by a sweep each second.
    assert took < 2 * INTERVAL + 2.5, took


def test_a_closed_socket_leaves_the_sweep(server: tuple[int, uvicorn.Config]) -> None:
    port, config = server
    swept = ConnectionLimits.of(config).swept
    sock, client = connect(port)
    deadline = time.monotonic() + 5
    while not any(isinstance(p, TidingsWebSocketProtocol) for p in set(swept)):
        assert time.monotonic() < deadline, "the socket never joined the sweep"
        time.sleep(0.02)
    client.send_close()
    sock.sendall(b"".join(client.data_to_send()))
    read_frames(sock, client, answer=True, secs=2)
    sock.close()
    deadline = time.monotonic() + 5
    while any(isinstance(p, TidingsWebSocketProtocol) for p in set(swept)):
        assert time.monotonic() < deadline, "a closed socket stayed in the sweep"
        time.sleep(0.02)
