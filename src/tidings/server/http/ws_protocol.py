"""uvicorn's sans-I/O WebSocket protocol, bounded against a client that sends and never reads.

uvicorn answers every ping with a pong written at once and keeps reading while its write
buffer is over the high-water mark (it only stops the app's own sends), so a client that
floods pings and never reads its socket grows the server's write buffer without bound.
Here, past the high-water mark the connection stops reading too: the client's frames wait
in the kernel, nothing more is parsed or answered until it reads. If frames still arrive
while the buffer is over that mark plus one largest message (reading was resumed to let a
closing handshake finish), the connection is dropped, the app told 1008 (policy).

It also carries the connection's place in the server's connection count (http/limits.py),
handed over by the HTTP protocol at the upgrade, and gives it back when the socket is lost.
Its keep-alive pings are timed by that server's once-a-second sweep (a deadline on the
socket) rather than by a loop timer per socket, as uvicorn's are: the same pings and pong
deadline, within a second, without a timer handle and its callback per idle socket.

An idle socket holds as little as it can: uvicorn's attributes live in slots, and once the
handshake is answered its request and response are dropped, and the websockets parser
that parsed the request (and keeps it in its frame) is replaced by a frame-only one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from types import GeneratorType
from typing import Any, cast

from uvicorn._types import ASGIReceiveEvent, ASGISendEvent
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import Protocol, State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from tidings.server.http.errors import CLOSE_POLICY
from tidings.server.http.lean import LeanEvent, LeanQueue
from tidings.server.http.limits import ConnectionLimits
from tidings.server.hub import FRAMES

__all__ = ["TidingsWebSocketProtocol", "release_handshake_parser"]

log = logging.getLogger("tidings.http")

# Bytes a transport holds before it tells its protocol to pause writing (uvloop's default).
_HIGH_WATER = 64 * 1024


_HANDSHAKE_PARSE = ServerProtocol.parse.__code__
_FRAME_PARSE = Protocol.parse.__code__
_AT_EOF = StreamReader.at_eof.__code__


def _generator(parser: object) -> GeneratorType[None, None, None]:
    """A websockets parser, typed as the generator it is (its frame's code and state)."""
    return cast("GeneratorType[None, None, None]", parser)


def release_handshake_parser(conn: ServerProtocol) -> bool:
    """Give `conn` a frame-only parser in place of the one that parsed its handshake.

    websockets' server parser reads the request, then runs the frame parser inside its
    own generator (`yield from super().parse()`), whose frame keeps the parsed request
    (its headers, ~1.4 KB) for the socket's life. The swap is made only when the old
    parser waits between frames, with nothing buffered: it consumed no byte of a frame,
    so a fresh frame parser, started, is in the very same state. Otherwise (a frame
    begun, an error, a close under way) it is not made; True when it was.
    """
    outer = _generator(conn.parser)
    if outer.gi_code is not _HANDSHAKE_PARSE or conn.parser_exc is not None:
        return False
    frames: Any = outer.gi_yieldfrom  # Protocol.parse, when the request is parsed
    waiting = getattr(frames, "gi_yieldfrom", None)  # what that parser waits in
    if (
        frames is None
        or frames.gi_code is not _FRAME_PARSE
        or waiting is None
        or waiting.gi_code is not _AT_EOF
        or conn.reader.buffer
        or conn.reader.eof
        or conn.state is not State.OPEN
    ):
        return False
    parser = Protocol.parse(conn)
    next(parser)  # up to its first wait for data, as websockets starts it
    conn.parser = parser
    outer.close()
    return True


class TidingsWebSocketProtocol(WebSocketsSansIOProtocol):
    """A WebSocket that stops reading while its client does not read."""

    # Every attribute, uvicorn's too, in a slot rather than an instance dict: uvicorn's
    # class has no slots, and its ~40 attributes made a dict of ~1.6 KB per socket.
    __slots__ = (
        "address",
        "app",
        "app_state",
        "asgi_version",
        "client",
        "close_sent",
        "close_timeout",
        "close_timer",
        "config",
        "conn",
        "connections",
        "curr_msg_data_type",
        "deadline",
        "default_headers",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "initial_response",
        "last_ping_rtt",
        "limits",
        "logger",
        "loop",
        "pending_ping_payload",
        "ping_interval",
        "ping_sent_at",
        "ping_timeout",
        "ping_timer",
        "pong_timer",
        "queue",
        "read_paused",
        "request",
        "response",
        "root_path",
        "scheme",
        "scope",
        "server",
        "tasks",
        "transport",
        "writable",
        "write_cap",
        "write_paused",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The same, on lists (lean.py): ~3 KB less per open socket.
        self.queue = LeanQueue()
        self.writable = LeanEvent(is_set=True)
        self.write_paused = False
        # The write buffer past which frames still arriving end the connection.
        self.write_cap = _HIGH_WATER + self.config.ws_max_size
        self.limits: ConnectionLimits | None = None
        self.address: str | None = None

    def adopt(self, limits: ConnectionLimits, address: str | None) -> None:
        """Take over the connection's place in `limits` (counted under `address`)."""
        self.limits = limits
        self.address = address

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.transport.set_write_buffer_limits(_HIGH_WATER)
        # When the sweep next acts on this socket: send a ping, or (a ping unanswered)
        # give up on it; 0.0 while keep-alive is off.
        self.deadline = 0.0

    # -- keep-alive pings, on the server's sweep (uvicorn's, without its timers) --------

    def _server_limits(self) -> ConnectionLimits:
        """The server's limits and sweep: the connection's (handed over at the upgrade),
        or, once it has given them back, the config's (the same object)."""
        return self.limits or ConnectionLimits.of(self.config)

    def start_keepalive(self) -> None:
        if self.ping_interval is not None and self.ping_interval > 0:
            self.schedule_ping()
            limits = self._server_limits()
            limits.start_sweeping(self.loop)
            limits.swept.add(self)

    def stop_keepalive(self) -> None:
        self.deadline = 0.0
        self.pending_ping_payload = None
        self._server_limits().swept.discard(self)

    def schedule_ping(self) -> None:
        assert self.ping_interval is not None  # noqa: S101 - start_keepalive checked it
        self.deadline = self.loop.time() + max(0.0, self.ping_interval - self.last_ping_rtt)

    def send_keepalive_ping(self) -> None:
        if self.close_sent or self.transport.is_closing():
            self.stop_keepalive()
            return
        # A random payload names this ping: handle_pong ignores a pong that does not match.
        self.pending_ping_payload = struct.pack("!I", random.getrandbits(32))
        self.ping_sent_at = self.loop.time()
        self.conn.send_ping(self.pending_ping_payload)
        self.transport.write(b"".join(self.conn.data_to_send()))
        if self.ping_timeout is not None:
            self.deadline = self.ping_sent_at + self.ping_timeout
        else:
            self.pending_ping_payload = None
            self.schedule_ping()

    def handle_pong(self, event: Any) -> None:
        if self.pending_ping_payload is None or bytes(event.data) != self.pending_ping_payload:
            return  # unsolicited, or an answer to an earlier ping
        self.last_ping_rtt = self.loop.time() - self.ping_sent_at
        self.pending_ping_payload = None
        self.schedule_ping()

    def expire(self, now: float) -> None:
        """The sweep: the pong is overdue (the socket is failed), or a ping is due."""
        if self.pending_ping_payload is not None:
            self.stop_keepalive()
            self.keepalive_timeout()
        else:
            self.send_keepalive_ping()

    def connection_lost(self, exc: Exception | None) -> None:
        limits = self.limits
        if limits is not None:
            self.limits = None
            limits.release(self.address)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.writable.clear()
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.writable.set()
        if not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.write_paused and self.transport.get_write_buffer_size() > self.write_cap:
            self._drop("the client sends faster than it reads")
            return
        super().data_received(data)
        if self.handshake_complete and _generator(self.conn.parser).gi_code is _HANDSHAKE_PARSE:
            # A swap refused at the handshake (a frame had begun) is tried between frames.
            release_handshake_parser(self.conn)

    def takes_frames(self) -> bool:
        """Whether the hub may hand this socket whole frames it built (`FRAMES`): only
        with no extension negotiated (permessage-deflate compresses each frame for its
        connection alone)."""
        return self.handshake_complete and not self.conn.extensions

    def write_frames(self, frames: bytes) -> bool:
        """Write whole frames the hub built now, without `send`'s coroutine (a fan-out
        writes thousands); False when they must go through `send`: the socket paused
        writing (`send` waits for it) or is closing (`send` raises)."""
        if self.write_paused or self.disconnected or self.close_sent:
            return False
        if self.conn.state is not State.OPEN:
            return False
        self.transport.write(frames)
        return True

    async def send(self, message: ASGISendEvent) -> None:
        # Whole frames from the hub: a fan-out batch's messages, built once for every
        # such socket and written here in one write, as uvicorn writes one it built.
        frames = message.get(FRAMES)
        if not isinstance(frames, bytes):
            await super().send(message)
            if self.handshake_complete and self.response is not None:
                # The handshake is answered: uvicorn keeps its request and response (their
                # headers, ~1.5 KB) for nothing from here on; nor does the parser need the
                # request it parsed.
                self.request = self.response = None  # type: ignore[assignment]
                release_handshake_parser(self.conn)
            return
        await self.writable.wait()
        if self.disconnected or self.conn.state is not State.OPEN or self.close_sent:
            raise ClientDisconnected()
        self.transport.write(frames)

    async def receive(self) -> ASGIReceiveEvent:
        # uvicorn's, leaving reading paused while the client is not reading.
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            if not self.write_paused:
                self.transport.resume_reading()
        return message

    def keepalive_timeout(self) -> None:
        super().keepalive_timeout()
        if self.transport.get_write_buffer_size():
            # The client answers no ping and reads nothing: the close frame would wait
            # behind bytes it will never take.
            self.transport.abort()

    def _drop(self, reason: str) -> None:
        """End the connection at once; the app sees a disconnect with 1008. No close frame
        is sent: it would wait behind bytes the client does not read."""
        log.info("dropping a WebSocket from %s (%d): %s", self.client, CLOSE_POLICY, reason)
        self.queue.put_nowait({"type": "websocket.disconnect", "code": CLOSE_POLICY})
        self.close_sent = True
        self.transport.abort()
