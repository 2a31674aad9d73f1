"""HTTP/2 on tidings' own protocol: many streams on one connection (docs/decisions/0019).

A browser opens at most six HTTP/1.1 connections per origin, so a page with a seventh
EventSource waits; over HTTP/2 every request is a stream of one connection. The HTTP/1.1
protocol (http/protocol.py) hands a connection here when TLS negotiated `h2` by ALPN, or
when a cleartext connection opens with the HTTP/2 preface (h2c with prior knowledge). The
`h2` library does the framing, HPACK and flow-control bookkeeping; this module runs each
stream as an ASGI request, as uvicorn does for a connection.

What the fan-out relies on holds here too (docs/decisions/0002): a stream's `send` writes
at once and finishes in its first step while its flow-control window and the socket have
room; it suspends only when the client stopped reading (the stream's window is spent, or
the socket is backed up), and then the hub's drainer and backlog take over. The hub cuts a
stuck subscriber through `send.__self__.transport`: here that is the stream, and `abort`
resets that stream alone (RST_STREAM), never its neighbours on the connection.

Writes are gathered: what the streams of a connection send within one turn of the event
loop leaves in one socket write (a publish to 20 EventSources of one page is one write).

Limits: the connection keeps the place it was counted in by the HTTP/1.1 protocol; at
most MAX_STREAMS streams at once; a request head is held to the server's header limits
(431/414 on that stream); a request body to the stream's receive window, granted again
only as the app reads it; a stream waiting for its body past --body-timeout is answered
408; a connection with no stream is closed after --keep-alive-timeout (--header-timeout
before its first request). A client that resets streams faster than RESET_BUDGET per
RESET_PERIOD (the "rapid reset" attack) is told to go away; a frame whose header announces
more than the frame size is refused at its header (FRAME_SIZE_ERROR), not buffered; a
head over the limit gets 431 on its stream and one past twice the limit costs the
connection (ENHANCE_YOUR_CALM); a stream past MAX_STREAMS is a connection error; and a
connection whose socket is backed up is not read until it drains, so frames the server
must answer (PING, SETTINGS) cannot pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from tidings.protocol.codecs import encode_json
from tidings.server import constants as C
from tidings.server.http.limits import ConnectionLimits

__all__ = ["PREFACE", "TidingsH2Protocol"]

log = logging.getLogger("tidings.http")
access = logging.getLogger("uvicorn.access")

# The first bytes of an HTTP/2 connection (RFC 9113, 3.4).
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Streams a client may have open at once on one connection.
MAX_STREAMS = 128
# Bytes of request body a stream, and a connection, may have sent unread by the app.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1024 * 1024
# Streams the client may reset within a period before the connection is closed.
RESET_BUDGET = 500
RESET_PERIOD = 10.0
# Bytes the socket holds before writes wait (as for a WebSocket).
HIGH_WATER = 64 * 1024
# How often a connection with open streams looks for a body past its deadline.
CHECK_INTERVAL = 1.0

# Headers HTTP/2 forbids (RFC 9113, 8.2.2): connection-specific, meaningless here.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_DISCONNECT = {"type": "http.disconnect"}


def _error_body(code: str, message: str) -> bytes:
    return encode_json({"error": {"code": code, "message": message}})


class _Stream:
    """One request and its response on an HTTP/2 connection: its ASGI receive and send.

    `transport` is the stream itself: what the hub aborts (a reset of this stream) and
    asks `is_closing()`.
    """

    __slots__ = (
        "body",
        "body_deadline",
        "complete",
        "conn",
        "end_told",
        "ended",
        "held",
        "id",
        "method",
        "readable",
        "reset",
        "scope",
        "started",
        "unacked",
        "window",
    )

    def __init__(self, conn: TidingsH2Protocol, stream_id: int, scope: dict[str, Any]) -> None:
        self.conn = conn
        self.id = stream_id
        self.scope = scope
        self.method: str = scope["method"]
        self.body = bytearray()
        self.unacked = 0  # body bytes received and not yet granted back to the client
        self.ended = False  # the request body is complete
        self.end_told = False  # the app was handed the body's end
        self.body_deadline = 0.0  # when the next piece of body is due (0: not waiting)
        self.readable = asyncio.Event()
        self.started = False
        self.complete = False
        self.reset = False  # reset by either side, or the connection is gone
        self.held: list[tuple[bytes, bytes]] | None = None  # a head sent with the body
        self.window: asyncio.Future[None] | None = None

    @property
    def transport(self) -> _Stream:
        return self

    def is_closing(self) -> bool:
        return self.reset or self.complete

    def abort(self) -> None:
        """Reset this stream (the hub cuts a subscriber that stopped reading)."""
        if not self.reset and not self.complete:
            self.conn.reset_stream(self, ErrorCodes.CANCEL)

    def gone(self) -> None:
        """The stream was reset or its connection lost: wake whatever waits on it."""
        self.reset = True
        self.readable.set()
        self.wake()

    def wake(self) -> None:
        window = self.window
        if window is not None and not window.done():
            window.set_result(None)

    # -- ASGI ---------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        while not (self.reset or self.complete):
            if self.body or (self.ended and not self.end_told):
                body = bytes(self.body)
                self.body.clear()
                if self.unacked:
                    self.conn.grant(self, self.unacked)
                    self.unacked = 0
                self.end_told = self.ended
                return {"type": "http.request", "body": body, "more_body": not self.ended}
            # Nothing to hand over: wait for more body, or (the request read whole) for
            # the client to leave or the response to end.
            self.readable.clear()
            await self.readable.wait()
        return _DISCONNECT

    async def send(self, message: dict[str, Any]) -> None:
        conn = self.conn
        if conn.write_paused and not self.reset:
            await conn.drain()
        if self.reset:
            return
        kind = message["type"]
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind!r}")
            self.started = True
            self._start(message)
            return
        if self.complete:
            raise RuntimeError(f"unexpected {kind!r} after the response was complete")
        if kind != "http.response.body":
            raise RuntimeError(f"expected http.response.body, got {kind!r}")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.method == "HEAD":
            body = b""
        held = self.held
        if held is not None:
            self.held = None
            conn.send_headers(self, held, end=not body and not more)
            if not body and not more:
                self._completed()
                return
        await self._data(body, not more)

    def _start(self, message: dict[str, Any]) -> None:
        status: int = message["status"]
        headers = [(b":status", str(status).encode())]
        sized = status in (204, 304) or self.method == "HEAD"
        for name, value in self.conn.server_state.default_headers:
            headers.append((name.lower(), value))
        for raw_name, value in message.get("headers", ()):
            name = raw_name.lower()
            if name in _HOP_BY_HOP:
                continue
            sized = sized or name == b"content-length"
            headers.append((name, value))
        if access.isEnabledFor(logging.INFO) and self.conn.access_log:
            client = self.scope.get("client")
            where = f"{client[0]}:{client[1]}" if client else "-"
            access.info('%s - "%s %s HTTP/2" %d', where, self.method, self.scope["path"], status)
        if sized:
            self.held = headers  # a whole body follows: the head leaves with it
        else:
            self.conn.send_headers(self, headers, end=False)  # a stream: its head goes now

    async def _data(self, body: bytes, end: bool) -> None:
        """Send `body` as DATA frames within the flow-control windows; wait while they
        are spent."""
        conn = self.conn
        h2c = conn.h2
        sent = 0
        size = len(body)
        while True:
            if self.reset:
                return
            try:
                room = min(h2c.local_flow_control_window(self.id), h2c.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                self.gone()
                return
            if room <= 0 and sent < size:
                self.window = conn.loop.create_future()
                try:
                    await self.window
                finally:
                    self.window = None
                continue
            chunk = body[sent : sent + room] if sent or size > room else body
            sent += len(chunk)
            last = sent >= size
            try:
                h2c.send_data(self.id, chunk, end_stream=end and last)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.gone()
                return
            conn.flush_soon()
            if last:
                break
        if end:
            self._completed()

    def _completed(self) -> None:
        self.complete = True
        self.readable.set()
        if not self.ended:
            # The answer went before the whole body came (a 413, say): stop the upload.
            self.conn.reset_stream(self, ErrorCodes.NO_ERROR)


class TidingsH2Protocol(asyncio.Protocol):
    """One HTTP/2 connection: its streams, each served by the ASGI app in its own task.

    Args:
        config: uvicorn's config (the app, logging, the limits it carries).
        server_state: uvicorn's server state (connections and tasks shutdown waits on).
        app_state: the lifespan state every request's scope gets a copy of.
        limits: the server's connection limits; this connection holds a place under
            `address` (None: not counted) and gives it back when it ends.
    """

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        limits: ConnectionLimits | None,
        address: str | None,
    ) -> None:
        self.config = config
        self.app = config.loaded_app
        self.server_state = server_state
        self.app_state = app_state
        self.limits = limits
        self.address = address
        self.loop = asyncio.get_running_loop()
        self.access_log = bool(config.access_log)
        self.h2 = h2.connection.H2Connection(
            # What the client sends is checked; the app's own response headers are not
            # checked and normalised again (half of h2's cost per request).
            h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
        )
        self.streams: dict[int, _Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._flushing = False
        self.closing = False
        self.resets: list[float] = []
        self.deadline = 0.0
        self.scheme = "http"
        self.server: tuple[str, int] | None = None
        self.client: tuple[str, int] | None = None

    # -- the connection ---------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        # Not checked against asyncio.Transport: uvloop's transports are not subclasses.
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER)
        self.server_state.connections.add(self)
        self.scheme = "https" if transport.get_extra_info("sslcontext") else "http"
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.server = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        limits = self.limits
        max_header = limits.max_header_bytes if limits is not None else 8192
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header,
            },
        )
        # The settings above take effect without an acknowledgement, so h2 leaves its
        # HPACK decoder at its own default list size: set it above the server's check
        # (HPACK counts 32 bytes more per field), so a head over the limit gets 431 on its
        # stream, and only one far beyond it costs the connection.
        self.h2.decoder.max_header_list_size = 2 * max_header + 32 * (C.MAX_HEADER_FIELDS + 8)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        if limits is not None:
            limits.swept.add(self)
            limits.start_sweeping(self.loop)
            self.deadline = self.loop.time() + limits.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.server_state.connections.discard(self)
        limits = self.limits
        if limits is not None:
            self.limits = None
            limits.swept.discard(self)
            limits.release(self.address)
        self.deadline = 0.0
        for stream in list(self.streams.values()):
            stream.gone()
        self.streams.clear()
        self.write_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # the client is done: close

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()  # answer nothing more until the client reads

    def resume_writing(self) -> None:
        self.write_paused = False
        drained = self._drained
        if drained is not None and not drained.done():
            drained.set_result(None)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    async def drain(self) -> None:
        if self._drained is None or self._drained.done():
            self._drained = self.loop.create_future()
        await self._drained

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: no new streams; close once the open ones end."""
        if self.closing:
            return
        self.closing = True
        self._goaway()
        if not self.streams and self.transport is not None:
            self.transport.close()

    def _goaway(self) -> None:
        """Tell the client no new stream will be served (GOAWAY, NO_ERROR), while the
        open ones go on. Written by hand: h2's close_connection() would also close its
        own state, and every frame of a stream still in flight would then be refused."""
        self.flush()
        if self.transport is not None and not self.transport.is_closing():
            last = self.h2.highest_inbound_stream_id
            self.transport.write(GoAwayFrame(0, last_stream_id=last, error_code=0).serialize())

    # -- writing ------------------------------------------------------------------------

    def flush(self) -> None:
        self._flushing = False
        data = self.h2.data_to_send()
        transport = self.transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def flush_soon(self) -> None:
        if not self._flushing:
            self._flushing = True
            self.loop.call_soon(self.flush)

    def send_headers(self, stream: _Stream, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        try:
            self.h2.send_headers(stream.id, headers, end_stream=end)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            stream.gone()
            return
        self.flush_soon()

    def reset_stream(self, stream: _Stream, code: ErrorCodes) -> None:
        if not stream.reset:
            with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.id, code)
            self.flush_soon()
        if code != ErrorCodes.NO_ERROR:
            stream.gone()

    def grant(self, stream: _Stream, size: int) -> None:
        """The app read `size` bytes of `stream`'s body: the client may send as many more."""
        try:
            self.h2.acknowledge_received_data(size, stream.id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.flush_soon()

    # -- reading ------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.debug("HTTP/2 protocol error from %s: %s", self.client, exc)
            self._fail(None)  # h2 queued a GOAWAY with the error's own code
            return
        # h2 checks a frame's length only once the whole frame has arrived: refuse at
        # its header a frame over the size we allow, rather than hold its bytes first.
        # The buffer is h2's own (a private name, pinned by tests/hostile/test_http2.py).
        pending = getattr(self.h2.incoming_buffer, "_data", b"")
        if len(pending) >= 9 and int.from_bytes(pending[:3]) > self.h2.max_inbound_frame_size:
            self._fail(ErrorCodes.FRAME_SIZE_ERROR)
            return
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self._request(event)
            elif isinstance(event, h2.events.DataReceived):
                self._body(event)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.ended = True
                    stream.body_deadline = 0.0
                    stream.readable.set()
            elif isinstance(event, h2.events.StreamReset):
                self._reset(event.stream_id)
            elif isinstance(event, h2.events.WindowUpdated):
                if event.stream_id == 0:
                    for stream in self.streams.values():
                        stream.wake()
                else:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.wake()
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                for stream in self.streams.values():
                    stream.wake()
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._end()
                return
        self.flush()

    def _fail(self, code: ErrorCodes | None) -> None:
        """Close the connection with a GOAWAY saying why (None: h2 queued it already)."""
        if code is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection(code)
        self.flush()
        self._end()

    def _end(self) -> None:
        """The connection is over: its streams see a client that left (the hub lets their
        subscribers go now, not when the socket is gone), and a socket the client does not
        read is dropped rather than waited on."""
        self.closing = True
        for stream in list(self.streams.values()):
            stream.gone()
        transport = self.transport
        if transport is not None:
            if transport.get_write_buffer_size():
                transport.abort()
            else:
                transport.close()

    def _reset(self, stream_id: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.gone()
        # Every reset the client sends counts, of a stream served or refused.
        now = self.loop.time()
        resets = self.resets
        resets.append(now)
        if len(resets) > RESET_BUDGET:
            del resets[: len(resets) - RESET_BUDGET]
            if now - resets[0] < RESET_PERIOD:
                log.warning("closing an HTTP/2 connection from %s: too many resets", self.client)
                self._fail(ErrorCodes.ENHANCE_YOUR_CALM)

    def _request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        # A stream the client reset is closed for h2 at once but its task may still run:
        # the streams held here, not h2's count of open ones, bound a connection's work.
        if self.closing or len(self.streams) >= MAX_STREAMS:
            # (Already closed when the client reset it in the same read.)
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        pseudo: dict[bytes, bytes] = {}
        headers: list[tuple[bytes, bytes]] = []
        size = 0
        for raw_name, raw_value in event.headers or ():
            name, value = bytes(raw_name), bytes(raw_value)
            size += len(name) + len(value) + 4
            if name.startswith(b":"):
                pseudo[name] = value
            else:
                headers.append((name, value))
        authority = pseudo.get(b":authority")
        if authority is not None and not any(n == b"host" for n, _ in headers):
            headers.insert(0, (b"host", authority))
        raw_path = pseudo.get(b":path", b"/")
        path, _, query = raw_path.partition(b"?")
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "2",
            "method": pseudo.get(b":method", b"GET").decode("ascii", "replace"),
            "scheme": self.scheme,
            "path": unquote(path.decode("ascii", "surrogateescape")),
            "raw_path": path,
            "query_string": query,
            "root_path": self.config.root_path,
            "headers": headers,
            "client": self.client,
            "server": self.server,
            "state": self.app_state.copy(),
        }
        stream = _Stream(self, stream_id, scope)
        self.streams[stream_id] = stream
        limits = self.limits
        if limits is not None:
            if len(raw_path) > C.MAX_REQUEST_LINE:
                self._refuse(
                    stream,
                    414,
                    "request_line_too_long",
                    f"the request line is over the {C.MAX_REQUEST_LINE}-byte limit: "
                    "shorten the URL",
                )
                return
            if len(headers) > C.MAX_HEADER_FIELDS:
                self._refuse(
                    stream,
                    431,
                    "too_many_headers",
                    f"the request has more than {C.MAX_HEADER_FIELDS} header fields",
                )
                return
            if size > limits.max_header_bytes:
                self._refuse(
                    stream,
                    431,
                    "headers_too_large",
                    f"the request's headers are over the {limits.max_header_bytes}-byte limit",
                )
                return
        if event.stream_ended is None:
            stream.body_deadline = self.loop.time() + (limits.body_timeout if limits else 30.0)
        else:
            stream.ended = True
        self.deadline = self.loop.time() + CHECK_INTERVAL if limits is not None else 0.0
        task = self.loop.create_task(self._run(stream))
        tasks = self.server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _refuse(self, stream: _Stream, status: int, code: str, message: str) -> None:
        """Answer a stream at once with a JSON error (its request is not served)."""
        body = _error_body(code, message)
        self.send_headers(
            stream,
            [
                (b":status", str(status).encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            end=False,
        )
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self.h2.send_data(stream.id, body, end_stream=True)
        stream.started = True
        stream._completed()
        self._forget(stream)

    def _body(self, event: h2.events.DataReceived) -> None:
        size = event.flow_controlled_length or 0
        stream = self.streams.get(event.stream_id)
        if stream is None or stream.reset or stream.complete:
            # Nobody reads it: give the connection's window back at once.
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.acknowledge_received_data(size, event.stream_id)
            return
        stream.body += event.data or b""
        stream.unacked += size
        if self.limits is not None:
            stream.body_deadline = self.loop.time() + self.limits.body_timeout
        stream.readable.set()

    # -- serving a stream ---------------------------------------------------------------

    async def _run(self, stream: _Stream) -> None:
        try:
            await self.app(stream.scope, stream.receive, stream.send)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and stream.reset:
                pass
            else:
                log.exception("Exception in ASGI application", exc_info=exc)
            if not stream.started and not stream.reset:
                stream.started = True
                self._refuse(stream, 500, "internal", "internal server error")
            elif not stream.complete:
                self.reset_stream(stream, ErrorCodes.INTERNAL_ERROR)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if not stream.complete and not stream.reset:
                log.error("ASGI callable returned without completing its response")
                if not stream.started:
                    self._refuse(stream, 500, "internal", "internal server error")
                else:
                    self.reset_stream(stream, ErrorCodes.INTERNAL_ERROR)
        finally:
            self._forget(stream)

    def _forget(self, stream: _Stream) -> None:
        self.streams.pop(stream.id, None)
        if stream.unacked:
            # Body the app never read (answered without it, or reset): the connection's
            # receive window gets it back, or later uploads would wait for it forever.
            self.grant(stream, stream.unacked)
            stream.unacked = 0
            stream.body.clear()
        if self.streams:
            return
        if self.closing and self.transport is not None:
            self.flush()
            self.transport.close()
        elif self.limits is not None:
            self.deadline = self.loop.time() + self.limits.keep_alive_timeout

    # -- the sweep ----------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Idle past the keep-alive deadline: go away. Streams open: answer those whose
        body is overdue with 408 and look again in a second."""
        if not self.streams:
            self.deadline = 0.0
            self._goaway()
            self._end()  # a client that reads nothing is not waited on
            return
        limits = self.limits
        for stream in list(self.streams.values()):
            if 0.0 < stream.body_deadline <= now and not stream.ended:
                stream.body_deadline = 0.0
                if limits is not None:
                    limits.refused["timed_out"] += 1
                if not stream.started:
                    self._refuse(
                        stream,
                        408,
                        "request_timeout",
                        "the request was not received in time: send it whole, without pauses",
                    )
                # The app sees a client that left.
                self.reset_stream(stream, ErrorCodes.CANCEL)
        self.flush()
        self.deadline = now + CHECK_INTERVAL
