"""The lab's own HTTP/1.1 and WebSocket client, on raw sockets, counting what crosses them.

The lab compares patterns by what they cost on the wire, so its clients write every byte
themselves (request line, headers, body; WebSocket frames with their masks) and count the
bytes each socket receives as they arrive — headers, chunk framing and heartbeats
included, whatever the reading code goes on to use. A library client would add its own
headers and hide its reads behind buffers; this one sends the least a real client sends.

`Meter` holds one process's counts; `Conn` is one keep-alive connection to the server:
`request` for a request and its whole answer, `sse` for an event stream, `websocket` to
upgrade it. `busy` is whether a request or stream occupies the connection right now (what
a browser's six-connection pool counts).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

__all__ = ["Conn", "LabWireError", "Meter", "Response", "SseEvent", "WebSocket"]

# The largest header block or chunk-size line read; answers are far smaller.
_READ_LIMIT = 4 * 1024 * 1024


class LabWireError(Exception):
    """The server answered something this client cannot read, or closed mid-answer."""


@dataclass
class Meter:
    """One process's wire counts: requests sent, bytes out and in (every byte written to
    and read from its sockets), connections opened, and connections open or busy now."""

    requests: int = 0
    bytes_out: int = 0
    bytes_in: int = 0
    connects: int = 0
    open_now: int = 0
    busy_now: int = 0


@dataclass(frozen=True)
class Response:
    """A whole HTTP answer."""

    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class SseEvent:
    """One Server-Sent Event (comments and heartbeats are not events)."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.data)


class _CountingProtocol(asyncio.StreamReaderProtocol):
    """A stream protocol that counts every byte the socket hands it."""

    def __init__(self, reader: asyncio.StreamReader, meter: Meter) -> None:
        super().__init__(reader)
        self._meter = meter

    def data_received(self, data: bytes) -> None:
        self._meter.bytes_in += len(data)
        super().data_received(data)


class Conn:
    """One HTTP/1.1 keep-alive connection that counts its bytes into `meter`. A request
    on a connection the server closed meanwhile (its keep-alive timeout) is sent again on
    a new one."""

    def __init__(
        self,
        host: str,
        port: int,
        meter: Meter,
        authority: str | None = None,
        token: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.meter = meter
        self.authority = authority or f"{host}:{port}"
        self.token = token
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._busy = False

    # Connection ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the socket (a no-op while one is open)."""
        if self._writer is not None:
            return
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=_READ_LIMIT)
        transport, protocol = await loop.create_connection(
            lambda: _CountingProtocol(reader, self.meter), self.host, self.port
        )
        self._reader = reader
        self._writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        self.meter.connects += 1
        self.meter.open_now += 1

    async def close(self) -> None:
        """Close the socket, if open."""
        self._set_busy(False)
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        self.meter.open_now -= 1
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    def _set_busy(self, busy: bool) -> None:
        if busy != self._busy:
            self._busy = busy
            self.meter.busy_now += 1 if busy else -1

    def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            raise LabWireError("the connection is closed")
        return self._reader, self._writer

    def _write(self, data: bytes) -> None:
        self.meter.bytes_out += len(data)
        self._streams()[1].write(data)

    def _head(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.authority}"]
        if self.token:
            lines.append(f"Authorization: Bearer {self.token}")
        lines += [f"{name}: {value}" for name, value in headers]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _send(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, dict[str, str]]:
        """Send a request and read its answer's head; once more on a new connection when
        the kept-alive one turns out closed before any answer."""
        for attempt in (1, 2):
            await self.connect()
            self._set_busy(True)
            self.meter.requests += 1
            self._write(self._head(method, target, headers, body) + body)
            try:
                await self._streams()[1].drain()
                return await self._read_head()
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                await self.close()
                if attempt == 2 or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                    raise LabWireError(f"connection closed before an answer to {target}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_head(self) -> tuple[int, dict[str, str]]:
        raw = await self._streams()[0].readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise LabWireError(f"not an HTTP/1.1 status line: {lines[0]!r}")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    async def _chunks(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        """The body's pieces as they arrive (chunked, by length, or up to the close)."""
        reader = self._streams()[0]
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers are sent
                    return
                chunk = await reader.readexactly(size + 2)
                yield chunk[:-2]
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length:
                yield await reader.readexactly(length)
        else:
            while data := await reader.read(65536):
                yield data

    def _after_answer(self, headers: dict[str, str]) -> bool:
        """True when the server keeps the connection open after this answer."""
        return headers.get("connection", "").lower() != "close"

    # Requests -----------------------------------------------------------------------

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
    ) -> Response:
        """Send a request and read its whole answer."""
        status, head = await self._send(method, target, headers or [], body)
        try:
            parts = [piece async for piece in self._chunks(head)]
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise LabWireError(f"connection closed in the answer to {target}") from exc
        self._set_busy(False)
        if not self._after_answer(head):
            await self.close()
        return Response(status, head, b"".join(parts))

    async def sse(
        self, target: str, on_open: asyncio.Event | None = None
    ) -> AsyncIterator[SseEvent]:
        """Open an event stream and yield its events until the server ends it. `on_open`
        is set once the answer's head has arrived (the stream is subscribed)."""
        status, head = await self._send("GET", target, [("Accept", "text/event-stream")], b"")
        if status != 200:
            body = b"".join([piece async for piece in self._chunks(head)])
            self._set_busy(False)
            raise LabWireError(
                f"GET {target}: HTTP {status}: {body[:300].decode(errors='replace')}"
            )
        if on_open is not None:
            on_open.set()
        buffer = b""
        try:
            async for piece in self._chunks(head):
                buffer += piece
                while b"\n\n" in buffer:
                    block, buffer = buffer.split(b"\n\n", 1)
                    event = _parse_event(block.decode())
                    if event is not None:
                        yield event
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise LabWireError(f"event stream {target} cut") from exc
        self._set_busy(False)
        if not self._after_answer(head):
            await self.close()

    async def websocket(self, target: str) -> WebSocket:
        """Upgrade this connection to a WebSocket at `target`."""
        key = base64.b64encode(os.urandom(16)).decode()
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
        ]
        status, head = await self._send("GET", target, headers, b"")
        if status != 101:
            body = b"".join([piece async for piece in self._chunks(head)])
            self._set_busy(False)
            raise LabWireError(
                f"GET {target}: HTTP {status}: {body[:300].decode(errors='replace')}"
            )
        return WebSocket(self)


def _parse_event(block: str) -> SseEvent | None:
    event = SseEvent()
    seen = False
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            event.data.append(value)
            seen = True
        elif name == "id":
            event.id = value
        elif name == "event":
            event.event = value
            seen = True
    return event if seen else None


class WebSocket:
    """The client end of a WebSocket on a `Conn` (RFC 6455: frames out masked, in plain)."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn

    def _send_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.conn._write(head + mask + masked)

    async def messages(self) -> AsyncIterator[str]:
        """Text messages until the server closes; pings are answered with pongs."""
        reader = self.conn._streams()[0]
        pieces: list[bytes] = []
        try:
            while True:
                b0, b1 = await reader.readexactly(2)
                n = b1 & 0x7F
                if n == 126:
                    (n,) = struct.unpack("!H", await reader.readexactly(2))
                elif n == 127:
                    (n,) = struct.unpack("!Q", await reader.readexactly(8))
                if b1 & 0x80:
                    raise LabWireError("the server masked a frame")
                payload = await reader.readexactly(n)
                opcode = b0 & 0x0F
                if opcode == 0x9:
                    self._send_frame(0xA, payload)
                elif opcode == 0x8:
                    return
                elif opcode in (0x0, 0x1, 0x2):
                    pieces.append(payload)
                    if b0 & 0x80:
                        yield b"".join(pieces).decode()
                        pieces = []
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            await self.conn.close()

    async def close(self) -> None:
        """Say goodbye (status 1000) and close the socket."""
        if self.conn._writer is not None:
            self._send_frame(0x8, struct.pack("!H", 1000))
        await self.conn.close()
