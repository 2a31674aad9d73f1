"""Hostile HTTP/2 clients against a real server: raw sockets and the h2 library, driven
frame by frame.

A stalled stream is reset alone while its neighbours on the connection get everything; a
connection whose socket is never read has every stream cut and is dropped; rapid reset,
too many streams, oversized heads and bodies, bodies that never end, idle connections and
garbage frames each meet their limit, and other clients are served throughout.
"""

from __future__ import annotations

import json
import signal
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import httpx
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.test_channels_api import parse_frame, publish, wait_for
from tests.e2e.test_slow_consumer import Reader, rss_kib, server_end_state
from tidings.server.http.h2_protocol import MAX_STREAMS, RESET_BUDGET, RESET_PERIOD

PAYLOAD = 32 * 1024
BIG_WINDOW = 2**31 - 1
SettingCodes = h2.settings.SettingCodes


class Stream:
    """What one stream received: its status, body, end or reset, and its SSE events."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.body = bytearray()
        self.ended = False
        self.reset: ErrorCodes | int | None = None
        self.events: list[dict[str, str]] = []  # SSE frames with an id, parsed
        self._sse = bytearray()

    def feed(self, data: bytes) -> None:
        self.body += data
        self._sse += data
        while (end := self._sse.find(b"\n\n")) >= 0:
            fields = parse_frame(bytes(self._sse[: end + 2]))
            del self._sse[: end + 2]
            if "id" in fields:
                self.events.append(fields)

    def json(self) -> Any:
        return json.loads(self.body)


class _PlainEncoder(hpack.Encoder):
    """HPACK without Huffman coding: long header values encode at once."""

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        return super().encode(headers, huffman=False)


class _Unbounded(h2.connection.H2Connection):
    """A client connection that ignores the server's SETTINGS_MAX_CONCURRENT_STREAMS."""

    @property
    def open_outbound_streams(self) -> int:
        return 0


class H2Client:
    """One HTTP/2 connection on a raw socket (cleartext prior knowledge, or TLS with ALPN
    h2), read only when the test pumps it.

    Received data is acknowledged (flow control) except on the streams in `stalled`.
    `window` is the stream window the client advertises, `connection_window` its
    connection window.
    """

    def __init__(
        self,
        srv: ServerProcess,
        window: int = 65535,
        connection_window: int = 16 * 1024 * 1024,
        ignore_stream_limit: bool = False,
        receive_buffer: int | None = None,
    ) -> None:
        raw = socket.socket()
        if receive_buffer is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        raw.settimeout(10)
        raw.connect(("127.0.0.1", srv.port))
        self.tls = isinstance(srv.verify, ssl.SSLContext)
        if isinstance(srv.verify, ssl.SSLContext):
            cert = srv.extra_args[srv.extra_args.index("--ssl-certfile") + 1]
            context = ssl.create_default_context(cafile=cert)
            context.set_alpn_protocols(["h2", "http/1.1"])
            self.sock: socket.socket = context.wrap_socket(raw, server_hostname="127.0.0.1")
            assert self.sock.selected_alpn_protocol() == "h2"
        else:
            self.sock = raw
        kind = _Unbounded if ignore_stream_limit else h2.connection.H2Connection
        self.conn = kind(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.encoder = _PlainEncoder()
        self.conn.local_settings = h2.settings.Settings(
            client=True, initial_values={SettingCodes.INITIAL_WINDOW_SIZE: window}
        )
        self.conn.initiate_connection()
        if connection_window > 65535:
            self.conn.increment_flow_control_window(connection_window - 65535)
        self.streams: dict[int, Stream] = {}
        self.stalled: set[int] = set()
        self.goaways: list[h2.events.ConnectionTerminated] = []
        self.closed = False  # the server closed the socket
        self.remote_max_streams: int | None = None
        self.flush()

    @property
    def terminated(self) -> h2.events.ConnectionTerminated | None:
        """The first GOAWAY the server sent, if any."""
        return self.goaways[0] if self.goaways else None

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            self.sock.sendall(data)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(
        self,
        method: str,
        path: str,
        headers: Iterable[tuple[bytes, bytes]] = (),
        body: bytes | None = None,
        end: bool = True,
        send: bool = True,
    ) -> int:
        """Open a stream; with `end`, the request (and its body) ends on it."""
        sid: int = self.conn.get_next_available_stream_id()
        head = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"https" if self.tls else b"http"),
            (b":authority", b"127.0.0.1"),
            *headers,
        ]
        self.streams[sid] = Stream()
        self.conn.send_headers(sid, head, end_stream=end and body is None)
        if body is not None:
            self.send_body(sid, body, end)
        if send:
            self.flush()
        return sid

    def send_body(self, sid: int, body: bytes, end: bool) -> None:
        """Send `body` on `sid` as far as the windows allow; returns once all of it went."""
        sent = 0
        while True:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0 and sent < len(body):
                self.flush()
                self.pump(5)
                assert self.terminated is None and not self.closed
                if self.streams[sid].reset is not None:
                    return
                continue
            chunk = body[sent : sent + room]
            sent += len(chunk)
            self.conn.send_data(sid, chunk, end_stream=end and sent >= len(body))
            if sent >= len(body):
                return

    def sse(self, channel: str) -> int:
        return self.request(
            "GET",
            f"/v1/channels/{channel}/events?format=json",
            [(b"accept", b"text/event-stream")],
        )

    def pump(self, timeout: float) -> list[h2.events.Event]:
        """Read once (waiting up to `timeout`), handle what came, answer it."""
        if self.closed:
            return []
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            return []
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.conn.receive_data(data)
        for event in events:
            self._handle(event)
        if not self.closed:
            try:
                self.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.closed = True
        return events

    def _handle(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", 0)
        stream = self.streams.get(sid)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            stream.status = int(dict(event.headers or ())[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            if stream is not None:
                stream.feed(event.data or b"")
            if sid not in self.stalled:
                self.conn.acknowledge_received_data(event.flow_controlled_length or 0, sid)
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.ended = True
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            stream.reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaways.append(event)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            changed = event.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.remote_max_streams = changed.new_value

    def until(self, cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        """Pump until `cond()` holds; fail after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            assert left > 0, f"not in {timeout} s: {what}"
            if self.closed:
                assert cond(), f"the server closed the connection: {what}"
            self.pump(min(left, 0.5))

    def ready(self) -> H2Client:
        """Wait for the server's SETTINGS (and so its stream limit) and answer them."""
        self.until(lambda: self.remote_max_streams is not None, what="the server's SETTINGS")
        return self

    def get(self, path: str, timeout: float = 10.0) -> Stream:
        """A whole GET on a new stream of this connection."""
        sid = self.request("GET", path)
        stream = self.streams[sid]
        self.until(lambda: stream.ended or stream.reset is not None, timeout, f"GET {path}")
        return stream

    def serves(self) -> bool:
        """Whether a new stream on this connection is answered 200. A stream refused
        (REFUSED_STREAM: not processed, safe to retry, as clients do) while the server
        winds down streams just reset is asked again for a few seconds."""
        deadline = time.monotonic() + 5
        while True:
            stream = self.get("/healthz")
            if stream.reset != ErrorCodes.REFUSED_STREAM or time.monotonic() > deadline:
                return stream.status == 200
            time.sleep(0.1)

    def drain_to_close(self, timeout: float = 10.0) -> None:
        """Read until the server closes the connection."""
        self.until(lambda: self.closed, timeout, "the server to close the connection")

    def close(self) -> None:
        self.sock.close()


def data_of(n: int) -> str:
    return f"{n:05d}:" + "x" * (PAYLOAD - 6)


def sent_data(event: dict[str, str]) -> Any:
    return json.loads(event["data"])["data"]


def metric(srv: ServerProcess, name: str) -> float:
    """One value of the server's /metrics."""
    text = httpx.get(f"{srv.url}/metrics", timeout=10, verify=srv.verify).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exposed")


def sse_count(srv: ServerProcess, channel: str) -> int:
    """Live SSE subscribers of an existing channel."""
    r = httpx.get(f"{srv.url}/v1/channels/{channel}", timeout=10, verify=srv.verify)
    assert r.status_code == 200, r.text
    return int(r.json()["subscribers"]["sse"])


def healthy(srv: ServerProcess) -> bool:
    """A fresh HTTP/1.1 client and a fresh HTTP/2 connection are both served."""
    plain = httpx.get(f"{srv.url}/healthz", timeout=5, verify=srv.verify).status_code == 200
    client = H2Client(srv)
    try:
        return plain and client.serves()
    finally:
        client.close()


# -- 1. a stalled stream among healthy ones ----------------------------------------------


@pytest.fixture(params=["h2c", "tls"])
def stall_server(
    request: pytest.FixtureRequest,
    tidings_server: ServerFactory,
    self_signed: tuple[Path, Path],
) -> ServerProcess:
    args = ["--subscriber-buffer", str(2 * PAYLOAD), "--max-messages", "100"]
    if request.param == "tls":
        cert, key = self_signed
        args += ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]
    return tidings_server(args=args)


@pytest.mark.timeout(40)
def test_a_stalled_stream_is_reset_alone_while_its_neighbours_get_every_message(
    stall_server: ServerProcess,
) -> None:
    """Four SSE streams on one connection; the client never acknowledges the second's
    data, so its flow-control window fills. Once its unsent bytes pass
    --subscriber-buffer it gets RST_STREAM CANCEL; the other three receive every message
    in order, the connection stays open and serves new streams, and the cut is counted."""
    srv = stall_server
    ch = "shared"
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(base_url=srv.url, timeout=10, verify=srv.verify))
        publish(http, ch, "created")
        client = H2Client(srv).ready()
        stack.callback(client.close)
        sids = [client.sse(ch) for _ in range(4)]
        stuck = sids[1]
        client.stalled.add(stuck)
        streams = [client.streams[sid] for sid in sids]
        client.until(lambda: all(s.status == 200 for s in streams), what="four 200 heads")
        wait_for(lambda: sse_count(srv, ch) == 4)
        cut_before = metric(srv, "tidings_subscribers_cut_total")

        others = [client.streams[sid] for sid in sids if sid != stuck]
        sent: list[tuple[str, str]] = []

        def publish_one() -> None:
            data = data_of(len(sent))
            sent.append((publish(http, ch, data), data))
            client.until(
                lambda: all(len(s.events) == len(sent) for s in others),
                what=f"message {len(sent)} on every healthy stream",
            )

        # Each message is read by the healthy streams before the next: only the stalled
        # one falls behind, and it must be reset within a few windows' worth.
        while client.streams[stuck].reset is None:
            assert len(sent) < 32, "the stalled stream was never reset"
            publish_one()
        for _ in range(8):  # the neighbours go on after the reset
            publish_one()

        assert client.streams[stuck].reset == ErrorCodes.CANCEL
        for stream in others:
            assert [e["id"] for e in stream.events] == [i for i, _ in sent]
            assert [sent_data(e) for e in stream.events] == [d for _, d in sent]
            assert stream.reset is None and not stream.ended
        # What reached the stalled stream before its window filled is a gapless prefix.
        got = client.streams[stuck].events
        assert [e["id"] for e in got] == [i for i, _ in sent[: len(got)]]
        assert len(got) < len(sent)

        assert client.terminated is None and not client.closed
        assert client.serves()
        assert metric(srv, "tidings_subscribers_cut_total") == cut_before + 1
        wait_for(lambda: sse_count(srv, ch) == 3)


# -- 2. a connection whose socket is never read ------------------------------------------


class H2Reader(threading.Thread):
    """A well-behaved HTTP/2 subscriber in its own thread, until it has `count` events."""

    def __init__(self, srv: ServerProcess, channel: str, count: int) -> None:
        super().__init__(daemon=True)
        self.client = H2Client(srv, window=4 << 20, connection_window=64 << 20)
        self.client.ready()
        self.sid = self.client.sse(channel)
        self.stream = self.client.streams[self.sid]
        self.count = count
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.client.until(lambda: len(self.stream.events) >= self.count, 30, "all events")
        except BaseException as exc:
            self.error = exc
        finally:
            self.client.close()


@pytest.mark.timeout(60)
def test_a_connection_that_reads_nothing_has_its_streams_cut_and_is_dropped(
    tidings_server: ServerFactory,
) -> None:
    """Ten SSE streams on one connection whose socket the client never reads (windows
    wide open, so only TCP holds the server back): once the socket backs up, every one
    of its streams is cut at --subscriber-buffer, the connection is dropped after the
    keep-alive timeout, server memory stays bounded, and an HTTP/1.1 and an HTTP/2
    subscriber elsewhere get every message in order."""
    buffer = 8 * PAYLOAD
    srv = tidings_server(
        args=["--subscriber-buffer", str(buffer), "--max-messages", "20",
              "--keep-alive-timeout", "1"]
    )  # fmt: skip
    ch = "firehose"
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    count = (wmem_max + (4 << 20)) // PAYLOAD
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(base_url=srv.url, timeout=10))
        publish(http, ch, "created")
        stuck = H2Client(
            srv, window=BIG_WINDOW, connection_window=BIG_WINDOW, receive_buffer=4096
        ).ready()
        stack.callback(stuck.close)
        for _ in range(10):
            stuck.sse(ch)
        h1 = Reader(srv.port, f"/v1/channels/{ch}/events?format=json", count)
        h2r = H2Reader(srv, ch, count)
        wait_for(lambda: sse_count(srv, ch) == 12)
        cut_before = metric(srv, "tidings_subscribers_cut_total")
        rss_before = rss_kib(srv.pid)

        sent = []
        for i in range(count):
            data = data_of(i)
            sent.append((publish(http, ch, data), data))
        for reader, events in ((h1, None), (h2r, h2r.stream.events)):
            reader.join(30)
            assert not reader.is_alive(), "a healthy subscriber stalled"
            assert reader.error is None, reader.error
            if events is None:
                assert [str(i) for i in h1.ids] == [i for i, _ in sent]
                assert [json.loads(d)["data"] for d in h1.datas] == [d for _, d in sent]
            else:
                assert [e["id"] for e in events] == [i for i, _ in sent]
                assert [sent_data(e) for e in events] == [d for _, d in sent]
        rss_after = rss_kib(srv.pid)

        # Ten cuts, all of them the stuck connection's; nobody else's.
        assert metric(srv, "tidings_subscribers_cut_total") == cut_before + 10
        wait_for(lambda: sse_count(srv, ch) == 0)
        # Ten streams' copies of every message would be ten times the published volume.
        published_kib = count * PAYLOAD // 1024
        assert rss_after - rss_before < published_kib, (rss_before, rss_after)
        # With no stream left, the connection goes at the keep-alive timeout, unread
        # bytes and all.
        port = stuck.sock.getsockname()[1]
        wait_for(lambda: server_end_state(srv.port, port) in (None, "FIN_WAIT1", "CLOSE"), 5)
        assert healthy(srv)


# -- 3. rapid reset ----------------------------------------------------------------------


def open_and_reset(client: H2Client, n: int) -> None:
    """Open `n` SSE streams, each reset (CANCEL) right after its HEADERS, in one write
    each (a stream is open until reset, so every reset counts)."""
    for _ in range(n):
        sid = client.request("GET", "/v1/channels/reset/events", send=False)
        client.conn.reset_stream(sid, ErrorCodes.CANCEL)
        client.flush()


@pytest.mark.timeout(40)
def test_rapid_reset_past_the_budget_gets_goaway_enhance_your_calm(
    tidings_server: ServerFactory,
) -> None:
    """RESET_BUDGET streams opened and reset at once are tolerated (the connection still
    serves); the next reset within RESET_PERIOD gets GOAWAY ENHANCE_YOUR_CALM and the
    connection is closed. A subscriber on another connection is served throughout."""
    srv = tidings_server()
    ch = "bystander"
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(base_url=srv.url, timeout=10))
        publish(http, ch, "created")
        bystander = H2Client(srv).ready()
        stack.callback(bystander.close)
        watch = bystander.streams[bystander.sse(ch)]
        wait_for(lambda: sse_count(srv, ch) == 1)
        attacker = H2Client(srv).ready()
        stack.callback(attacker.close)

        started = time.monotonic()
        open_and_reset(attacker, RESET_BUDGET // 2)
        assert healthy(srv)
        open_and_reset(attacker, RESET_BUDGET - RESET_BUDGET // 2)
        assert attacker.serves(), "closed within the budget"
        assert not attacker.goaways
        open_and_reset(attacker, 1)
        attacker.drain_to_close()
        assert time.monotonic() - started < RESET_PERIOD, "too slow to test the budget"
        assert attacker.terminated is not None, "closed without a GOAWAY"
        assert attacker.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM

        first = publish(http, ch, "still here")
        bystander.until(lambda: len(watch.events) == 1, what="the bystander's event")
        assert watch.events[0]["id"] == first
        assert healthy(srv)


# -- 4. more streams than the server allows ----------------------------------------------


@pytest.mark.timeout(40)
def test_a_stream_past_max_concurrent_streams_closes_that_connection_alone(
    tidings_server: ServerFactory,
) -> None:
    """The server advertises MAX_STREAMS; a client that opens MAX_STREAMS SSE streams
    and then one more (ignoring the setting) gets a connection error: GOAWAY
    PROTOCOL_ERROR naming the last stream it took, the extra stream is never answered,
    and the MAX_STREAMS subscribers leave the hub. Under the limit a stream ended frees
    its place; other clients are served throughout."""
    srv = tidings_server()
    ch = "crowd"
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(base_url=srv.url, timeout=10))
        publish(http, ch, "created")
        client = H2Client(srv, ignore_stream_limit=True).ready()
        stack.callback(client.close)
        assert client.remote_max_streams == MAX_STREAMS
        sids = [client.sse(ch) for _ in range(MAX_STREAMS)]
        client.until(
            lambda: all(client.streams[s].status == 200 for s in sids), what="every stream's head"
        )
        wait_for(lambda: sse_count(srv, ch) == MAX_STREAMS)

        # A place given back (the client resets one stream) is a place to open another.
        client.conn.reset_stream(sids[0], ErrorCodes.CANCEL)
        client.flush()
        wait_for(lambda: sse_count(srv, ch) == MAX_STREAMS - 1)
        sids[0] = client.sse(ch)
        client.until(lambda: client.streams[sids[0]].status == 200, what="the replacement")
        assert not client.goaways

        extra = client.sse(ch)
        client.drain_to_close()
        assert client.terminated is not None, "closed without a GOAWAY"
        assert client.terminated.error_code == ErrorCodes.PROTOCOL_ERROR
        assert client.terminated.last_stream_id == sids[0]
        assert client.streams[extra].status is None
        wait_for(lambda: sse_count(srv, ch) == 0)
        assert healthy(srv)


# -- 5. oversized heads ------------------------------------------------------------------


def big_header(size: int) -> list[tuple[bytes, bytes]]:
    return [(b"x-big", b"a" * size)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("when", ["first-flight", "settled"])
def test_a_head_over_the_header_limit_gets_431_on_its_stream_and_the_connection_serves_on(
    tidings_server: ServerFactory, when: str
) -> None:
    """A head over --max-header-bytes gets 431 on its stream, whether it leaves with the
    preface (before the client acknowledged the server's SETTINGS, as browsers send
    theirs) or on a connection that has served already; a head under the limit is
    served, and so is the next stream."""
    srv = tidings_server(args=["--max-header-bytes", "16384"])
    client = H2Client(srv)
    try:
        if when == "settled":
            assert client.ready().serves()
        over = client.streams[client.request("GET", "/healthz", big_header(20_000))]
        client.until(lambda: over.ended, what="the 431")
        assert over.status == 431
        assert over.json()["error"]["code"] == "headers_too_large"
        under = client.streams[client.request("GET", "/healthz", big_header(12_000))]
        client.until(lambda: under.ended, what="the 12 kB head's answer")
        assert under.status == 200
        assert client.serves()
        assert not client.goaways
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_a_head_past_what_hpack_decodes_closes_that_connection_with_enhance_your_calm(
    tidings_server: ServerFactory,
) -> None:
    """A 200 kB head is refused by the HPACK decoder before the server's own check
    sees it: a connection error, GOAWAY ENHANCE_YOUR_CALM, the stream never answered.
    A new connection is served."""
    srv = tidings_server()
    client = H2Client(srv).ready()
    try:
        over = client.streams[client.request("GET", "/healthz", big_header(200_000))]
        client.drain_to_close()
        assert client.terminated is not None, "closed without a GOAWAY"
        assert client.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert over.status is None
    finally:
        client.close()
    assert healthy(srv)


@pytest.mark.timeout(30)
def test_a_head_under_a_raised_header_limit_is_served_over_http2_as_over_http11(
    tidings_server: ServerFactory,
) -> None:
    """With --max-header-bytes 100000, an 80 kB head is served over HTTP/1.1 and must be
    over HTTP/2 too: the server's limit, not the HPACK decoder's default, decides."""
    srv = tidings_server(args=["--max-header-bytes", "100000"])
    big = {"x-big": "a" * 80_000}
    assert httpx.get(f"{srv.url}/healthz", headers=big, timeout=5).status_code == 200
    client = H2Client(srv).ready()
    try:
        stream = client.streams[client.request("GET", "/healthz", big_header(80_000))]
        client.until(lambda: stream.ended or client.closed, what="the answer")
        assert client.terminated is None, f"connection closed: {client.terminated}"
        assert stream.status == 200
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_too_many_header_fields_get_431_and_a_long_path_414_on_their_stream(
    tidings_server: ServerFactory,
) -> None:
    """101 header fields get 431 and a path over the request-line limit 414, each on its
    own stream; 100 fields are served; the connection serves the next stream."""
    srv = tidings_server()
    client = H2Client(srv).ready()
    try:

        def fields(n: int) -> list[tuple[bytes, bytes]]:
            return [(b"x-%d" % i, b"1") for i in range(n)]

        hundred = client.streams[client.request("GET", "/healthz", fields(99))]  # + host
        client.until(lambda: hundred.ended, what="100 fields")
        assert hundred.status == 200
        many = client.streams[client.request("GET", "/healthz", fields(101))]
        client.until(lambda: many.ended, what="101 fields")
        assert many.status == 431
        long_path = client.get("/healthz?q=" + "a" * 9000)
        assert long_path.status == 414
        assert client.serves()
        assert not client.goaways
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_http2_limit_answers_carry_the_same_error_codes_as_http11(
    tidings_server: ServerFactory,
) -> None:
    """A client keys on the error code, whatever the transport: 414, 431 and 408 say the
    same over HTTP/2 as over HTTP/1.1."""
    srv = tidings_server(args=["--body-timeout", "1"])
    client = H2Client(srv)
    try:
        over = client.streams[client.request("GET", "/healthz", big_header(40_000))]
        client.until(lambda: over.ended, what="the 431")
        assert over.json()["error"]["code"] == "headers_too_large"
        fields = [(b"x-%d" % i, b"1") for i in range(101)]
        too_many = client.streams[client.request("GET", "/healthz", fields)]
        client.until(lambda: too_many.ended, what="101 fields")
        assert too_many.status == 431
        assert too_many.json()["error"]["code"] == "too_many_headers"
        long_path = client.get("/healthz?q=" + "a" * 9000)
        assert long_path.status == 414
        assert long_path.json()["error"]["code"] == "request_line_too_long"
        slow = client.streams[client.request("POST", "/v1/channels/c/messages", end=False)]
        client.until(lambda: slow.ended, what="the 408")
        assert slow.status == 408
        assert slow.json()["error"]["code"] == "request_timeout"
    finally:
        client.close()


# -- 6. timeouts -------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_body_that_never_ends_gets_408_after_the_body_timeout(
    tidings_server: ServerFactory,
) -> None:
    """A POST whose HEADERS leave the stream open and then nothing: 408 on that stream
    after --body-timeout, nothing is published, and the connection serves the next
    stream. A body that stops partway gets the same."""
    srv = tidings_server(args=["--body-timeout", "1"])
    ch = "slow"
    client = H2Client(srv).ready()
    try:
        json_type = [(b"content-type", b"application/json")]
        started = time.monotonic()
        empty = client.streams[
            client.request("POST", f"/v1/channels/{ch}/messages", json_type, end=False)
        ]
        partial = client.streams[
            client.request(
                "POST", f"/v1/channels/{ch}/messages", json_type, body=b'{"dat', end=False
            )
        ]
        client.until(lambda: empty.ended and partial.ended, what="both 408s")
        assert 0.9 < time.monotonic() - started < 5
        assert (empty.status, partial.status) == (408, 408)
        assert client.serves()
        assert not client.goaways
    finally:
        client.close()
    page = httpx.get(f"{srv.url}/v1/channels/{ch}/messages?after=0", timeout=5)
    assert page.status_code == 404 or page.json()["messages"] == []


@pytest.mark.timeout(30)
def test_an_idle_connection_gets_goaway_and_is_closed_after_the_keep_alive_timeout(
    tidings_server: ServerFactory,
) -> None:
    """A connection whose streams are done is told to go away (GOAWAY NO_ERROR) and
    closed after --keep-alive-timeout; one that never sent a request, after
    --header-timeout; one with an open stream stays."""
    srv = tidings_server(args=["--keep-alive-timeout", "1", "--header-timeout", "4"])
    ch = "quiet"
    httpx.post(f"{srv.url}/v1/channels/{ch}/messages", json={"data": 0}, timeout=5)
    used, silent, streaming = H2Client(srv).ready(), H2Client(srv).ready(), H2Client(srv)
    try:
        streaming.sse(ch)
        started = time.monotonic()
        assert used.serves()
        used.drain_to_close()
        used_after = time.monotonic() - started
        silent.drain_to_close()
        silent_after = time.monotonic() - started
        # The sweep runs once a second; a loaded machine adds its delay.
        assert 0.9 < used_after < 3.5, used_after
        assert 3.9 < silent_after < 8, silent_after
        for client in (used, silent):
            assert client.terminated is not None, "closed without a GOAWAY"
            assert client.terminated.error_code == ErrorCodes.NO_ERROR
        streaming.pump(0.5)
        assert streaming.terminated is None and not streaming.closed
        assert streaming.serves()
    finally:
        for client in (used, silent, streaming):
            client.close()


# -- 7. garbage --------------------------------------------------------------------------


def frame_head(length: int, kind: int, stream_id: int, flags: int = 0) -> bytes:
    """A raw HTTP/2 frame header: 24-bit length, type, flags, 31-bit stream id."""
    return length.to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big")


def frame(kind: int, stream_id: int, payload: bytes, flags: int = 0) -> bytes:
    return frame_head(len(payload), kind, stream_id, flags) + payload


# Invalid frames, and the GOAWAY code each must get (RFC 9113).
GARBAGE = {
    "settings-of-bad-length": (frame(0x4, 0, b"abc"), {ErrorCodes.FRAME_SIZE_ERROR}),
    "data-on-stream-0": (frame(0x0, 0, b"abc"), {ErrorCodes.PROTOCOL_ERROR}),
    "window-update-of-zero": (frame(0x8, 0, b"\x00" * 4), {ErrorCodes.PROTOCOL_ERROR}),
    "headers-hpack-cannot-decode": (
        frame(0x1, 1, b"\xff\xff\xff\xff", flags=0x5),
        {ErrorCodes.COMPRESSION_ERROR, ErrorCodes.PROTOCOL_ERROR},
    ),
}


@pytest.mark.timeout(30)
def test_garbage_after_the_preface_gets_goaway_and_nothing_else_is_hurt(
    tidings_server: ServerFactory,
) -> None:
    """Each kind of invalid frame after the preface closes its connection with a GOAWAY
    saying what was wrong; a subscriber on another HTTP/2 connection receives every
    message meanwhile, and new clients are served."""
    srv = tidings_server()
    ch = "garbage"
    with ExitStack() as stack:
        http = stack.enter_context(httpx.Client(base_url=srv.url, timeout=10))
        publish(http, ch, "created")
        bystander = H2Client(srv).ready()
        stack.callback(bystander.close)
        watch = bystander.streams[bystander.sse(ch)]
        bystander.until(lambda: watch.status == 200, what="the bystander's head")
        sent = []
        for name, (garbage, codes) in GARBAGE.items():
            bad = H2Client(srv).ready()
            stack.callback(bad.close)
            bad.send_raw(garbage)
            bad.drain_to_close()
            assert bad.terminated is not None, f"{name}: closed without a GOAWAY"
            assert bad.terminated.error_code in codes, (name, bad.terminated)
            sent.append(publish(http, ch, name))
            bystander.until(lambda: len(watch.events) == len(sent), what="the bystander")
        assert [e["id"] for e in watch.events] == sent
        assert healthy(srv)


@pytest.mark.timeout(30)
def test_a_frame_announcing_more_than_the_max_frame_size_is_refused_at_its_header(
    tidings_server: ServerFactory,
) -> None:
    """A frame header that announces 16 MiB (over the 16 KiB SETTINGS_MAX_FRAME_SIZE;
    or text where frames belong, read as such a header) closes the connection with
    GOAWAY FRAME_SIZE_ERROR at once, without the server waiting for, and holding, the
    megabytes announced."""
    srv = tidings_server()
    for garbage in (
        frame_head(2**24 - 16, 0x0, 1) + b"\x00" * 1024,  # DATA announcing 16 MiB
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ):
        client = H2Client(srv).ready()
        try:
            client.send_raw(garbage)
            started = time.monotonic()
            client.drain_to_close(timeout=9)
            # Well before the header timeout (10 s), when a waiting server would close.
            assert time.monotonic() - started < 5, "the server waited for the frame"
            assert client.terminated is not None, "closed without a GOAWAY"
            assert client.terminated.error_code == ErrorCodes.FRAME_SIZE_ERROR
        finally:
            client.close()
    assert healthy(srv)


# -- 8. a body over the size limit -------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "no-length"])
def test_a_body_over_the_size_limit_gets_413_and_the_connection_serves_on(
    tidings_server: ServerFactory, declared: bool
) -> None:
    """A message body over --max-message-bytes (declared by content-length or not) gets
    413 on its stream, is not stored, and the next stream of the connection publishes."""
    srv = tidings_server(args=["--max-message-bytes", "65536"])
    ch = "big"
    client = H2Client(srv).ready()
    try:
        body = json.dumps({"data": "x" * 200_000}).encode()
        headers = [(b"content-type", b"application/json")]
        if declared:
            headers.append((b"content-length", str(len(body)).encode()))
        big = client.streams[client.request("POST", f"/v1/channels/{ch}/messages", headers, body)]
        client.until(lambda: big.ended, what="the 413")
        assert big.status == 413
        assert big.json()["error"]["code"] == "payload_too_large"
        small = client.streams[
            client.request(
                "POST",
                f"/v1/channels/{ch}/messages",
                [(b"content-type", b"application/json")],
                json.dumps({"data": "small"}).encode(),
            )
        ]
        client.until(lambda: small.ended, what="the small publish")
        assert small.status == 201, bytes(small.body)
        assert not client.goaways
    finally:
        client.close()
    page = httpx.get(f"{srv.url}/v1/channels/{ch}/messages?after=0", timeout=5).json()
    assert [m["data"] for m in page["messages"]] == ["small"]


@pytest.mark.timeout(60)
def test_bodies_answered_unread_give_the_connection_window_back(
    tidings_server: ServerFactory,
) -> None:
    """Six 200 KB bodies answered 413 without being read, more than the server's 1 MiB
    connection window in all: the window is given back each time, so a later publish on
    the same connection goes through instead of waiting for window forever."""
    srv = tidings_server(args=["--max-message-bytes", "1000"])
    client = H2Client(srv).ready()
    try:
        body = b"x" * 200_000
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
        for _ in range(6):
            big = client.streams[client.request("POST", "/v1/channels/w/messages", headers, body)]
            client.until(lambda big=big: big.ended or big.reset is not None, what="the 413")
            assert big.status == 413
        small = client.streams[
            client.request(
                "POST", "/v1/channels/w/messages", [(b"content-type", b"application/json")],
                b'{"data": 1}',
            )
        ]  # fmt: skip
        client.until(lambda: small.ended, timeout=10, what="the small publish")
        assert small.status == 201
    finally:
        client.close()


@pytest.mark.timeout(30)
def test_an_encoded_path_is_decoded_as_over_http11(tidings_server: ServerFactory) -> None:
    """`user%3A42` is the channel `user:42` over HTTP/2 as over HTTP/1.1."""
    srv = tidings_server()
    client = H2Client(srv).ready()
    try:
        sid = client.request(
            "POST", "/v1/channels/user%3A42/messages", [(b"content-type", b"application/json")],
            b'{"data": "h2"}',
        )  # fmt: skip
        stream = client.streams[sid]
        client.until(lambda: stream.ended, what="the publish")
        assert stream.status == 201, bytes(stream.body)
        assert stream.json()["channel"] == "user:42"
    finally:
        client.close()
    page = httpx.get(f"{srv.url}/v1/channels/user:42/messages?after=0", timeout=5).json()
    assert [m["data"] for m in page["messages"]] == ["h2"]


@pytest.mark.timeout(60)
def test_reset_long_polls_still_count_against_the_stream_limit(
    tidings_server: ServerFactory,
) -> None:
    """Long polls opened and reset at once (under the reset budget) close for h2 but their
    work may go on: a connection never has more than MAX_STREAMS of them at once."""
    srv = tidings_server()
    client = H2Client(srv, ignore_stream_limit=True).ready()
    try:
        for i in range(400):
            sid = client.request("GET", f"/v1/channels/r{i}/messages?wait=30", send=False)
            client.conn.reset_stream(sid, ErrorCodes.CANCEL)
            if i % 50 == 49:
                client.flush()
                client.pump(0.05)
        client.flush()
        client.pump(1.0)
        assert not client.goaways
        text = httpx.get(f"{srv.url}/metrics", timeout=10).text
        parked = next(
            float(line.split()[1])
            for line in text.splitlines()
            if line.startswith('tidings_open_streams{transport="longpoll"}')
        )
        assert parked <= MAX_STREAMS, parked
    finally:
        client.close()
    assert healthy(srv)


@pytest.mark.timeout(60)
def test_a_request_in_flight_at_shutdown_is_answered(tidings_server: ServerFactory) -> None:
    """SIGTERM while a POST's body is still to come: the client is told GOAWAY (no new
    streams), may still send that body, and gets its answer before the server exits.
    (h2 as a client closes its own state on a GOAWAY, so the rest is raw frames.)"""
    srv = tidings_server()
    client = H2Client(srv).ready()
    try:
        sid = client.request(
            "POST", "/v1/channels/bye/messages", [(b"content-type", b"application/json")],
            end=False,
        )  # fmt: skip
        time.sleep(0.5)  # the server has read the request's head (no answer tells it)
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGTERM)
        client.until(lambda: bool(client.goaways), what="the GOAWAY")
        assert client.goaways[0].error_code == 0
        data = DataFrame(sid, data=b'{"data": "last"}', flags=["END_STREAM"])
        client.send_raw(data.serialize())
        received = b""
        client.sock.settimeout(10)
        try:
            while chunk := client.sock.recv(1 << 16):
                received += chunk
        except ConnectionResetError:
            pass  # the answer, if it came, was read before the reset
        # The answer's body (a DATA frame's payload is sent as is), and no second GOAWAY
        # (type 7) saying the client's frame was an error.
        assert b'"channel":"bye"' in received, received
        assert b"\x07\x00\x00\x00\x00\x00" not in received, received
    finally:
        client.close()
    assert srv.stop() in (0, -signal.SIGTERM)
