"""uvicorn's HTTP protocol, with a response's head and body sent in one write.

uvicorn writes a response's status line and headers when the app sends
`http.response.start`, and its body at `http.response.body`: two send() calls, two TCP
segments and a client woken twice for every small JSON answer (what that cost is in
docs/decisions/0014-jobs-throughput.md). The transport
here holds the head of a response with a Content-Length — a whole body follows at once —
until the next write, as a rule a moment later, or the end of the loop iteration,
whichever comes first, and sends both at once. The head of a stream (SSE: chunked, its
first event may be minutes away) and anything else pass straight through; a connection
upgraded to a WebSocket gets the real transport back.

When the server is bound to one IPv4 address (not a wildcard), every connection's local
address is that address: the wrapper gives it to uvicorn's `connection_made`, which
otherwise asks the kernel with a getsockname() system call per connection
(docs/decisions/0007).

The protocol also enforces the server's HTTP limits (http/limits.py holds the counts, the
answers and the sweep): the connection caps at `connection_made`; the request line
(414), the header block and the number of header fields (431) as the bytes arrive — the
parser is never fed more than one head's worth, so an endless header costs linear time
and is cut at the limit; and the deadlines for a head, a body and keep-alive, which the
once-a-second sweep enforces (408, or a silent close when nothing was sent).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
from typing import Any

import httptools
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from tidings.server import constants as C
from tidings.server.http.h2_protocol import PREFACE, TidingsH2Protocol
from tidings.server.http.lean import LeanEvent, Line
from tidings.server.http.limits import ConnectionLimits, Wait
from tidings.server.http.ws_protocol import TidingsWebSocketProtocol

__all__ = [
    "ChunkWriter",
    "HeadHoldingTransport",
    "TidingsHttpProtocol",
    "WholeAnswer",
    "chunk_writer",
    "whole_answer",
]

log = logging.getLogger("tidings.http")

# A connection closed by a limit stays open this many seconds at most for its client to
# read the answer (its side's close ends it sooner: uvicorn's eof_received lets the
# transport close), and at most this many linger at once.
LINGER = 2.0
MAX_LINGERING = 256

_HEAD = b"HTTP/1.1 "
_LENGTH = b"\r\ncontent-length: "
# Statuses that tell a client to slow down or come back later (a limit refused it): the
# next request on that keep-alive connection is read no sooner than TARPIT seconds after.
_SLOW_DOWN = frozenset({b"429", b"503"})
_SLOW_DOWN_CODES = frozenset(int(code) for code in _SLOW_DOWN)
TARPIT = 1.0


class HeadHoldingTransport:
    """A transport that sends a response head together with the write after it."""

    __slots__ = ("_held", "_loop", "_transport", "local", "slow_down")

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        local: tuple[str, int] | None = None,
    ) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        # The connection's local address when the bind fixes it, while uvicorn sets up.
        self.local = local
        # The last response head told the client to slow down (429, 503).
        self.slow_down = False

    def write(self, data: Any) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif isinstance(data, bytes) and data.startswith(_HEAD) and _LENGTH in data:
            self.slow_down = data[9:12] in _SLOW_DOWN
            self._held = data
            self._loop.call_soon(self.flush)  # a head without a body (HEAD, 204) still goes
        else:
            self._transport.write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if self.local is not None:
            # uvicorn asks for the socket first, then falls back to these names.
            if name == "socket":
                return None
            if name == "sockname":
                return self.local
        return self._transport.get_extra_info(name, default)

    @property
    def real(self) -> asyncio.Transport:
        """The transport underneath."""
        return self._transport

    def flush(self) -> None:
        """Send a held head now."""
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def writelines(self, lines: Any) -> None:
        self.flush()
        self._transport.writelines(lines)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        # Everything else (extra info, flow control, set_protocol, is_closing) is the
        # real transport's.
        return getattr(self._transport, name)


class WholeAnswer:
    """A parked request's answer written whole on its HTTP/1.1 connection, as uvicorn
    would write it, in two steps: `write` puts the bytes on the wire, `finish` completes
    the request (its event, a close when not kept alive, the protocol's next request or
    keep-alive deadline).

    For one Response shared by many requests (the parked long polls a publish answers):
    its bytes are built once per set of server headers (uvicorn's date header changes
    every second) and keep-alive choice, and each request costs a write instead of
    uvicorn's header checks and two ASGI sends. The steps are apart so that a publish
    answering thousands of polls writes every answer before completing any request: the
    last answer leaves sooner (decision 0024). Nothing may run between a request's two
    steps but other requests' writes.
    """

    __slots__ = ("_cycle", "_holder")

    def __init__(self, cycle: RequestResponseCycle, holder: HeadHoldingTransport) -> None:
        self._cycle = cycle
        self._holder = holder

    def write(self, response: Any) -> bool:
        """Write `response` (an ASGI app); False (nothing done) when the request is no
        longer waiting for its answer, the connection cannot take it now, or the response
        is not a Starlette Response of a whole body with plain headers (then it goes
        through `send`)."""
        cycle = self._cycle
        holder = self._holder
        if (
            not isinstance(response, Response)
            or cycle.response_started
            or cycle.disconnected
            or cycle.flow.write_paused
            or holder._held is not None
        ):
            return False
        cache: dict[Any, Any] = response.__dict__.setdefault("_tidings_wire", {})
        plain = cache.get("plain")
        if plain is None:
            plain = cache["plain"] = _plain(response)
        if not plain:
            return False
        keep_alive = cycle.keep_alive
        server_headers = cycle.default_headers
        # Keyed by the list's identity, which the entry keeps alive (polls parked in
        # different seconds carry different lists).
        key = (keep_alive, id(server_headers))
        built = cache.get(key)
        if built is None:
            built = cache[key] = (server_headers, _whole(response, server_headers, keep_alive))
        cycle.response_started = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        holder.slow_down = response.status_code in _SLOW_DOWN_CODES
        holder._transport.write(built[1])
        return True

    def finish(self) -> None:
        """Complete the request whose answer `write` wrote."""
        cycle = self._cycle
        cycle.message_event.set()
        if not cycle.keep_alive:
            self._holder.close()
        cycle.on_response()


def whole_answer(send: Any) -> WholeAnswer | None:
    """A WholeAnswer for the request of uvicorn's `send` when it is a plain HTTP/1.1
    request of this protocol (not HEAD, no access log); None otherwise (HTTP/2, another
    server), and its answer goes through `send`."""
    found = _own_request(send)
    if found is None or found[0].access_log or found[0].scope["method"] == "HEAD":
        return None
    return WholeAnswer(*found)


class ChunkWriter:
    """Writes body chunks of one streamed response straight to its connection, as
    uvicorn's `send` would write them, while nothing stands in the way.

    For the hub's fan-out to SSE streams: each write otherwise costs a coroutine through
    uvicorn's `send` and the holding wrapper (decision 0024). Calling it with an
    HTTP/1.1 chunk (`b"%x\\r\\n" % len(body) + body + b"\\r\\n"`) writes it and returns
    True, or does nothing and returns False when the chunk must go through `send`: the
    response has not started, is not chunked, is complete, its client is gone, or the
    transport asked to pause writing (`send` then waits for the drain, and the hub's
    backlog bound applies).
    """

    __slots__ = ("_cycle", "_holder")

    def __init__(self, cycle: RequestResponseCycle, holder: HeadHoldingTransport) -> None:
        self._cycle = cycle
        self._holder = holder

    def __call__(self, chunk: bytes) -> bool:
        cycle = self._cycle
        if (
            cycle.chunked_encoding is not True
            or not cycle.response_started
            or cycle.response_complete
            or cycle.disconnected
            or cycle.flow.write_paused
            or self._holder._held is not None
        ):
            return False
        self._holder._transport.write(chunk)
        return True


def chunk_writer(send: Any) -> ChunkWriter | None:
    """A ChunkWriter for the response of uvicorn's `send` when it is a GET of this
    protocol (HTTP/1.1 on a HeadHoldingTransport); None otherwise (HTTP/2, another
    server), and the stream writes through `send` alone."""
    found = _own_request(send)
    if found is None or found[0].scope["method"] != "GET":
        return None
    return ChunkWriter(*found)


def _own_request(send: Any) -> tuple[RequestResponseCycle, HeadHoldingTransport] | None:
    """The request cycle of uvicorn's `send` and its connection's wrapper, when `send` is
    an HTTP/1.1 request's of this protocol; None otherwise."""
    cycle = getattr(send, "__self__", None)
    if type(cycle) is not RequestResponseCycle or cycle.send != send:
        return None
    holder: Any = cycle.transport  # typed as asyncio's; this protocol's wrapper here
    if type(holder) is not HeadHoldingTransport:
        return None
    return cycle, holder


def _plain(response: Response) -> bool:
    """Whether uvicorn would write `response` as its bytes and length alone: a whole
    body (a Response's own __call__, no background task), a status of this protocol,
    none of the headers that change how uvicorn frames or keeps the connection, and none
    that uvicorn would refuse (those go its way, to its error)."""
    return (
        type(response).__call__ is Response.__call__
        and response.background is None
        and isinstance(response.body, bytes)
        and response.status_code in STATUS_LINE
        and response.status_code not in (204, 304)
        and not any(
            name in (b"connection", b"transfer-encoding")
            or HEADER_RE.search(name)
            or HEADER_VALUE_RE.search(value)
            for name, value in response.raw_headers
        )
        and sum(name == b"content-length" for name, _ in response.raw_headers) == 1
    )


def _whole(
    response: Response, server_headers: list[tuple[bytes, bytes]], keep_alive: bool
) -> bytes:
    """A response's bytes as uvicorn's send writes them: status line, the server's headers
    then the response's (names lowered), `connection: close` when not kept alive, body."""
    out = [STATUS_LINE[response.status_code]]
    for name, value in (*server_headers, *response.raw_headers):
        out += (name.lower(), b": ", value, b"\r\n")
    if not keep_alive:
        out.append(b"connection: close\r\n")
    out += (b"\r\n", bytes(response.body))
    return b"".join(out)


@functools.lru_cache(maxsize=16)
def fixed_local(host: str, port: int) -> tuple[str, int] | None:
    """The local address of every connection to a server bound to `host`:`port`, when
    the bind names one IPv4 address (not a wildcard or a host name); else None.

    Not IPv6: uvicorn's fallback for the client address takes only a 2-tuple peername,
    and an IPv6 one has four items.
    """
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version != 4 or ip.is_unspecified or not 0 < port < 65536:
        return None
    return (str(ip), port)


class _OverLimit(Exception):
    """Raised from a parser callback to stop the parser at once (a limit was passed)."""


class TidingsHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a HeadHoldingTransport, within the server's limits."""

    # In slots, not in the instance dict uvicorn's attributes share: a dict grown past its
    # shared-key layout costs every connection (every idle stream) memory.
    __slots__ = (
        "address",
        "admitted",
        "deadline",
        "field_bytes",
        "fields",
        "fresh",
        "head_bytes",
        "in_head",
        "limits",
        "over",
        "url",
        "wait",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipeline = Line()  # type: ignore[assignment]  # see lean.py
        self.limits = ConnectionLimits.of(self.config)
        # Read by the sweep: when this connection is due (0: never), and for what.
        self.deadline = 0.0
        self.wait = Wait.NOTHING
        # The client address this connection is counted under (None: not counted).
        self.address: str | None = None
        self.admitted = False
        # What the parser has seen of the current request head.
        self.in_head = True
        self.head_bytes = 0
        self.fields = 0
        self.field_bytes = 0
        # The answer for a limit a parser callback found passed.
        self.over: bytes | None = None
        self.url = b""  # uvicorn sets it when a request begins
        self.fresh = True  # nothing read yet: the bytes may be HTTP/2's preface

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held = HeadHoldingTransport(
            transport, self.loop, fixed_local(self.config.host, self.config.port)
        )
        super().connection_made(held)  # type: ignore[arg-type]
        self.flow._is_writable_event = LeanEvent(self.flow._is_writable_event.is_set())
        held.local = None  # from now on, the real transport answers every question
        limits = self.limits
        refusal, self.address = limits.admit(self.client[0] if self.client else None)
        if refusal is not None:
            # Over a connection cap: say so and close; the client's request, if it came
            # already, is not read.
            self.in_head = False
            self.transport.write(refusal)
            self._close_lingering()
            return
        self.admitted = True
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            self._become_h2(b"")  # TLS chose HTTP/2
            return
        limits.swept.add(self)
        limits.start_sweeping(self.loop)
        self.wait = Wait.HEAD
        self.deadline = self.loop.time() + limits.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_reading()
        super().connection_lost(exc)

    # -- reading, within the head limits ----------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return  # refused, or closed by a limit: nothing more is read
        if self.fresh:
            self.fresh = False
            if data.startswith(PREFACE[: len(data)]) and len(data) >= 4:
                self._become_h2(data)  # cleartext HTTP/2 with prior knowledge
                return
        if self.wait is Wait.IDLE:  # a keep-alive connection's next request begins
            self.wait = Wait.HEAD
            self.deadline = self.loop.time() + self.limits.header_timeout
        if self.in_head:
            seen = self.head_bytes + len(data)
            if seen > self.limits.head_limit:
                self._cut_head(data)
                return
            self.head_bytes = seen
        self._feed(data)

    def _cut_head(self, data: bytes) -> None:
        """Feed only what a request head may hold; refuse the head if it is still not over."""
        allowed = self.limits.head_limit - self.head_bytes
        self.head_bytes = self.limits.head_limit
        self._feed(data[:allowed])
        if not self._reading():
            self._pass_on(data[allowed:])
            return  # refused, answered 400 or upgraded meanwhile
        if self.in_head:
            answers = self.limits.answers
            too_long = len(self.url) > C.MAX_REQUEST_LINE
            self.limits.refused["head_too_large"] += 1
            self._refuse(answers.request_line if too_long else answers.header_bytes, False)
        else:
            self.data_received(data[allowed:])  # what follows the head

    def _reading(self) -> bool:
        """Whether this connection still reads requests (not closed by a limit, not
        handed to a WebSocket)."""
        return self.admitted and not self.transport.is_closing()

    def _pass_on(self, data: bytes) -> None:
        """Hand bytes read after an upgrade request's head to the protocol that took the
        connection over (nothing, if none did or it is closing)."""
        protocol = self.transport.get_protocol()
        if data and protocol is not self and not self.transport.is_closing():
            protocol.data_received(data)  # type: ignore[attr-defined]

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.over is not None:
                self.limits.refused["head_too_large"] += 1
                self._refuse(self.over, False)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
        except httptools.HttpParserUpgrade as exc:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
                # The parser stopped where the upgraded protocol's bytes begin (its
                # argument): a client may send its first frames with the handshake.
                self._pass_on(data[exc.args[0] :])
            else:
                self._unsupported_upgrade_warning()

    def _refuse(self, answer: bytes, linger: bool = True) -> None:
        """Answer a request over a limit (unless a response is under way) and close:
        lingering (`_close_lingering`), or at once for a head over a size limit, whose
        client is still sending what the limit is there to stop reading."""
        self._stop_reading()
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self.transport.write(answer)
        elif not cycle.response_started:
            self.transport.write(answer)
            cycle.disconnected = True  # the app's answer, if any, goes nowhere
            cycle.message_event.set()
        if linger:
            self._close_lingering()
        else:
            self.transport.close()

    def _close_lingering(self) -> None:
        """Close after an answer the client may not have read its request's way to.

        Closing a socket with the client's request unread resets the connection, and the
        client then loses the answer (429, 431…) it was sent. As nginx's lingering close
        does: send a FIN now, read and drop what still comes, and close when the client
        closes its side or after LINGER seconds. At most MAX_LINGERING connections linger
        at once (each holds a file descriptor); past that they are closed at once.
        """
        limits = self.limits
        transport = self.transport
        if limits.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            return
        limits.lingering += 1
        transport.write_eof()

        def close() -> None:
            limits.lingering -= 1
            transport.close()

        self.loop.call_later(LINGER, close)

    def _stop_reading(self) -> None:
        """Take this connection out of the limits' sweep and read nothing more."""
        if self.admitted:
            self.admitted = False
            self.limits.swept.discard(self)
            self.limits.release(self.address)
            self.address = None
        self.deadline = 0.0
        self.wait = Wait.NOTHING

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > C.MAX_REQUEST_LINE:
            self.over = self.limits.answers.request_line
            raise _OverLimit

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields += 1
        self.field_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        if self.fields > C.MAX_HEADER_FIELDS:
            self.over = self.limits.answers.fields
            raise _OverLimit
        if self.field_bytes > self.limits.max_header_bytes:
            self.over = self.limits.answers.header_bytes
            raise _OverLimit
        # uvicorn's on_header, unchanged.
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.wait = Wait.BODY
        self.deadline = self.loop.time() + self.limits.body_timeout
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle is not before:
            # A new request's: its task has not run yet, so nothing waits on the event.
            cycle.message_event = LeanEvent(cycle.message_event.is_set())

    def on_body(self, body: bytes) -> None:
        self.deadline = self.loop.time() + self.limits.body_timeout
        super().on_body(body)

    def on_message_complete(self) -> None:
        # The app has the request: no deadline until its response is complete.
        self.wait = Wait.NOTHING
        self.deadline = 0.0
        self.in_head = True
        self.head_bytes = self.fields = self.field_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # uvicorn's, with the keep-alive timer replaced by a deadline for the sweep.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self.admitted:
            self.wait = Wait.IDLE
            self.deadline = self.loop.time() + self.limits.keep_alive_timeout
            held: Any = self.transport
            if isinstance(held, HeadHoldingTransport) and held.slow_down:
                self._tarpit(held)

    def _tarpit(self, held: HeadHoldingTransport) -> None:
        """Read this connection's next request no sooner than TARPIT seconds from now.

        A client answered 429 or 503 that asks again at once (a login flood ignoring
        Retry-After) would otherwise keep the event loop answering it, and every other
        client would wait behind it; with the tarpit each of its connections costs one
        answer a second, and a client that heeds Retry-After never notices.
        """
        held.slow_down = False
        transport = held.real
        transport.pause_reading()

        def resume() -> None:
            if not transport.is_closing():
                transport.resume_reading()

        self.loop.call_later(TARPIT, resume)

    # -- the sweep ------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """Past the deadline: close, with a 408 when part of a request came."""
        wait = self.wait
        if wait is Wait.BODY and self.flow.read_paused:
            # Reading is paused because the app has not taken the body yet: not the
            # client's delay.
            self.deadline = now + self.limits.body_timeout
            return
        answer = self.limits.answers.timeout
        if wait is not Wait.IDLE:  # an idle keep-alive connection's end is no refusal
            self.limits.refused["timed_out"] += 1
        if wait is Wait.BODY or (wait is Wait.HEAD and self.head_bytes > 0):
            log.debug("closing a connection from %s: %s timed out", self.client, wait.name)
            self._refuse(answer)
        else:
            self._stop_reading()
            self.transport.close()

    def _become_h2(self, data: bytes) -> None:
        """Hand this connection to the HTTP/2 protocol, with its place in the limits."""
        held: Any = self.transport
        transport = held.real if isinstance(held, HeadHoldingTransport) else held
        limits, address = self.limits, self.address
        limits.swept.discard(self)
        self.admitted = False
        self.address = None
        self.deadline = 0.0
        self.wait = Wait.NOTHING
        self.connections.discard(self)
        protocol = TidingsH2Protocol(
            self.config, self.server_state, self.app_state, limits, address
        )
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data:
            protocol.data_received(data)

    def handle_websocket_upgrade(self) -> None:
        # A WebSocket writes frames, not responses: hand it the real transport, so its
        # writes (thousands per fan-out) do not pass through the holding wrapper.
        held: Any = self.transport
        if isinstance(held, HeadHoldingTransport):
            held.flush()
            self.transport = held.real
        # From here the WebSocket protocol owns the connection and its place in the count;
        # it has no HTTP deadlines.
        limits, address, admitted = self.limits, self.address, self.admitted
        if admitted:
            limits.swept.discard(self)
        self.admitted = False
        self.deadline = 0.0
        self.wait = Wait.NOTHING
        super().handle_websocket_upgrade()
        protocol = self.transport.get_protocol()
        if not admitted:
            return
        if isinstance(protocol, TidingsWebSocketProtocol):
            protocol.adopt(limits, address)
        else:
            limits.release(address)  # a WebSocket protocol that does not count itself
