"""HeadHoldingTransport: a response head leaves with the write after it, never later than
the end of the loop iteration, and nothing else is held."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tidings.http.protocol import HeadHoldingTransport

pytestmark = pytest.mark.timeout(10)

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class Recording:
    """The transport under the wrapper: records what reaches the socket."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.events: list[str] = []

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        self.writes.extend(bytes(x) for x in lines)

    def close(self) -> None:
        self.events.append("close")

    def abort(self) -> None:
        self.events.append("abort")

    def write_eof(self) -> None:
        self.events.append("eof")

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


def run(body: Any) -> None:
    async def main() -> None:
        inner = Recording()
        await body(inner, HeadHoldingTransport(inner, asyncio.get_running_loop()))  # type: ignore[arg-type]

    asyncio.run(main())


def test_head_and_body_leave_in_one_write() -> None:
    async def body(inner: Recording, t: HeadHoldingTransport) -> None:
        t.write(HEAD)
        assert inner.writes == []
        t.write(b"{}")
        assert inner.writes == [HEAD + b"{}"]
        await asyncio.sleep(0)  # the end-of-iteration flush finds nothing left
        assert inner.writes == [HEAD + b"{}"]

    run(body)


def test_a_head_without_a_body_leaves_at_the_end_of_the_iteration() -> None:
    async def body(inner: Recording, t: HeadHoldingTransport) -> None:
        t.write(HEAD)
        await asyncio.sleep(0)
        assert inner.writes == [HEAD]

    run(body)


def test_other_writes_pass_straight_through() -> None:
    async def body(inner: Recording, t: HeadHoldingTransport) -> None:
        t.write(b"data: 1\n\n")
        t.write(memoryview(b"frame"))
        assert inner.writes == [b"data: 1\n\n", b"frame"]

    run(body)


def test_close_eof_and_writelines_send_a_held_head_first_abort_drops_it() -> None:
    async def body(inner: Recording, t: HeadHoldingTransport) -> None:
        t.write(HEAD)
        t.close()
        assert (inner.writes, inner.events) == ([HEAD], ["close"])
        t.write(HEAD)
        t.write_eof()
        t.write(HEAD)
        t.writelines([b"a", b"b"])
        assert inner.writes == [HEAD, HEAD, HEAD, b"a", b"b"]
        t.write(HEAD)
        t.abort()
        await asyncio.sleep(0)
        assert inner.writes == [HEAD, HEAD, HEAD, b"a", b"b"]
        assert inner.events == ["close", "eof", "abort"]

    run(body)


def test_everything_else_is_the_real_transports() -> None:
    async def body(inner: Recording, t: HeadHoldingTransport) -> None:
        assert t.get_extra_info("peername") == "info:peername"

    run(body)
