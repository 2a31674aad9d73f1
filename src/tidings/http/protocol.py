"""uvicorn's HTTP protocol, with a response's head and body sent in one write.

uvicorn writes a response's status line and headers when the app sends
`http.response.start`, and its body at `http.response.body`: two send() calls, two TCP
segments and a client woken twice for every small JSON answer (a py-spy profile of the
jobs benchmark put the head's send() at a fifth of the server's GIL time). The transport
here holds the head of a response with a Content-Length — a whole body follows at once —
until the next write, as a rule a moment later, or the end of the loop iteration,
whichever comes first, and sends both at once. The head of a stream (SSE: chunked, its
first event may be minutes away) and anything else pass straight through; a connection
upgraded to a WebSocket gets the real transport back.

When the server is bound to one IPv4 address (not a wildcard), every connection's local
address is that address: the wrapper gives it to uvicorn's `connection_made`, which
otherwise asks the kernel (a getsockname() per connection, ~4 % of the server's time to
accept 8,000 SSE subscribers).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["HeadHoldingTransport", "TidingsHttpProtocol"]

_HEAD = b"HTTP/1.1 "
_LENGTH = b"\r\ncontent-length: "


class HeadHoldingTransport:
    """A transport that sends a response head together with the write after it."""

    __slots__ = ("_held", "_loop", "_transport", "local")

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

    def write(self, data: Any) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif isinstance(data, bytes) and data.startswith(_HEAD) and _LENGTH in data:
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


class TidingsHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol on a HeadHoldingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        held = HeadHoldingTransport(
            transport, self.loop, fixed_local(self.config.host, self.config.port)
        )
        super().connection_made(held)  # type: ignore[arg-type]
        held.local = None  # from now on, the real transport answers every question

    def handle_websocket_upgrade(self) -> None:
        # A WebSocket writes frames, not responses: hand it the real transport, so its
        # writes (thousands per fan-out) do not pass through the holding wrapper.
        held: Any = self.transport
        if isinstance(held, HeadHoldingTransport):
            held.flush()
            self.transport = held.real
        super().handle_websocket_upgrade()
