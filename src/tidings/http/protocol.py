"""uvicorn's HTTP protocol, with a response's head and body sent in one write.

uvicorn writes a response's status line and headers when the app sends
`http.response.start`, and its body at `http.response.body`: two send() calls, two TCP
segments and a client woken twice for every small JSON answer (a py-spy profile of the
jobs benchmark put the head's send() at a fifth of the server's GIL time). The transport
here holds a head back until the next write — the body, as a rule a moment later — or
the end of the loop iteration, whichever comes first, and sends both at once. Anything
else passes straight through; a connection upgraded to a WebSocket gets the real
transport back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeadHoldingTransport", "TidingsHttpProtocol"]

_HEAD = b"HTTP/1.1 "


class HeadHoldingTransport:
    """A transport that sends a response head together with the write after it."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: Any) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif isinstance(data, bytes) and data.startswith(_HEAD):
            self._held = data
            self._loop.call_soon(self.flush)  # a head without a body (HEAD, 204) still goes
        else:
            self._transport.write(data)

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


class TidingsHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a HeadHoldingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held: Any = HeadHoldingTransport(transport, self.loop)
        super().connection_made(held)

    def handle_websocket_upgrade(self) -> None:
        # A WebSocket writes frames, not responses: hand it the real transport, so its
        # writes (thousands per fan-out) do not pass through the holding wrapper.
        held: Any = self.transport
        if isinstance(held, HeadHoldingTransport):
            held.flush()
            self.transport = held.real
        super().handle_websocket_upgrade()
