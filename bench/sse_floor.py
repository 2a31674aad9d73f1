#!/usr/bin/env python3
"""The floor of connecting SSE streams in one Python process: what tidings' connect time
is compared with when judging how much of it is the application's.

A server with nothing but uvloop and httptools: each connection's request head is parsed
(`--raw`: only looked for) and answered with an SSE response head, nothing else. Run it
and point `bench/sseload.c` at it as at tidings:

    .venv/bin/python bench/sse_floor.py PORT [--raw] &
    bench/.build/sseload 127.0.0.1 PORT /v1/channels/bench/events 8000 1 10

`READY <ms>` is the time until every stream had its head. It listens on 127.0.0.1 only,
with a backlog of 16,384 (the kernel caps it at net.core.somaxconn).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import cast

import httptools
import uvloop

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-store\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


class Stream(asyncio.Protocol):
    """One connection: answer its request head with an SSE head, then hold it open."""

    __slots__ = ("parser", "transport")

    def __init__(self, parse: bool) -> None:
        self.parser = httptools.HttpRequestParser(self) if parse else None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's, of a TCP server

    def on_headers_complete(self) -> None:
        if self.transport is not None:
            self.transport.write(HEAD)

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            self.parser.feed_data(data)
        elif b"\r\n\r\n" in data and self.transport is not None:
            self.transport.write(HEAD)


async def serve(port: int, parse: bool) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: Stream(parse), sock=sock, backlog=16384)
    await asyncio.Event().wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("port", type=int)
    ap.add_argument("--raw", action="store_true", help="find the head's end, do not parse it")
    args = ap.parse_args()
    uvloop.run(serve(args.port, not args.raw))


if __name__ == "__main__":
    main()
