"""HTTP limits against a real server and raw sockets: request line and header caps (414,
431) that cost linear time, header/body/keep-alive timeouts, per-address and global
connection caps, and a server that outlives running out of file descriptors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, free_port

HOST_HEADER = b"Host: 127.0.0.1\r\n"


def connect(port: int, source: str = "127.0.0.1", timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout, source_address=(source, 0))


def read_all(sock: socket.socket, limit: float = 10.0) -> bytes:
    """Everything the server sends until it closes (or `limit` seconds pass)."""
    sock.settimeout(limit)
    out = b""
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return out


def exchange(port: int, payload: bytes, limit: float = 10.0) -> bytes:
    with connect(port) as sock:
        sock.sendall(payload)
        return read_all(sock, limit)


def status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def body(answer: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return decoded


def get(path: str = "/healthz") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\n" + HOST_HEADER


def served(sock: socket.socket) -> bool:
    """Whether a keep-alive request on `sock` is answered 200."""
    sock.settimeout(10)
    sock.sendall(get() + b"\r\n")
    return sock.recv(65536).startswith(b"HTTP/1.1 200")


# -- sizes -------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_an_endless_header_is_cut_with_431_while_normal_requests_keep_answering(
    tidings_server: ServerFactory,
) -> None:
    """One client writes one header value in 64 KiB pieces without end, reconnecting when
    cut: its connections are cut at the limit, and normal requests answer meanwhile."""
    srv = tidings_server()
    stop = threading.Event()
    outcome: Counter[str] = Counter()

    def endless() -> None:
        piece = b"a" * 65536
        while not stop.is_set():
            with connect(srv.port, timeout=5) as sock:
                try:
                    sock.sendall(get() + b"X-Endless: ")
                    while not stop.is_set():
                        sock.sendall(piece)
                except TimeoutError:
                    outcome["stuck"] += 1  # the server neither reads nor closes
                except OSError:
                    outcome["cut"] += 1
                    if status(read_all(sock, 2)) == 431:
                        outcome["431"] += 1

    attacker = threading.Thread(target=endless, daemon=True)
    attacker.start()
    slowest = 0.0
    try:
        time.sleep(0.5)
        with httpx.Client(timeout=5) as client:
            for _ in range(60):
                started = time.monotonic()
                assert client.get(f"{srv.url}/healthz", headers={"connection": "close"}).is_success
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.05)
    finally:
        stop.set()
        attacker.join(15)
    assert slowest < 2.0, f"a normal request took {slowest:.2f} s"
    assert outcome["cut"] >= 3 and outcome["stuck"] == 0, outcome


def test_a_header_block_over_32_kib_is_answered_431_saying_the_limit(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    answer = exchange(srv.port, get() + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert status(answer) == 431
    assert b"connection: close" in answer.lower()
    error = body(answer)["error"]
    assert error["code"] == "headers_too_large" and "32768" in error["message"]
    # Just under the limit is served.
    assert status(exchange(srv.port, get() + b"X-Big: " + b"a" * 30_000 + b"\r\n\r\n")) == 200


def test_a_header_block_of_many_medium_headers_is_answered_431(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    headers = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(40))
    assert status(exchange(srv.port, get() + headers + b"\r\n")) == 431


def test_a_request_line_over_8_kib_is_answered_414(tidings_server: ServerFactory) -> None:
    srv = tidings_server()
    answer = exchange(srv.port, get("/healthz?q=" + "a" * 9000) + b"\r\n")
    assert status(answer) == 414
    assert body(answer)["error"]["code"] == "request_line_too_long"
    # An endless request line is cut too.
    with connect(srv.port) as sock:
        sock.sendall(b"GET /" + b"a" * 200_000)
        assert status(read_all(sock)) == 414


def test_101_header_fields_are_answered_431_and_100_are_served(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()

    def fields(n: int) -> bytes:  # Host plus n - 1 others
        return get() + b"".join(b"X-%d: 1\r\n" % i for i in range(n - 1)) + b"\r\n"

    assert status(exchange(srv.port, fields(100))) == 200
    answer = exchange(srv.port, fields(101))
    assert status(answer) == 431
    assert body(answer)["error"]["code"] == "too_many_headers"
    assert status(exchange(srv.port, get() + b"X-1: 1\r\n" * 10_000 + b"\r\n")) == 431


# -- timeouts ----------------------------------------------------------------------------


def test_a_silent_connection_is_closed_after_the_header_timeout(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server(args=["--header-timeout", "1"])
    with connect(srv.port) as sock:
        started = time.monotonic()
        assert read_all(sock) == b""  # closed without an answer, as nginx does
        assert 0.5 < time.monotonic() - started < 5


def test_a_trickled_header_gets_408_and_is_closed(tidings_server: ServerFactory) -> None:
    srv = tidings_server(args=["--header-timeout", "1"])
    with connect(srv.port) as sock:
        started = time.monotonic()
        answer = b""
        sock.settimeout(0.2)
        for byte in get() + b"X-Slow: " + b"a" * 100:
            try:
                sock.send(bytes([byte]))
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer or time.monotonic() - started > 8:
                break
    assert status(answer) == 408
    assert body(answer)["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 5


def test_an_unfinished_chunked_body_is_closed_after_the_body_timeout(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server(args=["--body-timeout", "1"])
    with connect(srv.port) as sock:
        sock.sendall(
            b"POST /v1/channels/slow/messages HTTP/1.1\r\n" + HOST_HEADER
            + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"5\r\n{\"dat\r\n"
        )  # fmt: skip
        started = time.monotonic()
        answer = read_all(sock)
        assert time.monotonic() - started < 5
    assert status(answer) == 408
    assert httpx.get(f"{srv.url}/v1/channels/slow/messages?after=0").json()["messages"] == []


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server(args=["--keep-alive-timeout", "1"])
    with connect(srv.port) as sock:
        assert served(sock)
        assert served(sock)  # still open for the next request
        started = time.monotonic()
        assert read_all(sock) == b""
        assert 0.5 < time.monotonic() - started < 5


def test_streams_and_websockets_outlive_every_timeout(tidings_server: ServerFactory) -> None:
    """An SSE stream and a WebSocket stay open past the header, body and keep-alive
    timeouts, and still deliver."""
    srv = tidings_server(
        args=["--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1"]
    )
    with connect(srv.port) as sse, connect(srv.port) as ws:
        sse.sendall(get("/v1/channels/quiet/events") + b"\r\n")
        assert sse.recv(4096).startswith(b"HTTP/1.1 200")
        ws.sendall(
            get("/v1/channels/quiet/ws")
            + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        assert ws.recv(4096).startswith(b"HTTP/1.1 101")
        time.sleep(3.5)
        httpx.post(f"{srv.url}/v1/channels/quiet/messages", json={"data": "still here"})
        sse.settimeout(5)
        ws.settimeout(5)
        assert b"still here" in sse.recv(65536)
        assert b"still here" in ws.recv(65536)


# -- connection caps ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_21st_connection_from_one_address_is_refused_while_the_20_live_and_others_are_served(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server(
        args=["--limit-loopback", "--max-connections-per-address", "20", "--header-timeout", "30"]
    )
    held = [connect(srv.port) for _ in range(20)]
    try:
        time.sleep(0.3)  # every one accepted
        with connect(srv.port) as extra:
            answer = read_all(extra)
        assert status(answer) == 429
        assert b"retry-after: 1" in answer.lower()
        assert body(answer)["error"]["code"] == "too_many_connections"
        assert all(served(sock) for sock in held)
        with connect(srv.port, source="127.0.0.2") as other:
            assert served(other)
        held.pop().close()
        time.sleep(0.3)
        with connect(srv.port) as again:
            assert served(again)
    finally:
        for sock in held:
            sock.close()


def test_websockets_count_toward_the_per_address_cap_and_give_their_place_back(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server(args=["--limit-loopback", "--max-connections-per-address", "5"])
    upgrade = (
        get("/v1/channels/counted/ws")
        + b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    for _ in range(3):  # places given back: each round fits again
        sockets = [connect(srv.port) for _ in range(5)]
        for sock in sockets:
            sock.sendall(upgrade)
            assert sock.recv(4096).startswith(b"HTTP/1.1 101")
        with connect(srv.port) as extra:
            assert status(read_all(extra)) == 429
        for sock in sockets:
            sock.close()
        time.sleep(0.5)


def test_loopback_clients_are_not_capped_per_address_by_default(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server(args=["--max-connections-per-address", "5"])
    held = [connect(srv.port) for _ in range(12)]
    try:
        assert all(served(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()


def test_past_the_global_cap_a_connection_gets_503_and_a_freed_slot_serves_again(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server(args=["--max-connections", "10", "--header-timeout", "30"])
    held = [connect(srv.port) for _ in range(10)]
    try:
        time.sleep(0.3)
        with connect(srv.port, source="127.0.0.3") as extra:
            answer = read_all(extra)
        assert status(answer) == 503
        assert b"retry-after: 1" in answer.lower()
        assert all(served(sock) for sock in held)
        held.pop().close()
        time.sleep(0.3)
        with connect(srv.port) as again:
            assert served(again)
    finally:
        for sock in held:
            sock.close()


# -- file descriptors --------------------------------------------------------------------


class SmallServer:
    """`tidings serve` started under `ulimit -n` = `files` (soft and hard)."""

    def __init__(self, tmp_path: Path, files: int, args: list[str]) -> None:
        self.port = free_port()
        self.log_path = tmp_path / "server.log"

        # `ulimit -n` in a shell that then becomes the server: soft and hard limits alike.
        cmd = [
            "sh", "-c", f'ulimit -n {files} && exec "$0" "$@"',
            sys.executable, "-m", "tidings", "serve", "--host", "127.0.0.1",
            "--port", str(self.port), "--store", "memory://", "--log-level", "info", *args,
        ]  # fmt: skip
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).is_success:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise AssertionError(f"the server did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.mark.timeout(90)
def test_at_file_descriptor_exhaustion_new_connections_are_refused_and_the_open_ones_live(
    tmp_path: Path,
) -> None:
    """Under `ulimit -n 256`, with the connection cap set above it, 300 idle connections
    run the process out of descriptors: it neither dies nor spins, the connections it
    holds are served, and once some close a new client is served again."""
    srv = SmallServer(tmp_path, 256, ["--max-connections", "1000", "--header-timeout", "60"])
    held: list[socket.socket] = []
    try:
        assert "file limit 256" in srv.log()
        for _ in range(300):
            try:
                held.append(connect(srv.port, timeout=5))
            except OSError:
                break
        time.sleep(1)
        before = srv.cpu_seconds()
        time.sleep(2)
        assert srv.cpu_seconds() - before < 0.5, "the server spins at fd exhaustion"
        assert srv.proc.poll() is None
        alive = [sock for sock in held[:150] if _answers(sock)]
        assert len(alive) >= 100, f"only {len(alive)} of the first 150 connections live"
        for sock in held[150:]:
            sock.close()
        del held[150:]
        time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=5).is_success
    finally:
        for sock in held:
            sock.close()
        srv.stop()


def _answers(sock: socket.socket) -> bool:
    try:
        return served(sock)
    except OSError:
        return False


@pytest.mark.timeout(60)
def test_the_default_connection_cap_keeps_a_reserve_of_descriptors_and_is_logged(
    tmp_path: Path,
) -> None:
    """Under `ulimit -n 256` the derived cap is 192 (a reserve of 64): the 193rd connection
    gets 503, and the server can still open what it needs."""
    srv = SmallServer(tmp_path, 256, ["--header-timeout", "60"])
    held: list[socket.socket] = []
    try:
        assert "serving up to 192 connections (file limit 256)" in srv.log()
        held = [connect(srv.port) for _ in range(192)]
        time.sleep(0.5)
        with connect(srv.port) as extra:
            assert status(read_all(extra)) == 503
        assert served(held[0])
        assert served(held[-1])
    finally:
        for sock in held:
            sock.close()
        srv.stop()
