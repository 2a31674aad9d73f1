"""What an open WebSocket keeps (http/ws_protocol.py).

The handshake parser's swap for a frame-only one, on websockets' own sans-I/O server
connection fed real bytes: the request is released, and no byte of a frame is lost,
whatever arrived with the handshake. Through a real server: no instance dict, no request,
no handshake parser once the socket is open.
"""

from __future__ import annotations

import base64
import gc
import os
import socket
import weakref

import pytest
from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol

from tests.unit.server.http.servers import echo, uvicorn_thread
from tidings.server.http.ws_protocol import TidingsWebSocketProtocol, release_handshake_parser

pytestmark = pytest.mark.timeout(10)


def handshake() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET /v1/channels/c/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "User-Agent: a-client-with-a-long-name/1.0\r\n\r\n"
    ).encode()


def client_frame(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=True)


def accept(conn: ServerProtocol, early: list[Frame] | None = None) -> weakref.ref[Request]:
    """Answer the request among the events (frames parsed with it go to `early`); a weak
    reference to the request."""
    events = conn.events_received()
    assert isinstance(events[0], Request)
    request = events[0]
    if early is not None:
        early.extend(e for e in events[1:] if isinstance(e, Frame))
    del events
    conn.send_response(conn.accept(request))
    assert conn.state is State.OPEN
    conn.data_to_send()
    return weakref.ref(request)


def frames(conn: ServerProtocol) -> list[tuple[Opcode, bytes]]:
    return [(e.opcode, bytes(e.data)) for e in conn.events_received() if isinstance(e, Frame)]


def test_the_swap_releases_the_request_and_frames_still_parse() -> None:
    conn = ServerProtocol(max_size=1000)
    conn.receive_data(handshake())
    request = accept(conn)
    assert release_handshake_parser(conn)
    gc.collect()
    assert request() is None, "the parsed request outlived the swap"
    conn.receive_data(client_frame(Opcode.TEXT, b'{"data":1}') + client_frame(Opcode.PING, b"p"))
    assert frames(conn) == [(Opcode.TEXT, b'{"data":1}'), (Opcode.PING, b"p")]
    assert conn.data_to_send() == [Frame(Opcode.PONG, b"p").serialize(mask=False)]
    # The connection's limits hold for the new parser: a frame over max_size is refused.
    conn.receive_data(client_frame(Opcode.TEXT, b"x" * 2000))
    assert isinstance(conn.parser_exc, PayloadTooBig)
    assert conn.close_sent is not None and conn.close_sent.code == 1009


def test_a_whole_frame_sent_with_the_handshake_is_kept() -> None:
    conn = ServerProtocol()
    conn.receive_data(handshake() + client_frame(Opcode.TEXT, b"early"))
    early: list[Frame] = []
    request = accept(conn, early)
    # The frame was parsed with the request; the parser waits for the next one.
    assert [(e.opcode, bytes(e.data)) for e in early] == [(Opcode.TEXT, b"early")]
    assert release_handshake_parser(conn)
    gc.collect()
    assert request() is None
    conn.receive_data(client_frame(Opcode.TEXT, b"later"))
    assert frames(conn) == [(Opcode.TEXT, b"later")]


def test_no_swap_inside_a_frame_then_one_between_frames() -> None:
    """Part of a frame came with the handshake: the parser has taken its first bytes,
    so it is kept until the frame is whole."""
    frame = client_frame(Opcode.TEXT, b"split across packets")
    conn = ServerProtocol()
    conn.receive_data(handshake() + frame[:3])
    request = accept(conn)
    assert not release_handshake_parser(conn)
    assert conn.reader.buffer, "a frame's bytes wait in the reader"
    conn.receive_data(frame[3:])
    assert frames(conn) == [(Opcode.TEXT, b"split across packets")]
    assert release_handshake_parser(conn)
    gc.collect()
    assert request() is None
    conn.receive_data(client_frame(Opcode.CLOSE, b"\x03\xe8"))
    assert frames(conn) == [(Opcode.CLOSE, b"\x03\xe8")]
    assert conn.close_sent is not None and conn.close_sent.code == 1000


def test_no_swap_when_the_header_is_taken_and_the_payload_is_awaited() -> None:
    """The frame's two first bytes were read, the rest not yet: nothing is buffered,
    but the parser is inside the frame."""
    frame = client_frame(Opcode.TEXT, b"payload")
    conn = ServerProtocol()
    conn.receive_data(handshake() + frame[:2])
    accept(conn)
    assert not conn.reader.buffer
    assert not release_handshake_parser(conn)
    conn.receive_data(frame[2:])
    assert frames(conn) == [(Opcode.TEXT, b"payload")]


def test_no_swap_after_a_close_or_an_error() -> None:
    conn = ServerProtocol()
    conn.receive_data(handshake())
    accept(conn)
    conn.receive_data(client_frame(Opcode.CLOSE, b"\x03\xe8"))
    assert not release_handshake_parser(conn)  # parsing is over: discard() runs
    bad = ServerProtocol()
    bad.receive_data(handshake())
    accept(bad)
    bad.receive_data(b"\x81\x05hello")  # a client frame must be masked
    assert bad.parser_exc is not None
    assert not release_handshake_parser(bad)


def test_no_swap_before_the_handshake_is_answered() -> None:
    conn = ServerProtocol()
    conn.receive_data(handshake())
    assert conn.state is State.CONNECTING
    assert not release_handshake_parser(conn)


def test_an_open_socket_keeps_no_instance_dict_request_or_handshake_parser() -> None:
    """Through a real server (uvicorn with tidings' protocols): after the handshake every
    attribute is in a slot, the request is gone, the parser is frame-only; an echo works."""

    with uvicorn_thread(echo, ws=TidingsWebSocketProtocol) as server:
        port = server.config.port
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(handshake())
            assert conn.recv(4096).startswith(b"HTTP/1.1 101")
            found = [
                p
                for p in server.server_state.connections
                if isinstance(p, TidingsWebSocketProtocol)
            ]
            assert len(found) == 1
            protocol = found[0]
            assert vars(protocol) == {}, "attributes outside the slots"
            assert protocol.request is None
            assert protocol.conn.parser.gi_code is Protocol.parse.__code__  # type: ignore[attr-defined]
            conn.sendall(client_frame(Opcode.TEXT, b"echo"))
            assert conn.recv(4096) == Frame(Opcode.TEXT, b"echo").serialize(mask=False)
