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
