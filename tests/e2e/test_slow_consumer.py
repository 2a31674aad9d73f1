"""Slow consumers and expired cursors: nothing is lost, and nothing is silently skipped.

A subscriber that stops reading is cut once its unsent bytes pass --subscriber-buffer,
while the others keep receiving and the server's memory stays bounded; it resumes from
the last id it parsed and gets the rest. A cursor older than the retained history gets
an explicit reset before the replay, on every transport.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.e2e.test_channels_api import RawSSE, parse_frame, publish, wait_for

BUFFER = 65536
PAYLOAD = 4096


def messages_to_overflow() -> int:
    """Enough ~4 KiB messages to fill every buffer between the server and a stuck reader.

    The reader's kernel buffer holds tcp_rmem's default (it grows only when read); the
    server's send buffer may grow to tcp_wmem's maximum; past them come asyncio's write
    buffer and the subscriber's own 64 KiB backlog. Publish 1 MiB more than all that.
    """
    rmem_default = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[1])
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return max(400, (rmem_default + wmem_max + 4 * BUFFER + (1 << 20)) // PAYLOAD)


def rss_kib(pid: int) -> int:
    """Resident set size of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


class Reader(threading.Thread):
    """An SSE subscriber that keeps reading until it has `count` messages."""

    def __init__(self, port: int, path: str, count: int) -> None:
        super().__init__(daemon=True)
        self.sse = RawSSE(port, path)
        self.count = count
        self.ids: list[int] = []
        self.datas: list[str] = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            while len(self.ids) < self.count:
                fields = parse_frame(self.sse.event(timeout=20))
                self.ids.append(int(fields["id"]))
                self.datas.append(fields["data"])
        except BaseException as exc:
            self.error = exc
        finally:
            self.sse.close()


TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


def server_end_state(server_port: int, client_port: int) -> str | None:
    """TCP state of the server's end of a loopback connection (None: the socket is gone)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        ports = (int(local.split(":")[1], 16), int(remote.split(":")[1], 16))
        if ports == (server_port, client_port):
            return TCP_STATES.get(state, state)
    return None


def state_once_settled(server_port: int, client_port: int, seconds: float) -> str | None:
    """The server end's state as soon as it leaves ESTABLISHED, or after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        state = server_end_state(server_port, client_port)
        if state != "ESTABLISHED" or time.monotonic() > deadline:
            return state
        time.sleep(0.05)


def drain(sock: socket.socket) -> tuple[bytes, str]:
    """Read a socket to its end; the bytes, and how it ended ("eof" or "reset")."""
    sock.settimeout(10)
    chunks = []
    while True:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            return b"".join(chunks), "reset"
        if not data:
            return b"".join(chunks), "eof"
        chunks.append(data)


def complete_events(raw: bytes) -> list[dict[str, str]]:
    """The events fully received in a raw (chunked) HTTP response; a torn tail is dropped."""
    pos = raw.index(b"\r\n\r\n") + 4
    text = bytearray()
    while (eol := raw.find(b"\r\n", pos)) >= 0:
        size = int(raw[pos:eol].split(b";")[0], 16)
        text += raw[eol + 2 : eol + 2 + size]  # a torn last chunk: what arrived of it
        if size == 0 or len(raw) < eol + 4 + size:
            break
        pos = eol + 4 + size
    frames = bytes(text).split(b"\n\n")[:-1]  # the last piece is torn or empty
    return [f for f in (parse_frame(fr + b"\n\n") for fr in frames) if "id" in f]


@pytest.mark.timeout(60)
def test_a_stuck_subscriber_is_cut_others_keep_receiving_and_it_resumes_losing_nothing(
    tidings_server: Any,
) -> None:
    """With --subscriber-buffer 64 KiB, a subscriber that never reads is cut (and
    disconnected) while three readers get every one of a few MiB of messages in order;
    server memory stays bounded; the cut one resumes from the last event it parsed and
    gets exactly the rest."""
    srv = tidings_server(args=["--subscriber-buffer", str(BUFFER)])
    ch = "firehose"
    count = messages_to_overflow()
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(base_url=srv.url, timeout=10))
        publish(http, ch, "created")  # the channel exists: "from now" is after this id
        path = f"/v1/channels/{ch}/events"

        # The stuck subscriber: it sends its request, then never reads.
        stuck = stack.enter_context(socket.create_connection(("127.0.0.1", srv.port)))
        stuck.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        readers = [Reader(srv.port, path, count) for _ in range(3)]
        wait_for(lambda: http.get(f"/v1/channels/{ch}").json()["subscribers"]["sse"] == 4)
        cut_before = metric(srv.url, "tidings_subscribers_cut_total")
        rss_before = rss_kib(srv.pid)

        sent = []
        for i in range(count):
            data = f"{i:05d}:" + "x" * (PAYLOAD - 6)
            sent.append((int(publish(http, ch, data)), data))

        for r in readers:
            r.join(30)
            assert not r.is_alive(), "a reader stalled"
            assert r.error is None, r.error
            assert r.ids == [i for i, _ in sent], "a reader missed or reordered messages"
            assert r.datas == [d for _, d in sent]
        rss_after = rss_kib(srv.pid)

        assert metric(srv.url, "tidings_subscribers_cut_total") >= cut_before + 1
        # The readers have left; the stuck one must not linger in the hub either.
        wait_for(lambda: http.get(f"/v1/channels/{ch}").json()["subscribers"]["sse"] == 0)
        assert rss_after - rss_before < 50 * 1024, (rss_before, rss_after)

        # Cut means disconnected: the server lets go of the connection (whatever the
        # kernel still holds may be flushed) without waiting for the client to read.
        stuck_port = stuck.getsockname()[1]
        assert server_end_state(srv.port, stuck_port) is not None, "connection not found"
        state_after_cut = state_once_settled(srv.port, stuck_port, 5.0)

        # The stuck subscriber finds its connection ended, partway through.
        raw, how = drain(stuck)
        assert how in ("eof", "reset")
        got = complete_events(raw)
        got_ids = [int(e["id"]) for e in got]
        first_id = sent[0][0]
        assert got_ids == list(range(first_id, first_id + len(got_ids))), "got a gapped prefix"
        assert len(got_ids) < count, "it was never cut"

        # It resumes from the last event it parsed and gets the rest: nothing lost.
        cursor = str(got_ids[-1]) if got_ids else str(first_id - 1)
        rest = RawSSE(srv.port, path, {"Last-Event-ID": cursor})
        try:
            resumed = [parse_frame(rest.event()) for _ in range(count - len(got_ids))]
        finally:
            rest.close()
        all_ids = got_ids + [int(e["id"]) for e in resumed]
        assert all_ids == [i for i, _ in sent]
        assert [e["data"] for e in got + resumed] == [d for _, d in sent]

    assert state_after_cut != "ESTABLISHED", (
        "the server kept the cut subscriber's connection open (still ESTABLISHED 5 s after"
        " the cut, holding its unsent bytes) until the client read them"
    )


@pytest.mark.timeout(40)
def test_a_cursor_older_than_retention_gets_a_reset_first_on_every_transport(
    tidings_server: Any, store_url: str
) -> None:
    """With --max-messages 5 and 20 published, cursor 2 is gone: poll says reset: true,
    SSE sends `event: reset` and WebSocket a reset frame, each before ids 16-20."""
    srv = tidings_server(store=store_url, args=["--max-messages", "5"])
    ch = "short-memory"
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        ids = [publish(http, ch, f"m{i}") for i in range(1, 21)]
        assert ids == [str(i) for i in range(1, 21)]
        kept = ids[-5:]

        page = http.get(f"/v1/channels/{ch}/messages", params={"after": "2"}).json()
        assert page["reset"] is True
        assert [m["id"] for m in page["messages"]] == kept
        assert [m["data"] for m in page["messages"]] == [f"m{i}" for i in range(16, 21)]
        assert page["next"] == "20"

        # A long poll with the stale cursor answers at once with the reset, not after wait.
        page = http.get(f"/v1/channels/{ch}/messages", params={"after": "2", "wait": 5}).json()
        assert page["reset"] is True
        assert [m["id"] for m in page["messages"]] == kept

        # The reset is a property of the cursor, not of the channel: 15 is still contiguous.
        page = http.get(f"/v1/channels/{ch}/messages", params={"after": "15"}).json()
        assert page["reset"] is False
        assert [m["id"] for m in page["messages"]] == kept

    sse = RawSSE(srv.port, f"/v1/channels/{ch}/events", {"Last-Event-ID": "2"})
    try:
        reset = parse_frame(sse.event())
        assert reset["event"] == "reset"
        assert "id" not in reset  # does not move the cursor
        body = json.loads(reset["data"])
        assert body["type"] == "reset"
        assert body["channel"] == ch
        assert body["first"] == "16"
        assert body["reason"]
        for i in kept:
            assert sse.event() == f"id: {i}\ndata: m{i}\n\n".encode()
    finally:
        sse.close()

    with ws_connect(f"{srv.ws_url}/v1/channels/{ch}/ws?after=2") as ws:
        first = json.loads(ws.recv(timeout=5))
        assert first["type"] == "reset"
        assert first["channel"] == ch
        assert first["first"] == "16"
        frames = [json.loads(ws.recv(timeout=5)) for _ in kept]
        assert [f["id"] for f in frames] == kept
        assert all("type" not in f for f in frames)
