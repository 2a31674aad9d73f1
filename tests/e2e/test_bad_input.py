"""Bad input gets a clear JSON error with the right status, and harms nothing.

Malformed and misfitting bodies, oversized bodies (declared or chunked), invalid channel
names and cursors on every transport, bad query parameters, unknown paths and methods.
Every error is `{"error": {"code", "message"}}`; after each, the server is healthy and
the channel unchanged. One server (--max-message-bytes 1024) serves the whole module.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerProcess

LIMIT = 1024
BAD_NAMES = ["a" * 201, "bad name", "bad$name", "café", "semi;colon", "quote'"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("bad-input")
    srv = ServerProcess("memory://", tmp / "server.log", ["--max-message-bytes", str(LIMIT)], {})
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, str]:
    """`r` is a JSON error with `status`, a code (`code` when given) and a message."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err: dict[str, str] = body["error"]
    assert isinstance(err["code"], str)
    assert err["code"]
    assert isinstance(err["message"], str)
    assert err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


def history(http: httpx.Client, channel: str) -> list[Any]:
    r = http.get(f"/v1/channels/{channel}/messages", params={"after": "0"})
    assert r.status_code == 200, r.text
    return [(m["id"], m["data"], m["event"]) for m in r.json()["messages"]]


@pytest.fixture
def baseline(http: httpx.Client, request: pytest.FixtureRequest) -> Iterator[str]:
    """A channel holding one message; after the test it must hold exactly that, and the
    server must still be healthy."""
    channel = "bad." + request.node.name.replace("[", ".").replace("]", "")[:150]
    channel = "".join(c if c.isalnum() or c in "._:-" else "-" for c in channel)
    r = http.post(f"/v1/channels/{channel}/messages", json={"data": "baseline"})
    assert r.status_code == 201, r.text
    before = history(http, channel)
    yield channel
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200
    assert history(http, channel) == before, "a refused request changed the channel"


# --- publish bodies -----------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "body", [b"{", b"", b"not json", b'{"data": 1,}', b'{"data": "\xff"}'], ids=repr
)
def test_malformed_json_body_is_400(http: httpx.Client, baseline: str, body: bytes) -> None:
    """A body declared as JSON that does not parse: 400 saying it is not valid JSON."""
    r = http.post(
        f"/v1/channels/{baseline}/messages",
        content=body,
        headers={"content-type": "application/json"},
    )
    assert_error(r, 400)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"data": 1, "extra": 2}, 422),  # unknown field
        ({}, 422),  # missing data
        ({"event": "only"}, 422),  # missing data
        ([1, 2], 422),  # not an object
        ("just a string", 422),
        ({"data": 1, "event": 5}, 422),  # event of the wrong type
        ({"data": 1, "event": ""}, 400),  # event empty
        ({"data": 1, "event": "two\nlines"}, 400),  # would break the SSE framing
        ({"data": 1, "event": "x" * 201}, 400),  # event too long
    ],
    ids=lambda v: json.dumps(v)[:40] if not isinstance(v, int) else str(v),
)
def test_json_body_that_does_not_fit_is_refused(
    http: httpx.Client, baseline: str, body: Any, status: int
) -> None:
    """Well-formed JSON that is not `{"data": any, "event"?: name}`: 422 (or 400 for a
    bad event name), with a message naming the expected shape."""
    r = http.post(f"/v1/channels/{baseline}/messages", json=body)
    assert_error(r, status)


@pytest.mark.timeout(20)
def test_non_utf8_raw_body_is_400(http: httpx.Client, baseline: str) -> None:
    """A raw (non-JSON) body is text; bytes that are not UTF-8 are refused."""
    r = http.post(
        f"/v1/channels/{baseline}/messages",
        content=b"\xff\xfe\x00bad",
        headers={"content-type": "text/plain"},
    )
    assert_error(r, 400)


# --- size limit ---------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_body_at_the_limit_is_accepted_and_one_byte_over_is_413(
    http: httpx.Client, server: ServerProcess
) -> None:
    ch = "size.edge"
    at_limit = b"x" * LIMIT
    r = http.post(f"/v1/channels/{ch}/messages", content=at_limit)
    assert r.status_code == 201, r.text
    r = http.post(f"/v1/channels/{ch}/messages", content=at_limit + b"x")
    assert_error(r, 413, "payload_too_large")
    r = http.post(f"/v1/channels/{ch}/messages", json={"data": "y" * LIMIT})
    assert_error(r, 413, "payload_too_large")
    assert [d for _, d, _ in history(http, ch)] == [at_limit.decode()]


@pytest.mark.timeout(20)
def test_oversized_body_with_content_length_is_413(http: httpx.Client, baseline: str) -> None:
    r = http.post(f"/v1/channels/{baseline}/messages", content=b"z" * (LIMIT * 8))
    assert "content-length" in r.request.headers
    assert_error(r, 413, "payload_too_large")


@pytest.mark.timeout(20)
def test_oversized_chunked_body_is_413(http: httpx.Client, baseline: str) -> None:
    """Without a Content-Length the server reads only up to the limit, then answers 413."""

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b"c" * 512

    r = http.post(f"/v1/channels/{baseline}/messages", content=chunks())
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "payload_too_large")


@pytest.mark.timeout(20)
def test_huge_declared_body_is_refused_before_any_of_it_is_sent(
    server: ServerProcess, http: httpx.Client, baseline: str
) -> None:
    """A 1 GiB Content-Length is answered 413 at once from the headers alone: the server
    does not wait for (or buffer) the body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            f"POST /v1/channels/{baseline}/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {1 << 30}\r\n\r\n".encode()
            + b'{"data": "'
        )
        raw = b""
        while b"\r\n\r\n" not in raw:
            data = sock.recv(65536)  # a timeout here means the server waited for the body
            assert data, f"closed without an answer: {raw!r}"
            raw += data
        head, _, rest = raw.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0].split()[1] == b"413", head
        headers = dict(line.split(b":", 1) for line in head.split(b"\r\n")[1:])
        length = int({k.lower(): v for k, v in headers.items()}[b"content-length"])
        while len(rest) < length:
            data = sock.recv(65536)
            assert data
            rest += data
    err = json.loads(rest[:length])["error"]
    assert err["code"] == "payload_too_large"
    assert err["message"]


# --- channel names ------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: n if len(n) < 20 else f"{len(n)}chars")
def test_invalid_channel_name_is_400_on_every_http_endpoint(http: httpx.Client, name: str) -> None:
    """Publish, poll, long poll, SSE, multiplexed SSE, stats and delete all refuse a name
    outside 1-200 of [A-Za-z0-9._:-] with 400 invalid_channel."""
    base = f"/v1/channels/{name}"
    assert_error(http.post(f"{base}/messages", json={"data": 1}), 400, "invalid_channel")
    assert_error(http.post(f"{base}/messages", content=b"text"), 400, "invalid_channel")
    assert_error(http.get(f"{base}/messages"), 400, "invalid_channel")
    assert_error(http.get(f"{base}/messages", params={"wait": 1}), 400, "invalid_channel")
    assert_error(http.get(f"{base}/events"), 400, "invalid_channel")
    assert_error(http.get("/v1/events", params={"channel": ["ok", name]}), 400, "invalid_channel")
    assert_error(http.get(base), 400, "invalid_channel")
    assert_error(http.delete(base), 400, "invalid_channel")


@pytest.mark.timeout(20)
def test_a_name_of_exactly_200_allowed_characters_is_fine(http: httpx.Client) -> None:
    name = ("Az09._:-" * 25)[:200]
    r = http.post(f"/v1/channels/{name}/messages", json={"data": 1})
    assert r.status_code == 201, r.text
    assert http.get(f"/v1/channels/{name}").json()["name"] == name


def ws_refusal(url: str) -> int:
    """Open a WebSocket the server should refuse; the close code it was refused with."""
    with pytest.raises(ConnectionClosed) as closed, ws_connect(url, open_timeout=5) as ws:
        ws.recv(timeout=5)
    assert closed.value.rcvd is not None, "closed without a close frame"
    assert closed.value.rcvd.reason, "the close frame should say what was wrong"
    return closed.value.rcvd.code


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "path",
    [
        "/v1/channels/bad$name/ws",
        f"/v1/channels/{'a' * 201}/ws",
        "/v1/channels/caf%C3%A9/ws",
        "/v1/channels/fine/ws?after=abc",
        "/v1/channels/fine/ws?after=-1",
        "/v1/no-such-socket",
    ],
    ids=["bad-char", "too-long", "non-ascii", "cursor-abc", "cursor-negative", "unknown-path"],
)
def test_websocket_with_invalid_channel_or_cursor_is_closed_with_1008(
    server: ServerProcess, path: str
) -> None:
    """A WebSocket the server cannot serve is closed with 1008 (policy violation) and a
    reason, not refused with a bare HTTP status the client cannot explain."""
    try:
        code = ws_refusal(server.ws_url + path)
    except InvalidStatus as exc:
        pytest.fail(f"handshake refused with HTTP {exc.response.status_code}, not closed 1008")
    assert code == 1008


# --- query parameters and cursors ---------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"limit": "0"}, "bad_request"),
        ({"limit": "-5"}, "bad_request"),
        ({"limit": "abc"}, "bad_request"),
        ({"limit": "1.5"}, "bad_request"),
        ({"limit": "100000"}, "bad_request"),
        ({"wait": "-1"}, "bad_request"),
        ({"wait": "abc"}, "bad_request"),
        ({"wait": "nan"}, "bad_request"),
        ({"wait": "inf"}, "bad_request"),
        ({"after": "abc"}, "invalid_cursor"),
        ({"after": "-1"}, "invalid_cursor"),
        ({"after": "1.5"}, "invalid_cursor"),
        ({"after": "1e3"}, "invalid_cursor"),
        ({"after": "9" * 40}, "invalid_cursor"),
        ({"after": "²"}, "invalid_cursor"),  # a Unicode digit that int() refuses
    ],
    ids=lambda v: "&".join(f"{k}={x[:12]}" for k, x in v.items()) if isinstance(v, dict) else v,
)
def test_bad_poll_parameters_are_400(
    http: httpx.Client, baseline: str, params: dict[str, str], code: str
) -> None:
    assert_error(http.get(f"/v1/channels/{baseline}/messages", params=params), 400, code)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("path", "headers", "code"),
    [
        ("/v1/channels/{c}/events", {"Last-Event-ID": "abc"}, "invalid_cursor"),
        ("/v1/channels/{c}/events?after=abc", {}, "invalid_cursor"),
        ("/v1/channels/{c}/events?after=%C2%B2", {}, "invalid_cursor"),
        ("/v1/events?channel={c}", {"Last-Event-ID": "garbage"}, None),
        ("/v1/events?channel={c}", {"Last-Event-ID": "{c}=abc"}, "invalid_cursor"),
        ("/v1/events?channel={c}&after={c}%3D", {}, None),
        ("/v1/events", {}, None),
    ],
    ids=[
        "sse-header",
        "sse-query",
        "sse-unicode-digit",
        "multi-garbage",
        "multi-bad-id",
        "multi-empty-id",
        "multi-no-channel",
    ],
)
def test_bad_stream_cursors_and_requests_are_400_json(
    http: httpx.Client, baseline: str, path: str, headers: dict[str, str], code: str | None
) -> None:
    """A stream that cannot start answers a JSON 400 instead of an event stream."""
    hdrs = {k: v.replace("{c}", baseline) for k, v in headers.items()}
    r = http.get(path.replace("{c}", baseline), headers=hdrs)
    assert_error(r, 400, code)


# --- paths and methods --------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "path", ["/nope", "/v1/nope", "/v1/channels/x/nope", "/v1/channels/x/messages/1"]
)
def test_unknown_path_is_404_json(http: httpx.Client, path: str) -> None:
    assert_error(http.get(path), 404, "not_found")
    assert_error(http.post(path, json={"data": 1}), 404, "not_found")


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/channels/x/messages"),
        ("DELETE", "/v1/channels/x/messages"),
        ("PATCH", "/v1/channels/x"),
        ("POST", "/v1/channels/x"),
        ("DELETE", "/v1/channels"),
        ("POST", "/healthz"),
        ("DELETE", "/metrics"),
    ],
)
def test_wrong_method_is_405_json_with_allow(http: httpx.Client, method: str, path: str) -> None:
    r = http.request(method, path)
    assert_error(r, 405, "method_not_allowed")
    assert r.headers.get("allow"), "a 405 names the allowed methods"


# --- WebSocket publish frames -------------------------------------------------------------


@pytest.mark.timeout(20)
def test_bad_websocket_publish_frames_get_error_frames_and_the_socket_stays_usable(
    server: ServerProcess, http: httpx.Client
) -> None:
    """Each bad frame is answered with `{"type": "error", "ref", "error": {...}}` and
    publishes nothing; the connection then still publishes a good frame."""
    bad_frames = [
        ("not json", None, "bad_request"),
        (json.dumps({"nodata": 1, "ref": "r1"}), None, "invalid_body"),
        (json.dumps([1, 2]), None, "invalid_body"),
        (json.dumps({"data": 1, "event": "a\nb", "ref": "r3"}), "r3", "bad_request"),
        (json.dumps({"data": "x" * (LIMIT + 10), "ref": "r4"}), None, "payload_too_large"),
    ]
    ch = "ws.bad-frames"
    with ws_connect(f"{server.ws_url}/v1/channels/{ch}/ws") as ws:
        for frame, ref, code in bad_frames:
            ws.send(frame)
            reply = json.loads(ws.recv(timeout=5))
            assert reply["type"] == "error", (frame, reply)
            if ref is not None:
                assert reply["ref"] == ref
            assert reply["error"]["code"] == code, (frame, reply)
            assert reply["error"]["message"]
        ws.send(json.dumps({"data": "good", "ref": "ok"}))
        frames = [json.loads(ws.recv(timeout=5)) for _ in range(2)]
        ack = next(f for f in frames if f.get("type") == "ack")
        assert ack["ref"] == "ok"
    assert history(http, ch) == [(ack["id"], "good", None)]


@pytest.mark.timeout(20)
def test_websocket_publish_frame_with_invalid_utf8_gets_an_error_frame(
    server: ServerProcess, http: httpx.Client
) -> None:
    """A binary frame whose JSON string holds bytes that are not UTF-8 is a bad request
    like any other malformed frame: an error frame, and the socket stays usable."""
    ch = "ws.bad-utf8"
    with ws_connect(f"{server.ws_url}/v1/channels/{ch}/ws") as ws:
        ws.send(b'{"data": "\xff\xfe", "ref": "u"}')
        reply = json.loads(ws.recv(timeout=5))
        assert reply["type"] == "error", reply
        assert reply["error"]["code"] == "bad_request"
        assert reply["error"]["message"]
        ws.send(json.dumps({"data": "good", "ref": "ok"}))
        frames = [json.loads(ws.recv(timeout=5)) for _ in range(2)]
        ack = next(f for f in frames if f.get("type") == "ack")
        assert ack["ref"] == "ok"
    assert history(http, ch) == [(ack["id"], "good", None)]


def test_a_client_leaving_midway_through_its_body_is_not_an_error(
    server: ServerProcess, http: httpx.Client
) -> None:
    """A request whose client closes the connection before its body is complete changes
    nothing and is not logged as an unexpected server error."""
    host, port = server.url.removeprefix("http://").split(":")
    for path in ("/v1/channels/left-early/messages", "/v1/jobs", "/v1/workers/lease"):
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"da'.encode()
            )
    time.sleep(0.3)  # the server handles each disconnect on its own connection's task
    assert http.get("/healthz").status_code == 200
    assert history(http, "left-early") == []
    assert "unexpected error" not in server.log()
