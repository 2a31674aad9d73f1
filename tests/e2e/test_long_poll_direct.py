"""Long polls the hub answers itself: the publish writes each parked poll's answer
through the request's own `send` before any poll's task wakes (hub.DirectPoll).

Each answer must be exactly what the poll's handler would have sent — the body for its
cursor, its codec, the CORS headers of its origin — and the connection must go on
serving requests afterwards.
"""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import msgspec
import pytest

from tests.conftest import ServerFactory, ServerProcess

pytestmark = pytest.mark.timeout(60)

ORIGIN = "http://app.test:8000"


def metric(srv: ServerProcess, name: str) -> float:
    for line in httpx.get(f"{srv.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


def publish(srv: ServerProcess, channel: str, data: str) -> str:
    r = httpx.post(
        f"{srv.url}/v1/channels/{channel}/messages",
        content=data,
        headers={"Content-Type": "text/plain"},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def wait_parked(client: httpx.AsyncClient, channel: str, n: int) -> None:
    """Until the server counts `n` long polls parked on `channel`."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        info = (await client.get(f"/v1/channels/{channel}")).json()
        if info["subscribers"]["longpoll"] >= n:
            # Parked means registered; the hub may answer once the task waits, a step on.
            await asyncio.sleep(0.05)
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"fewer than {n} long polls parked on {channel}")


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_parked_polls_get_their_own_answers(
    tidings_server: ServerFactory, tmp_path: object, store: str
) -> None:
    """JSON and MessagePack polls at two cursors, answered by the publish: each gets its
    cursor's messages in its codec, and `next` to go on from."""
    url = "memory://" if store == "memory" else f"sqlite:///{tmp_path}/lp.db"
    srv = tidings_server(store=url)
    first = publish(srv, "lp", "one")
    second = publish(srv, "lp", "two")
    directly_before = metric(srv, "tidings_long_polls_answered_by_hub_total")

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=srv.url, timeout=30, limits=limits) as client:
            path = "/v1/channels/lp/messages"
            polls = [client.get(path, params={"after": second, "wait": 20}) for _ in range(20)]
            polls += [
                client.get(
                    path,
                    params={"after": second, "wait": 20},
                    headers={"Accept": "application/msgpack"},
                )
                for _ in range(5)
            ]
            polls += [client.get(path, params={"after": first, "wait": 20}) for _ in range(5)]
            tasks = [asyncio.ensure_future(p) for p in polls]
            await wait_parked(client, "lp", 25)  # the five at `first` answer at once
            await asyncio.to_thread(publish, srv, "lp", "three")
            return await asyncio.gather(*tasks)

    answers = asyncio.run(run())
    assert all(r.status_code == 200 for r in answers)
    json_new, packed, json_old = answers[:20], answers[20:25], answers[25:]
    for r in json_new:
        body = r.json()
        assert [m["data"] for m in body["messages"]] == ["three"]
        assert body["next"] == body["messages"][0]["id"]
        assert r.headers["content-type"] == "application/json"
        assert r.headers["vary"] == "Accept"
    for r in packed:
        assert r.headers["content-type"] == "application/msgpack"
        body = msgspec.msgpack.decode(r.content)
        assert [m["data"] for m in body["messages"]] == ["three"]
    for r in json_old:  # parked at `first`: never waited, answered "two" at once
        assert [m["data"] for m in r.json()["messages"]] == ["two"]
    # The 25 that waited were answered by the publish itself.
    assert metric(srv, "tidings_long_polls_answered_by_hub_total") == directly_before + 25


def test_direct_answer_keeps_the_connection_serving(tidings_server: ServerFactory) -> None:
    """On a raw keep-alive connection: a parked poll answered by the publish, then the
    next request on the same connection is read and answered."""
    srv = tidings_server()
    last = publish(srv, "keep", "seed")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as sock:
        sock.sendall(
            f"GET /v1/channels/keep/messages?after={last}&wait=20 HTTP/1.1\r\n"
            "Host: 127.0.0.1\r\n\r\n".encode()
        )
        deadline = time.monotonic() + 20
        while (
            httpx.get(f"{srv.url}/v1/channels/keep", timeout=10).json()["subscribers"]["longpoll"]
            < 1
        ):
            assert time.monotonic() < deadline, "the poll never parked"
            time.sleep(0.02)
        time.sleep(0.05)
        publish(srv, "keep", "fresh")
        first = read_response(sock)
        assert first.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b'"data":"fresh"' in first
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        second = read_response(sock)
        assert second.startswith(b"HTTP/1.1 200 OK\r\n")


def read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length, read whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-head: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    assert len(body) == length, "more than one response arrived"
    return head + b"\r\n\r\n" + body


def test_cross_origin_poll_answered_with_its_cors_headers(
    tidings_server: ServerFactory,
) -> None:
    """A browser's cross-origin long poll goes through the CORS layer: the answer the
    publish writes carries that origin's headers, as the handler's would."""
    srv = tidings_server(args=["--cors-origins", ORIGIN])
    last = publish(srv, "cors", "seed")

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            params = {"after": last, "wait": 20}
            tasks = [
                asyncio.ensure_future(
                    client.get("/v1/channels/cors/messages", params=params, headers=h)
                )
                for h in ({"Origin": ORIGIN}, {})
            ]
            await wait_parked(client, "cors", 2)
            await asyncio.to_thread(publish, srv, "cors", "news")
            return await asyncio.gather(*tasks)

    with_origin, without = asyncio.run(run())
    assert with_origin.status_code == without.status_code == 200
    assert with_origin.headers["access-control-allow-origin"] == ORIGIN
    assert "access-control-allow-origin" not in without.headers
    assert with_origin.json() == without.json()
    assert [m["data"] for m in without.json()["messages"]] == ["news"]


def park_raw(srv: ServerProcess, channel: str, request: bytes, parked: int) -> socket.socket:
    """A raw connection that sent `request` (a long poll on `channel`), once the server
    counts `parked` polls there."""
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    sock.sendall(request)
    deadline = time.monotonic() + 20
    url = f"{srv.url}/v1/channels/{channel}"
    while httpx.get(url, timeout=10).json()["subscribers"]["longpoll"] < parked:
        assert time.monotonic() < deadline, "the poll never parked"
        time.sleep(0.02)
    time.sleep(0.05)
    return sock


def without_date(response: bytes) -> list[bytes]:
    return [line for line in response.split(b"\r\n") if not line.lower().startswith(b"date:")]


@pytest.mark.parametrize(
    ("version", "connection", "closes"),
    [
        ("HTTP/1.1", "", False),
        ("HTTP/1.1", "Connection: close\r\n", True),
        ("HTTP/1.0", "", True),
        # uvicorn keeps no HTTP/1.0 connection alive, asked or not.
        ("HTTP/1.0", "Connection: keep-alive\r\n", True),
    ],
)
def test_direct_answer_is_the_handlers_answer_byte_for_byte(
    tidings_server: ServerFactory, version: str, connection: str, closes: bool
) -> None:
    """Parked polls answered by the publish (several sharing one answer) send the very
    bytes, date aside, that the handler sends for the same read on the same kind of
    connection, close it when the request asked for that, and serve the next one when
    not."""
    srv = tidings_server()
    last = publish(srv, "wire", "seed")
    poll = (
        f"GET /v1/channels/wire/messages?after={last}&wait=20 {version}\r\n"
        f"Host: 127.0.0.1\r\n{connection}\r\n"
    ).encode()
    socks = [park_raw(srv, "wire", poll, n + 1) for n in range(3)]
    try:
        fresh = publish(srv, "wire", "fresh")
        answers = [read_response(sock) for sock in socks]
        with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as plain:
            plain.sendall(poll.replace(b"&wait=20", b""))
            handlers = read_response(plain)
        assert b'"data":"fresh"' in handlers and fresh.encode() in handlers
        for answer in answers:
            assert without_date(answer) == without_date(handlers)
            assert (b"connection: close" in answer.lower()) == closes
        for sock in socks:
            if closes:
                assert sock.recv(100) == b"", "the connection stayed open"
            else:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert read_response(sock).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        for sock in socks:
            sock.close()


def test_pipelined_request_behind_a_direct_answer(tidings_server: ServerFactory) -> None:
    """A request pipelined behind a parked poll is answered after the poll's answer."""
    srv = tidings_server()
    last = publish(srv, "pipe", "seed")
    both = (
        f"GET /v1/channels/pipe/messages?after={last}&wait=20 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        "GET /v1/channels/pipe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    ).encode()
    with park_raw(srv, "pipe", both, 1) as sock:
        publish(srv, "pipe", "fresh")
        data = b""
        responses: list[bytes] = []
        while len(responses) < 2:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {responses!r} and {data!r}"
            data += chunk
            while b"\r\n\r\n" in data:
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ", 1)[1].split(b"\r\n")[0])
                if len(rest) < length:
                    break
                responses.append(head + b"\r\n\r\n" + rest[:length])
                data = rest[length:]
        first, second = responses
        assert b'"data":"fresh"' in first
        assert second.startswith(b"HTTP/1.1 200 OK\r\n") and b'"name":"pipe"' in second
        assert data == b""


def test_polls_parked_in_different_seconds_share_one_answer(tidings_server: ServerFactory) -> None:
    """uvicorn's server headers (the date) differ between polls parked a second apart:
    each still gets the whole answer, with its own request's headers."""
    srv = tidings_server()
    last = publish(srv, "dates", "seed")
    poll = (
        f"GET /v1/channels/dates/messages?after={last}&wait=20 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    ).encode()
    first = park_raw(srv, "dates", poll, 1)
    time.sleep(1.1)
    second = park_raw(srv, "dates", poll, 2)
    try:
        publish(srv, "dates", "fresh")
        answers = [read_response(first), read_response(second)]
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b'"data":"fresh"' in answer
            assert answer.lower().count(b"\r\ndate: ") == 1
        assert without_date(answers[0]) == without_date(answers[1])
    finally:
        first.close()
        second.close()
