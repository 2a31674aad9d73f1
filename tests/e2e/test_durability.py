"""Durability on the embedded SQLite store: an acknowledged publish survives the process.

A 201 means the message's transaction has committed, so it must be there, in order, after
a graceful stop (SIGTERM) and after a crash (SIGKILL). Each test runs a real server on a
temporary SQLite file and restarts it on the same port and file. Graceful shutdown also
ends live streams with a reason instead of cutting them.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerProcess
from tests.e2e.test_channels_api import RawSSE, parse_frame, publish, wait_for

SIGTERM_EXIT = (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'durable.db'}"


def read_all(srv: ServerProcess, channel: str) -> list[dict[str, Any]]:
    """Every retained message of a channel, oldest first, by paging short polls."""
    out: list[dict[str, Any]] = []
    after = "0"
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        while True:
            r = http.get(f"/v1/channels/{channel}/messages", params={"after": after, "limit": 1000})
            assert r.status_code == 200, r.text
            page = r.json()
            assert page["reset"] is False
            out += page["messages"]
            if not page["messages"]:
                return out
            after = page["next"]


class Publisher(threading.Thread):
    """Publishes `{"w": worker, "n": i}` until told to stop or `count` are acknowledged,
    recording every (id, data) the server acknowledged with 201."""

    def __init__(self, url: str, channel: str, worker: int, count: int | None) -> None:
        super().__init__(daemon=True)
        self.url, self.channel, self.worker, self.count = url, channel, worker, count
        self.acked: list[tuple[str, dict[str, int]]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            with httpx.Client(base_url=self.url, timeout=10) as http:
                while not self.stop.is_set() and (self.count is None or n < self.count):
                    data = {"w": self.worker, "n": n}
                    try:
                        r = http.post(f"/v1/channels/{self.channel}/messages", json={"data": data})
                    except httpx.TransportError:
                        if self.count is None:  # the server was killed under us: expected
                            return
                        raise
                    if r.status_code == 201:
                        self.acked.append((r.json()["id"], data))
                    elif self.count is not None:
                        self.error = AssertionError(f"publish answered {r.status_code}: {r.text}")
                        return
                    n += 1
        except BaseException as exc:
            self.error = exc


def check_survivors(stored: list[dict[str, Any]], acked: list[tuple[str, dict[str, int]]]) -> None:
    """Every acknowledged id is stored with its data; ids strictly increase with no gap."""
    ids = [int(m["id"]) for m in stored]
    assert ids == sorted(set(ids)), "ids must strictly increase"
    assert ids == list(range(1, len(ids) + 1)), "no gaps in the stored ids"
    by_id = {m["id"]: m["data"] for m in stored}
    missing = [(i, d) for i, d in acked if i not in by_id]
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
    wrong = [(i, d, by_id[i]) for i, d in acked if by_id[i] != d]
    assert not wrong, f"acknowledged messages with other data: {wrong[:3]}"
    # Each publisher's own messages keep the order it published them in.
    for worker in {d["w"] for _, d in acked}:
        mine = [m["data"]["n"] for m in stored if m["data"]["w"] == worker]
        assert mine == sorted(mine), f"publisher {worker} reordered"


@pytest.mark.timeout(60)
def test_every_acknowledged_message_is_there_in_order_after_sigterm_and_restart(
    tidings_server: Any, tmp_path: Path
) -> None:
    """Text and JSON messages, with and without events, read back identically after a
    graceful stop, and ids continue after the restart instead of starting over."""
    srv = tidings_server(store=sqlite_url(tmp_path))
    ch = "ledger"
    sent: list[tuple[str, Any, str | None]] = []
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for i in range(60):
            if i % 3 == 0:
                r = http.post(
                    f"/v1/channels/{ch}/messages",
                    content=f"text {i}",
                    headers={"content-type": "text/plain"},
                )
                assert r.status_code == 201, r.text
                sent.append((r.json()["id"], f"text {i}", None))
            else:
                event = "tick" if i % 3 == 1 else None
                data = {"i": i, "nested": [i, {"s": "é✓"}]}
                sent.append((publish(http, ch, data, event), data, event))

    assert srv.stop(signal.SIGTERM) in SIGTERM_EXIT
    srv.start()

    stored = read_all(srv, ch)
    assert [(m["id"], m["data"], m["event"]) for m in stored] == sent
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        info = http.get(f"/v1/channels/{ch}").json()
        assert info["last_id"] == sent[-1][0]
        assert info["messages"] == len(sent)
        after_restart = publish(http, ch, "after restart")
    assert int(after_restart) == int(sent[-1][0]) + 1


@pytest.mark.timeout(60)
def test_200_concurrent_publishes_all_survive_sigkill_and_restart(
    tidings_server: Any, tmp_path: Path
) -> None:
    """200 publishes from 8 threads at once, then SIGKILL (no shutdown at all): after the
    restart every acknowledged id is there with its data, ids strictly increasing."""
    srv = tidings_server(store=sqlite_url(tmp_path))
    ch = "crash.all-acked"
    publishers = [Publisher(srv.url, ch, w, 25) for w in range(8)]
    for p in publishers:
        p.start()
    for p in publishers:
        p.join(40)
        assert not p.is_alive()
        assert p.error is None, p.error
    acked = [a for p in publishers for a in p.acked]
    assert len(acked) == 200
    assert len({i for i, _ in acked}) == 200

    srv.kill()
    srv.start()

    stored = read_all(srv, ch)
    check_survivors(stored, acked)
    assert len(stored) == 200


@pytest.mark.timeout(60)
def test_sigkill_in_the_middle_of_publishing_loses_no_acknowledged_message(
    tidings_server: Any, tmp_path: Path
) -> None:
    """SIGKILL while 8 publishers are mid-flight: whatever was acknowledged survives; what
    was in flight may or may not, but the log has no holes and ids continue after it."""
    srv = tidings_server(store=sqlite_url(tmp_path))
    ch = "crash.in-flight"
    publishers = [Publisher(srv.url, ch, w, None) for w in range(8)]
    for p in publishers:
        p.start()
    wait_for(lambda: sum(len(p.acked) for p in publishers) >= 150, timeout=30)
    srv.kill()
    for p in publishers:
        p.stop.set()
        p.join(15)
        assert not p.is_alive()
        assert p.error is None, p.error
    acked = [a for p in publishers for a in p.acked]

    srv.start()

    stored = read_all(srv, ch)
    check_survivors(stored, acked)
    assert len(stored) >= len(acked) >= 150
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert int(publish(http, ch, {"w": -1, "n": 0})) == len(stored) + 1


@pytest.mark.timeout(30)
def test_sigterm_ends_sse_streams_with_a_close_event_and_answers_parked_long_polls(
    tidings_server: Any, tmp_path: Path
) -> None:
    """On SIGTERM an SSE stream gets `event: close` and a cleanly finished response, a
    parked long poll is answered, and the server exits within a few seconds."""
    srv = tidings_server(store=sqlite_url(tmp_path))
    ch = "shutdown.sse"
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        first = publish(http, ch, "before")
    sse = RawSSE(srv.port, f"/v1/channels/{ch}/events?after=0")
    poll_answer: list[httpx.Response] = []

    def long_poll() -> None:
        url = f"{srv.url}/v1/channels/{ch}/messages?after={first}&wait=25"
        poll_answer.append(httpx.get(url, timeout=30))

    poller = threading.Thread(target=long_poll, daemon=True)
    try:
        assert sse.event() == f"id: {first}\ndata: before\n\n".encode()
        poller.start()
        wait_for(lambda: subscribers(srv, ch) == {"sse": 1, "ws": 0, "longpoll": 1})

        started = time.monotonic()
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)

        close = parse_frame(sse.event(timeout=5))
        assert close["event"] == "close"
        assert "id" not in close  # a control event does not move the cursor
        body = json.loads(close["data"])
        assert body["type"] == "close"
        assert body["reason"]
        with pytest.raises(EOFError):
            sse.frame(timeout=5)
        assert sse.ended, "the response must finish with its final chunk, not be cut"

        poller.join(10)
        assert not poller.is_alive(), "the parked long poll was not answered"
        (answer,) = poll_answer
        assert answer.status_code in (200, 503), answer.text
        if answer.status_code == 200:
            assert answer.json()["messages"] == []
        assert srv.stop(signal.SIGTERM, timeout=10) in SIGTERM_EXIT
        assert time.monotonic() - started < 8
    finally:
        sse.close()


@pytest.mark.timeout(30)
def test_sigterm_tells_websocket_subscribers_why_they_are_closed(
    tidings_server: Any, tmp_path: Path
) -> None:
    """On SIGTERM a WebSocket subscriber gets a `close` control frame with the reason,
    then a going-away close, and the server exits within a few seconds."""
    srv = tidings_server(store=sqlite_url(tmp_path))
    ch = "shutdown.ws"
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        first = publish(http, ch, "before")
    with ws_connect(f"{srv.ws_url}/v1/channels/{ch}/ws?after=0") as ws:
        assert json.loads(ws.recv(timeout=5))["id"] == first
        wait_for(lambda: subscribers(srv, ch)["ws"] == 1)

        started = time.monotonic()
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)

        frames, closed = frames_until_closed(ws)
        assert [f.get("type") for f in frames] == ["close"], frames
        assert frames[0]["reason"]
        assert closed.rcvd is not None
        assert closed.rcvd.code in (1001, 1012)  # going away / service restart
    assert srv.stop(signal.SIGTERM, timeout=10) in SIGTERM_EXIT
    assert time.monotonic() - started < 8


def frames_until_closed(ws: Any) -> tuple[list[dict[str, Any]], ConnectionClosed]:
    """Every JSON frame a WebSocket receives until it closes, and how it closed."""
    frames: list[dict[str, Any]] = []
    while True:
        try:
            frames.append(json.loads(ws.recv(timeout=5)))
        except ConnectionClosed as exc:
            return frames, exc


def subscribers(srv: ServerProcess, channel: str) -> dict[str, int]:
    r = httpx.get(f"{srv.url}/v1/channels/{channel}", timeout=5)
    assert r.status_code == 200, r.text
    subs: dict[str, int] = r.json()["subscribers"]
    return subs
