"""HeadHoldingTransport: a response head leaves with the write after it, never later than
the end of the loop iteration, and nothing else is held. The connection limits: caps and
counts, and a request head cut at its limit after linear work."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import pytest
import uvicorn

from tests.unit.server.http.servers import uvicorn_thread
from tidings.server.http.errors import error_answer
from tidings.server.http.limits import ConnectionLimits, connection_capacity
from tidings.server.http.protocol import HeadHoldingTransport, TidingsHttpProtocol, fixed_local
from tidings.server.settings import Settings

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

    def get_extra_info(self, name: str, default: Any = None) -> str:
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


def test_the_head_of_a_stream_is_not_held() -> None:
    stream_head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n" + (
        b"transfer-encoding: chunked\r\n\r\n"
    )

    async def body(inner: Recording, t: HeadHoldingTransport) -> None:
        t.write(stream_head)  # its first event may be minutes away
        assert inner.writes == [stream_head]

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


def test_a_fixed_local_address_is_given_without_the_socket_until_cleared() -> None:
    async def body(inner: Recording, _: HeadHoldingTransport) -> None:
        t = HeadHoldingTransport(inner, asyncio.get_running_loop(), ("127.0.0.1", 8000))  # type: ignore[arg-type]
        assert t.get_extra_info("socket") is None  # uvicorn then asks for these names
        assert t.get_extra_info("sockname") == ("127.0.0.1", 8000)
        assert t.get_extra_info("peername") == "info:peername"
        t.local = None
        assert t.get_extra_info("socket") == "info:socket"
        assert t.get_extra_info("sockname") == "info:sockname"

    run(body)


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("127.0.0.1", 8000, ("127.0.0.1", 8000)),
        ("10.1.2.3", 443, ("10.1.2.3", 443)),
        ("0.0.0.0", 8000, None),  # a wildcard: the address depends on the interface
        ("::1", 8000, None),  # IPv6: uvicorn's fallback would lose the client address
        ("localhost", 8000, None),
        ("127.0.0.1", 0, None),  # the kernel picks the port
    ],
)
def test_fixed_local(host: str, port: int, expected: tuple[str, int] | None) -> None:
    assert fixed_local(host, port) == expected


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_uvicorn_sees_the_same_server_and_client_addresses(host: str) -> None:
    """Through the real server: the ASGI scope's `server` and `client` are the socket's."""
    seen: list[tuple[Any, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        seen.append((tuple(scope["server"]), tuple(scope["client"] or ())))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with uvicorn_thread(app, host) as server:
        port = server.config.port
        with socket.create_connection((host, port), timeout=5) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(1024).startswith(b"HTTP/1.1 204")
            local = conn.getsockname()[:2]
        assert seen == [((host, port), local)]


# -- limits ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file_limit", "setting", "expected"),
    [
        (256, 0, 192),  # a reserve of 64 descriptors at least
        (1024, 0, 960),
        (20_000, 0, 18_750),  # a sixteenth kept for the store, logs and files
        (100, 0, 50),  # never more than half kept back
        (1024, 5000, 5000),  # an explicit cap is taken as given
    ],
)
def test_connection_capacity(file_limit: int, setting: int, expected: int) -> None:
    assert connection_capacity(file_limit, setting) == expected


def test_admit_counts_per_address_but_not_loopback_unless_asked() -> None:
    limits = ConnectionLimits(Settings(max_connections_per_address=2), 100)
    assert limits.admit("10.0.0.1") == (None, "10.0.0.1")
    assert limits.admit("10.0.0.1") == (None, "10.0.0.1")
    assert limits.admit("10.0.0.1") == (limits.answers.per_address, None)
    assert limits.admit("10.0.0.2") == (None, "10.0.0.2")
    for _ in range(5):
        assert limits.admit("127.0.0.1") == (None, None)  # a local proxy or benchmark
    assert limits.admit("::1") == (None, None)
    assert limits.count == 9 and limits.by_address == {"10.0.0.1": 2, "10.0.0.2": 1}
    limits.release("10.0.0.1")
    limits.release("10.0.0.2")
    limits.release(None)
    assert limits.count == 6 and limits.by_address == {"10.0.0.1": 1}

    strict = ConnectionLimits(Settings(max_connections_per_address=1, limit_loopback=True), 100)
    assert strict.admit("127.0.0.1") == (None, "127.0.0.1")
    assert strict.admit("127.0.0.1")[0] == strict.answers.per_address
    assert strict.admit("127.0.0.2") == (None, "127.0.0.2")


def test_admit_refuses_past_the_global_cap_whatever_the_address() -> None:
    limits = ConnectionLimits(Settings(), 2)
    assert limits.admit("127.0.0.1")[0] is None
    assert limits.admit("127.0.0.1")[0] is None
    assert limits.admit("127.0.0.1")[0] == limits.answers.busy
    limits.release(None)
    assert limits.admit("127.0.0.1")[0] is None


def test_an_error_answer_is_a_complete_json_response_that_closes() -> None:
    answer = error_answer(429, "Too Many Requests", "x", "y", retry_after=1)
    head, body = answer.split(b"\r\n\r\n")
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 429 Too Many Requests",
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        b"retry-after: 1",
    ]
    assert body == b'{"error":{"code":"x","message":"y","retry_after":1}}'


class Wire(Recording):
    """A transport the protocol can run on: records writes, knows when it is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:
        return False  # closed at once, no lingering

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name in ("peername", "sockname") else default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_an_endless_header_is_cut_at_the_limit_after_linear_work() -> None:
    """64 MiB of one header value in 64 KiB pieces: the parser gets one head's worth,
    the client a 431, and the rest is not read."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("no request reaches the app")

    async def main() -> None:
        config = uvicorn.Config(app, http=TidingsHttpProtocol, log_level="error")
        config.load()
        protocol = TidingsHttpProtocol(config, uvicorn.server.ServerState(), {})
        wire = Wire()
        protocol.connection_made(wire)  # type: ignore[arg-type]
        fed = 0
        feed = protocol.parser.feed_data

        def counting(data: bytes) -> None:
            nonlocal fed
            fed += len(data)
            feed(data)

        protocol.parser = type("P", (), {"feed_data": staticmethod(counting)})()
        started = time.process_time()
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        piece = b"a" * 65536
        for _ in range(1024):
            protocol.data_received(piece)
        assert time.process_time() - started < 1.0
        assert fed == protocol.limits.head_limit
        assert wire.closed
        assert b"".join(wire.writes).startswith(b"HTTP/1.1 431 ")
        protocol.connection_lost(None)
        assert protocol.limits.count == 0

    asyncio.run(main())
