"""The channel HTTP API end to end: publish, short poll, long poll, SSE, WebSocket, admin.

The tests share one real server per store (`server`, module scope; each test uses its
own channels) on a free loopback port, and talk to it with real clients: httpx for
request/response, the `websockets` client, and a bare socket (`RawSSE`) wherever the
exact bytes of the SSE stream matter.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerProcess
from tidings.protocol.codecs import parse_time

Json = dict[str, Any]


class RawSSE:
    """An SSE client on a bare socket: the exact bytes of each frame, de-chunked.

    Nothing is parsed away, so tests can compare whole frames byte for byte.
    """

    def __init__(self, port: int, path: str, headers: dict[str, str] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._raw = bytearray()
        self._body = bytearray()
        self.ended = False  # the final zero-length chunk arrived
        while b"\r\n\r\n" not in self._raw:
            if not self._recv():
                raise EOFError(f"connection closed before the response head: {self._raw!r}")
        head, _, rest = bytes(self._raw).partition(b"\r\n\r\n")
        self._raw = bytearray(rest)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split()[1])
        self.headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        assert self.headers.get("transfer-encoding") == "chunked", self.headers
        self._dechunk()

    def _recv(self) -> bool:
        data = self.sock.recv(65536)
        self._raw += data
        return bool(data)

    def _dechunk(self) -> None:
        while not self.ended:
            eol = self._raw.find(b"\r\n")
            if eol < 0:
                return
            size = int(bytes(self._raw[:eol]).split(b";")[0], 16)
            if len(self._raw) < eol + 2 + size + 2:
                return
            assert self._raw[eol + 2 + size : eol + 4 + size] == b"\r\n", "bad chunk framing"
            self._body += self._raw[eol + 2 : eol + 2 + size]
            del self._raw[: eol + 4 + size]
            if size == 0:
                self.ended = True

    def frame(self, timeout: float = 10.0) -> bytes:
        """The next complete frame, through its blank line; EOFError if the stream ends first."""
        self.sock.settimeout(timeout)
        while (end := self._body.find(b"\n\n")) < 0:
            if self.ended:
                raise EOFError(f"stream ended; unparsed tail {bytes(self._body)!r}")
            if not self._recv():
                raise EOFError(f"connection closed; unparsed tail {bytes(self._body)!r}")
            self._dechunk()
        out = bytes(self._body[: end + 2])
        del self._body[: end + 2]
        return out

    def event(self, timeout: float = 10.0) -> bytes:
        """The next frame that is an event, skipping keep-alives (comments, `retry:` hints)."""
        while True:
            frame = self.frame(timeout)
            if not is_keepalive(frame):
                return frame

    def assert_quiet(self, seconds: float) -> None:
        """No event arrives within `seconds`."""
        try:
            extra = self.event(timeout=seconds)
        except TimeoutError:
            return
        pytest.fail(f"unexpected frame {extra!r}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module", params=["memory", "sqlite", "redis"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per store for this module's tests, which each use their own channels."""
    tmp = tmp_path_factory.mktemp(f"channels-{request.param}")
    store = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp / 'tidings.db'}",
        "redis": f"{request.getfixturevalue('redis_proc').url}?prefix={tmp.name}:",
    }[request.param]
    srv = ServerProcess(store, tmp / "server.log", [], {})
    srv.start()
    yield srv
    srv.kill()


def is_keepalive(frame: bytes) -> bool:
    """A frame of only comment and `retry:` lines: no event for EventSource."""
    lines = frame.decode().split("\n")[:-2]
    return all(line.startswith((":", "retry:")) for line in lines)


def publish(http: httpx.Client, channel: str, data: Any, event: str | None = None) -> str:
    """Publish a JSON value; returns the acknowledged id."""
    body: Json = {"data": data} if event is None else {"data": data, "event": event}
    r = http.post(f"/v1/channels/{channel}/messages", json=body)
    assert r.status_code == 201, r.text
    ack = r.json()
    assert ack["channel"] == channel
    return str(ack["id"])


def publish_text(http: httpx.Client, channel: str, text: str) -> str:
    """Publish a raw text body (not JSON); returns the acknowledged id."""
    r = http.post(
        f"/v1/channels/{channel}/messages",
        content=text.encode(),
        headers={"content-type": "text/plain; charset=utf-8"},
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def in_thread(fn: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


# --- the first Must-show ---------------------------------------------------------


@pytest.mark.timeout(40)
def test_one_channel_is_served_by_poll_long_poll_sse_and_websocket(
    server: ServerProcess,
) -> None:
    """Three publishes are read back in order by short poll; a long poll waits for the
    fourth; an idle long poll ends empty after its wait; SSE resumes from Last-Event-ID;
    WebSocket resumes from ?after=."""
    srv = server
    ch = "news.must-show"
    with httpx.Client(base_url=srv.url, timeout=20) as http:
        first = publish_text(http, ch, "one")
        second = publish(http, ch, {"n": 2, "tags": ["a", "b"]}, event="update")
        third = publish_text(http, ch, "three")
        assert int(first) < int(second) < int(third)

        # Short poll from the oldest retained.
        r = http.get(f"/v1/channels/{ch}/messages", params={"after": "0"})
        assert r.status_code == 200
        page = r.json()
        assert [m["id"] for m in page["messages"]] == [first, second, third]
        assert [m["event"] for m in page["messages"]] == [None, "update", None]
        second_data = {"n": 2, "tags": ["a", "b"]}
        assert [m["data"] for m in page["messages"]] == ["one", second_data, "three"]
        assert all(m["channel"] == ch and m["time"] for m in page["messages"])
        assert set(page["messages"][0]) == {"id", "channel", "event", "data", "time"}
        assert page["next"] == third
        assert page["reset"] is False

        # Long poll: stays open until the fourth is published, then answers with it alone.
        fourth_box: list[str] = []

        def publish_fourth() -> None:
            time.sleep(0.5)
            with httpx.Client(base_url=srv.url, timeout=10) as other:
                fourth_box.append(publish_text(other, ch, "four"))

        t = in_thread(publish_fourth)
        started = time.monotonic()
        r = http.get(f"/v1/channels/{ch}/messages", params={"after": third, "wait": "10"})
        elapsed = time.monotonic() - started
        t.join(10)
        assert r.status_code == 200
        (fourth,) = fourth_box
        page = r.json()
        assert [(m["id"], m["data"]) for m in page["messages"]] == [(fourth, "four")]
        assert page["next"] == fourth
        assert page["reset"] is False
        assert 0.4 <= elapsed < 5, elapsed

        # Long poll with nothing new: an empty list after about a second.
        started = time.monotonic()
        r = http.get(f"/v1/channels/{ch}/messages", params={"after": fourth, "wait": "1"})
        elapsed = time.monotonic() - started
        assert r.status_code == 200
        assert r.json() == {"messages": [], "next": fourth, "reset": False}
        assert 0.9 <= elapsed < 3, elapsed

        # SSE resumed with Last-Event-ID: the second to fourth, with ids and event names.
        sse = RawSSE(srv.port, f"/v1/channels/{ch}/events", {"Last-Event-ID": first})
        try:
            assert sse.status == 200
            second_json = '{"n":2,"tags":["a","b"]}'  # compact JSON, keys in publish order
            assert sse.event() == f"id: {second}\nevent: update\ndata: {second_json}\n\n".encode()
            assert sse.event() == f"id: {third}\ndata: three\n\n".encode()
            assert sse.event() == f"id: {fourth}\ndata: four\n\n".encode()
            sse.assert_quiet(0.3)

            # WebSocket resumed with ?after=<third>: the fourth as one JSON text frame.
            with ws_connect(f"{srv.ws_url}/v1/channels/{ch}/ws?after={third}") as ws:
                raw = ws.recv(timeout=5)
                assert isinstance(raw, str)
                msg = json.loads(raw)
                assert set(msg) == {"id", "channel", "event", "data", "time"}
                assert (msg["id"], msg["channel"], msg["event"], msg["data"]) == (
                    fourth,
                    ch,
                    None,
                    "four",
                )
                with pytest.raises(TimeoutError):
                    ws.recv(timeout=0.3)

                # Both streams are live after their replay: a fifth reaches each once.
                fifth = publish(http, ch, [5], event="late")
                assert sse.event() == f"id: {fifth}\nevent: late\ndata: [5]\n\n".encode()
                live = json.loads(ws.recv(timeout=5))
                assert (live["id"], live["event"], live["data"]) == (fifth, "late", [5])
        finally:
            sse.close()


# --- more of the channel API --------------------------------------------------------------


@pytest.mark.timeout(30)
def test_sse_answers_with_stream_headers_retry_hint_and_heartbeats(tidings_server: Any) -> None:
    """An SSE answer is text/event-stream, not cached, not buffered by proxies; idle
    streams get a comment every --heartbeat seconds, and a `retry:` reconnect hint."""
    srv = tidings_server(args=["--heartbeat", "0.3"])
    sse = RawSSE(srv.port, "/v1/channels/hb/events")
    try:
        assert sse.status == 200
        assert sse.headers["content-type"].startswith("text/event-stream")
        assert sse.headers["cache-control"] == "no-cache"
        assert sse.headers["x-accel-buffering"] == "no"
        started = time.monotonic()
        beats = [sse.frame(timeout=3) for _ in range(3)]
        assert time.monotonic() - started < 2.5
        for beat in beats:
            assert is_keepalive(beat), beat
            assert beat.startswith(b":"), beat
        lines = b"".join(beats).decode().split("\n")
        assert any(line.startswith("retry: ") and line[7:].isdigit() for line in lines), beats
    finally:
        sse.close()


@pytest.mark.timeout(30)
def test_sse_without_cursor_gets_only_new_messages_and_after_param_resumes(
    server: ServerProcess,
) -> None:
    """No cursor means "from now"; `?after=` resumes like Last-Event-ID."""
    srv = server
    ch = "fresh"
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        old = publish(http, ch, "old")
        sse = RawSSE(srv.port, f"/v1/channels/{ch}/events")
        resumed = RawSSE(srv.port, f"/v1/channels/{ch}/events?after=0")
        try:
            assert resumed.event() == f"id: {old}\ndata: old\n\n".encode()
            wait_for(lambda: stats(srv, ch)["sse"] == 2)
            new = publish(http, ch, "multi\nline")
            expected = f"id: {new}\ndata: multi\ndata: line\n\n".encode()
            assert sse.event() == expected
            assert resumed.event() == expected
        finally:
            sse.close()
            resumed.close()


@pytest.mark.timeout(30)
def test_sse_format_json_carries_whole_typed_messages_and_text_stays_plain(
    server: ServerProcess,
) -> None:
    """By default a text message's data is itself (what a plain EventSource shows), so the
    string "1" and the number 1 look alike; `?format=json` sends the whole message as
    JSON, as WebSocket frames do, with its type, event and time; another format is a 400."""
    srv = server
    ch = "typed"
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        bad = http.get(f"/v1/channels/{ch}/events?format=xml")
        assert bad.status_code == 400, bad.text
        assert "format=json" in bad.json()["error"]["message"]
        ids = [publish(http, ch, "1"), publish(http, ch, 1, event="n")]
        plain = RawSSE(srv.port, f"/v1/channels/{ch}/events?after=0")
        typed = RawSSE(srv.port, f"/v1/channels/{ch}/events?after=0&format=json")
        try:
            assert [plain.event(), plain.event()] == [
                f"id: {ids[0]}\ndata: 1\n\n".encode(),
                f"id: {ids[1]}\nevent: n\ndata: 1\n\n".encode(),
            ]
            frames = [parse_frame(typed.event()) for _ in ids]
            assert [f["id"] for f in frames] == ids
            assert [f.get("event") for f in frames] == [None, "n"]
            bodies = [json.loads(f["data"]) for f in frames]
            assert [b["data"] for b in bodies] == ["1", 1]
            assert [b["id"] for b in bodies] == ids
            assert [b["event"] for b in bodies] == [None, "n"]
            assert all(b["channel"] == ch for b in bodies)
            assert all(abs(parse_time(b["time"]) - time.time()) < 60 for b in bodies)
            live = publish(http, ch, {"k": [1]})  # live fan-out, encoded once per kind
            assert parse_frame(plain.event())["data"] == '{"k":[1]}'
            assert json.loads(parse_frame(typed.event())["data"])["data"] == {"k": [1]}
            assert live
        finally:
            plain.close()
            typed.close()


@pytest.mark.timeout(40)
def test_every_transport_without_a_cursor_starts_from_now(server: ServerProcess) -> None:
    """Without `after`, a short poll answers no messages and the channel's last id as
    `next`, a long poll waits for the next message (not the history), as SSE and WebSocket
    do; `after=0` still reads from the oldest kept."""
    srv = server
    ch = "from-now"
    with httpx.Client(base_url=srv.url, timeout=20) as http:
        assert http.get(f"/v1/channels/{ch}/messages").json() == {
            "messages": [],
            "next": "0",
            "reset": False,
        }
        old = [publish(http, ch, "old"), publish(http, ch, "older")]
        short = http.get(f"/v1/channels/{ch}/messages")
        assert short.status_code == 200, short.text
        assert short.json() == {"messages": [], "next": old[-1], "reset": False}
        empty = http.get(f"/v1/channels/{ch}/messages", params={"after": ""})
        assert empty.json() == short.json()
        history = http.get(f"/v1/channels/{ch}/messages", params={"after": "0"}).json()
        assert [m["id"] for m in history["messages"]] == old

        got: list[Json] = []
        poller = in_thread(
            lambda: got.append(http.get(f"/v1/channels/{ch}/messages", params={"wait": 10}).json())
        )
        sse = RawSSE(srv.port, f"/v1/channels/{ch}/events")
        try:
            with ws_connect(f"{srv.ws_url}/v1/channels/{ch}/ws") as ws:
                wait_for(lambda: stats(srv, ch) == {"sse": 1, "ws": 1, "longpoll": 1})
                new = publish(http, ch, "new")
                poller.join(10)
                assert [(m["id"], m["data"]) for m in got[0]["messages"]] == [(new, "new")]
                assert got[0]["next"] == new
                assert sse.event() == f"id: {new}\ndata: new\n\n".encode()
                assert json.loads(ws.recv(timeout=5))["id"] == new
        finally:
            sse.close()
        bad = http.get(f"/v1/channels/{ch}/messages", params={"after": "x"})
        assert bad.status_code == 400
        assert bad.json()["error"]["code"] == "invalid_cursor"


@pytest.mark.timeout(30)
def test_channel_created_is_an_rfc3339_time_in_json_and_msgpack(server: ServerProcess) -> None:
    """`created` of a channel's stats and of the list is RFC 3339 UTC like every other
    time on the wire, in both codecs, and close to when the channel was made."""
    ch = "created.rfc3339"
    with httpx.Client(base_url=server.url, timeout=10) as http:
        before = time.time()
        publish(http, ch, "x")
        info = http.get(f"/v1/channels/{ch}").json()
        created = info["created"]
        assert isinstance(created, str)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", created), created
        assert before - 2 <= parse_time(created) <= time.time() + 2
        listed = http.get("/v1/channels", params={"prefix": ch}).json()["channels"]
        assert [c["created"] for c in listed] == [created]
        mp = {"Accept": "application/msgpack"}
        for path in (f"/v1/channels/{ch}", f"/v1/channels?prefix={ch}"):
            r = http.get(path, headers=mp)
            assert r.headers["content-type"] == "application/msgpack"
            body = msgspec.msgpack.decode(r.content)
            got = body["created"] if "created" in body else body["channels"][0]["created"]
            assert got == created


@pytest.mark.timeout(30)
def test_multiplexed_sse_carries_a_composite_cursor_that_resumes(
    server: ServerProcess,
) -> None:
    """/v1/events?channel=a&channel=b sends every message of both with an id holding the
    position in each channel, in the URL's order; that id as Last-Event-ID (or ?after=)
    resumes both."""
    srv = server
    a, b = "mx.a", "mx.b"
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        # Both channels exist, so "from now" is exactly the ids below.
        publish(http, a, "a0")
        b0 = publish(http, b, "b0")
        sse = RawSSE(srv.port, f"/v1/events?channel={a}&channel={b}")
        try:
            wait_for(lambda: stats(srv, a)["sse"] == 1 and stats(srv, b)["sse"] == 1)
            a1 = publish(http, a, {"k": "a1"}, event="ev")
            b1 = publish(http, b, "b1")
            a2 = publish(http, a, "a2")
            frames = [parse_frame(sse.event()) for _ in range(3)]
        finally:
            sse.close()
        assert [f["id"] for f in frames] == [f"~{a1}.{b0}", f"~{a1}.{b1}", f"~{a2}.{b1}"]
        assert [f.get("event") for f in frames] == ["ev", None, None]
        bodies = [json.loads(f["data"]) for f in frames]
        assert [(m["channel"], m["id"], m["data"], m["event"]) for m in bodies] == [
            (a, a1, {"k": "a1"}, "ev"),
            (b, b1, "b1", None),
            (a, a2, "a2", None),
        ]
        assert all(set(m) == {"id", "channel", "event", "data", "time"} for m in bodies)

        # Resume from the first frame's cursor: what followed it in each channel, nothing twice.
        for how in ("header", "query"):
            cursor = frames[0]["id"]
            if how == "header":
                again = RawSSE(
                    srv.port, f"/v1/events?channel={a}&channel={b}", {"Last-Event-ID": cursor}
                )
            else:
                again = RawSSE(
                    srv.port, f"/v1/events?channel={a}&channel={b}&after={quote(cursor, safe='')}"
                )
            try:
                got = [parse_frame(again.event()) for _ in range(2)]
                again.assert_quiet(0.3)
            finally:
                again.close()
            seen = sorted((m["channel"], m["id"]) for m in (json.loads(f["data"]) for f in got))
            assert seen == sorted([(b, b1), (a, a2)]), how
            assert got[-1]["id"] == f"~{a2}.{b1}", how


def parse_frame(frame: bytes) -> dict[str, str]:
    """SSE fields of one frame (multi-line data joined with newlines)."""
    out: dict[str, str] = {}
    for line in frame.decode().split("\n"):
        if not line or line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        out[name] = out[name] + "\n" + value if name == "data" and name in out else value
    return out


@pytest.mark.timeout(30)
def test_websocket_client_publishes_and_gets_an_ack_with_the_id(
    server: ServerProcess,
) -> None:
    """A `{"data", "event", "ref"}` frame is published; the ack names its ref and id, the
    message reaches the sender's own stream and other subscribers, and pollers see it."""
    srv = server
    ch = "chat.room-1"
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        created = publish(http, ch, "created")
    with (
        ws_connect(f"{srv.ws_url}/v1/channels/{ch}/ws") as sender,
        ws_connect(f"{srv.ws_url}/v1/channels/{ch}/ws") as listener,
    ):
        # Both are registered once the first publish lands; wait until the server counts them.
        wait_for(lambda: stats(srv, ch)["ws"] == 2)
        sender.send(json.dumps({"data": {"text": "hi"}, "event": "say", "ref": "r-1"}))
        frames = [json.loads(sender.recv(timeout=5)) for _ in range(2)]
        ack = next(f for f in frames if f.get("type") == "ack")
        own = next(f for f in frames if "type" not in f)
        assert ack["ref"] == "r-1"
        assert ack["channel"] == ch
        assert ack["time"]
        assert (own["id"], own["event"], own["data"]) == (ack["id"], "say", {"text": "hi"})
        heard = json.loads(listener.recv(timeout=5))
        assert heard == own

        sender.send(json.dumps({"data": "second", "ref": 2}))
        frames = [json.loads(sender.recv(timeout=5)) for _ in range(2)]
        ack2 = next(f for f in frames if f.get("type") == "ack")
        assert ack2["ref"] == 2
        assert int(ack2["id"]) > int(ack["id"])

    page = httpx.get(f"{srv.url}/v1/channels/{ch}/messages?after=0", timeout=10).json()
    assert [(m["id"], m["data"], m["event"]) for m in page["messages"]] == [
        (created, "created", None),
        (ack["id"], {"text": "hi"}, "say"),
        (ack2["id"], "second", None),
    ]


def stats(srv: Any, channel: str) -> dict[str, int]:
    """Live subscribers by transport of an existing channel."""
    r = httpx.get(f"{srv.url}/v1/channels/{channel}", timeout=10)
    assert r.status_code == 200, r.text
    subs: dict[str, int] = r.json()["subscribers"]
    return subs


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.mark.timeout(30)
def test_idempotency_key_repeat_returns_the_first_id_and_stores_one_message(
    server: ServerProcess,
) -> None:
    """The same Idempotency-Key twice gives the first message's id back, and only one
    message is stored; another key is another message."""
    srv = server
    ch = "orders"
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        url = f"/v1/channels/{ch}/messages"
        r1 = http.post(url, json={"data": {"order": 7}}, headers={"Idempotency-Key": "k-7"})
        r2 = http.post(url, json={"data": {"order": 7}}, headers={"Idempotency-Key": "k-7"})
        r3 = http.post(url, json={"data": {"order": 8}}, headers={"Idempotency-Key": "k-8"})
        assert r1.status_code == 201, r1.text
        assert r2.status_code in (200, 201), r2.text
        assert r3.status_code == 201, r3.text
        assert r2.json()["id"] == r1.json()["id"]
        assert r3.json()["id"] != r1.json()["id"]
        page = http.get(url, params={"after": "0"}).json()
        assert [(m["id"], m["data"]) for m in page["messages"]] == [
            (r1.json()["id"], {"order": 7}),
            (r3.json()["id"], {"order": 8}),
        ]
        assert http.get(f"/v1/channels/{ch}").json()["messages"] == 2


@pytest.mark.timeout(30)
def test_channel_stats_list_and_delete_which_ends_live_streams(
    server: ServerProcess,
) -> None:
    """Stats show the last id, count and live subscribers by transport; the list names
    every channel; DELETE answers 204, ends live SSE streams with `event: close`, and the
    channel is gone."""
    srv = server
    ch, other = "stats.one", "stats.two"
    stack = ExitStack()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.get(f"/v1/channels/{ch}").status_code == 404
        ids = [publish(http, ch, i) for i in range(3)]
        publish(http, other, "x")

        sse = RawSSE(srv.port, f"/v1/channels/{ch}/events")
        ws = stack.enter_context(ws_connect(f"{srv.ws_url}/v1/channels/{ch}/ws"))
        poller = in_thread(
            lambda: http.get(f"/v1/channels/{ch}/messages", params={"after": ids[-1], "wait": 2})
        )
        try:
            wait_for(lambda: stats(srv, ch) == {"sse": 1, "ws": 1, "longpoll": 1})
            info = http.get(f"/v1/channels/{ch}").json()
            assert info["name"] == ch
            assert info["last_id"] == ids[-1]
            assert info["first_id"] == ids[0]
            assert info["messages"] == 3
            assert info["retention"]["max_messages"] > 0

            listing = http.get("/v1/channels").json()
            names = [c["name"] for c in listing["channels"]]
            assert ch in names
            assert other in names
            prefixed = http.get("/v1/channels", params={"prefix": "stats.t"}).json()
            assert [c["name"] for c in prefixed["channels"]] == [other]

            r = http.delete(f"/v1/channels/{ch}")
            assert r.status_code == 204
            assert r.content == b""
            close = parse_frame(sse.event(timeout=5))
            assert close["event"] == "close"
            assert "id" not in close
            assert json.loads(close["data"])["type"] == "close"
            with pytest.raises(EOFError):
                sse.event(timeout=5)
            assert sse.ended  # the response finished cleanly (final chunk), not cut
            ws_close = json.loads(ws.recv(timeout=5))
            assert ws_close["type"] == "close"
        finally:
            sse.close()
            stack.close()
            poller.join(15)

        r = http.get(f"/v1/channels/{ch}")
        assert r.status_code == 404
        assert r.json()["error"]["code"] == "not_found"
        assert http.delete(f"/v1/channels/{ch}").status_code == 404
        assert ch not in [c["name"] for c in http.get("/v1/channels").json()["channels"]]
        assert http.get(f"/v1/channels/{other}").status_code == 200


def scrape(srv: ServerProcess) -> dict[str, float]:
    """/metrics as {sample name with labels: value}."""
    r = httpx.get(f"{srv.url}/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in r.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.mark.timeout(30)
def test_metrics_expose_publish_delivery_streams_cuts_and_latency(server: ServerProcess) -> None:
    """/metrics is Prometheus text: messages published and delivered, open streams by
    transport, subscribers cut, and request latency by route."""
    ch = "metered"
    sse_gauge = 'tidings_open_streams{transport="sse"}'
    with httpx.Client(base_url=server.url, timeout=10) as http:
        publish(http, ch, "created")
        before = scrape(server)
        sse = RawSSE(server.port, f"/v1/channels/{ch}/events")
        try:
            wait_for(lambda: scrape(server)[sse_gauge] == before[sse_gauge] + 1)
            for i in range(3):
                publish(http, ch, i)
            for _ in range(3):
                sse.event()
            after = scrape(server)
        finally:
            sse.close()
    published = "tidings_messages_published_total"
    delivered = "tidings_messages_delivered_total"
    assert after[published] - before[published] == 3
    assert after[delivered] - before[delivered] >= 3
    assert after["tidings_subscribers_cut_total"] == before["tidings_subscribers_cut_total"]
    assert 'tidings_open_streams{transport="ws"}' in after
    assert 'tidings_open_streams{transport="longpoll"}' in after
    assert any(
        k.startswith("tidings_request_duration_seconds_count")
        and 'route="/v1/channels/{channel}/messages"' in k
        and 'method="POST"' in k
        and 'status="201"' in k
        for k in after
    ), sorted(after)
    wait_for(lambda: scrape(server)[sse_gauge] == before[sse_gauge])


@pytest.mark.timeout(30)
def test_health_ready_openapi_and_docs(server: ServerProcess) -> None:
    """/healthz and /readyz answer, /openapi.json documents every channel path, /docs renders."""
    srv = server
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.get("/healthz").json()["status"] == "ok"
        ready = http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ready"
        doc = http.get("/openapi.json")
        assert doc.status_code == 200
        spec = doc.json()
        assert spec["openapi"].startswith("3.")
        paths = spec["paths"]
        for path, methods in {
            "/v1/channels": {"get"},
            "/v1/channels/{channel}": {"get", "delete"},
            "/v1/channels/{channel}/messages": {"get", "post"},
            "/v1/channels/{channel}/events": {"get"},
            "/v1/channels/{channel}/ws": {"get"},
            "/v1/events": {"get"},
        }.items():
            assert path in paths, path
            assert methods <= set(paths[path]), (path, set(paths[path]))
        docs = http.get("/docs")
        assert docs.status_code == 200
        assert docs.headers["content-type"].startswith("text/html")
        assert "openapi.json" in docs.text
