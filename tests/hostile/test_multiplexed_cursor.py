"""A bounded multiplexed cursor: `GET /v1/events?channel=a&channel=b…` and its resumes.

Each event of a multiplexed stream carried `channel=id,channel=id,…` as its `id:`, so 300
channels with 200-character names made a 61 KB `id:` line per event, and resuming sent
it back as a 61 KB `Last-Event-ID`. The channels are named by the URL, which EventSource
resends unchanged on reconnect, so the cursor now holds only the position in each channel,
in the URL's order: `~` then the ids joined by `.` (an empty position: no message yet),
at most 19 bytes a channel whatever the names. The stream's channel count is capped
(`--max-stream-channels`, default 100), which bounds the cursor: 1,900 bytes by default.

A cursor ahead of a channel's newest message (the channel was deleted and recreated since)
was reset with the reason "older than the retained history"; the reason now says ahead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tidings.protocol.messages import RESET_AHEAD, RESET_BEHIND

pytestmark = pytest.mark.timeout(60)

# The longest id the stores give (18 decimal digits) and its separator.
BYTES_PER_CHANNEL = 19
WIDE = 300  # channels of the wide server's streams


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One memory-store server whose streams may follow `WIDE` channels."""
    tmp = tmp_path_factory.mktemp("multiplexed")
    srv = ServerProcess("memory://", tmp / "server.log", ["--max-stream-channels", str(WIDE)], {})
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def events_path(channels: list[str], after: str | None = None) -> str:
    query = [("channel", c) for c in channels] + ([("after", after)] if after else [])
    return "/v1/events?" + urlencode(query)


def publish(http: httpx.Client, channel: str, data: object) -> str:
    r = http.post(f"/v1/channels/{channel}/messages", json={"data": data})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


class Stream:
    """An SSE response read with httpx, one event (its fields) at a time.

    Comments (heartbeats) and frames without data (the `retry:` hint) are skipped. The
    response head arrives once the server has registered the stream, so what is published
    after `Stream(...)` returns is delivered live.
    """

    def __init__(self, http: httpx.Client, path: str, headers: dict[str, str] | None = None):
        self._cm = http.stream("GET", path, headers=headers)
        self.response = self._cm.__enter__()
        assert self.response.status_code == 200, self.response.read()
        self._lines = self.response.iter_lines()

    def event(self) -> dict[str, str]:
        fields: dict[str, str] = {}
        for line in self._lines:
            if not line:
                if "data" in fields:
                    return fields
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                fields[name] = f"{fields[name]}\n{value}" if name in fields else value
        raise EOFError("the stream ended")

    def message(self) -> tuple[str, str, object, str]:
        """(channel, id, data, the event's cursor) of the next message."""
        ev = self.event()
        assert ev.get("event") is None, ev
        body = json.loads(ev["data"])
        return body["channel"], body["id"], body["data"], ev["id"]

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


def cursor_of(*ids: str | None) -> str:
    return "~" + ".".join("" if i in (None, "0") else i for i in ids)


# -- the cap ------------------------------------------------------------------------------


def test_a_stream_of_more_channels_than_the_cap_is_refused_with_a_400_naming_the_flag(
    tidings_server: ServerFactory,
) -> None:
    """Default cap 100: 101 distinct channels answer a JSON 400 that says the cap and how to
    raise it; 100 channels (each named twice) are served."""
    srv = tidings_server()
    names = [f"cap.{i}" for i in range(101)]
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        r = http.get(events_path(names))
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "bad_request"
        assert "at most 100 channels" in error["message"]
        assert "names 101" in error["message"]
        assert "--max-stream-channels" in error["message"]

        stream = Stream(http, events_path(names[:100] * 2))
        stream.close()


def test_channels_named_twice_are_followed_once_and_the_cursor_counts_them_once(
    http: httpx.Client,
) -> None:
    a, b = "dup.a", "dup.b"
    a1 = publish(http, a, "a1")
    stream = Stream(http, events_path([a, b, a, b, a], after=cursor_of(None, None)))
    try:
        assert stream.message() == (a, a1, "a1", cursor_of(a1, None))
        b1 = publish(http, b, "b1")
        assert stream.message() == (b, b1, "b1", cursor_of(a1, b1))
    finally:
        stream.close()


# -- the size of the cursor ---------------------------------------------------------------


@pytest.mark.timeout(120)
def test_the_id_line_of_a_300_channel_stream_stays_a_few_bytes_a_channel(
    http: httpx.Client,
) -> None:
    """300 channels (as many as fit a request line with their names): every replayed and
    live event's id is the positions alone, far under 2 KB, and names no channel."""
    names = [f"wide.cursor.{i:04d}" for i in range(WIDE)]
    ids = [publish(http, name, i) for i, name in enumerate(names)]
    bound = 1 + BYTES_PER_CHANNEL * WIDE
    stream = Stream(http, events_path(names), {"Last-Event-ID": cursor_of(*[None] * WIDE)})
    try:
        seen: list[str | None] = [None] * WIDE
        for i, name in enumerate(names):  # the replay: each channel's message, in URL order
            channel, msg_id, data, cursor = stream.message()
            assert (channel, msg_id, data) == (name, ids[i], i)
            seen[i] = msg_id
            assert cursor == cursor_of(*seen)
            assert len(cursor) <= bound
        assert len(cursor) == 1 + 2 * WIDE - 1 < 2048
        assert "wide" not in cursor

        mid = WIDE // 2
        live = publish(http, names[mid], "live")  # live delivery builds its cursor apart
        channel, msg_id, _, cursor = stream.message()
        assert (channel, msg_id) == (names[mid], live)
        assert cursor == cursor_of(*ids[:mid], live, *ids[mid + 1 :])
    finally:
        stream.close()


def test_the_cursor_does_not_grow_with_channel_names_of_200_characters(
    http: httpx.Client,
) -> None:
    """35 channels of 200-character names (a full request line): the named cursor was over
    7 KB per event; the cursor is now 70 bytes."""
    names = [f"{i:03d}".ljust(200, "n") for i in range(35)]
    first = [publish(http, name, "x") for name in names]
    stream = Stream(http, events_path(names))
    try:
        last = publish(http, names[-1], "y")
        channel, _, data, cursor = stream.message()
        assert (channel, data) == (names[-1], "y")
        assert cursor == cursor_of(*first[:-1], last)
        assert len(cursor) == 70
    finally:
        stream.close()


# -- resuming -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["last-event-id", "after"])
def test_resuming_with_the_compact_cursor_delivers_exactly_the_missed_messages(
    http: httpx.Client, how: str
) -> None:
    """A stream of a, b, c cut after its first event resumes with every message it missed,
    each once, then live messages: nothing before the cursor comes again."""
    a, b, c = (f"resume.{how}.{x}" for x in "abc")
    publish(http, a, "a0")
    b0 = publish(http, b, "b0")
    names = [a, b, c]
    stream = Stream(http, events_path(names))
    try:
        a1 = publish(http, a, "a1")
        c1 = publish(http, c, "c1")
        b1 = publish(http, b, "b1")
        first = stream.message()
        assert first == (a, a1, "a1", cursor_of(a1, b0, None))
        assert stream.message()[:3] == (c, c1, "c1")
        assert stream.message()[:3] == (b, b1, "b1")
    finally:
        stream.close()
    a2 = publish(http, a, "a2")  # while disconnected

    cursor = first[3]
    if how == "after":
        again = Stream(http, events_path(names, after=cursor))
    else:
        again = Stream(http, events_path(names), {"Last-Event-ID": cursor})
    try:
        got = [again.message() for _ in range(3)]
        assert sorted(m[:3] for m in got) == sorted([(a, a2, "a2"), (b, b1, "b1"), (c, c1, "c1")])
        assert got[-1][3] == cursor_of(a2, b1, c1)
        sentinel = publish(http, b, "sentinel")  # the next event: no duplicate came before it
        assert again.message() == (b, sentinel, "sentinel", cursor_of(a2, sentinel, c1))
    finally:
        again.close()


@pytest.mark.parametrize(
    ("cursor", "says"),
    [
        ("~1.2", "holds 2 positions but the stream follows 3 channels"),
        ("~1.2.3.4", "holds 4 positions but the stream follows 3 channels"),
        ("~" + "." * 5000, "holds 5001 positions but the stream follows 3 channels"),
        ("~1.x.3", "'x' is not a message id"),
        ("~1.-2.3", "'-2' is not a message id"),
        ("~1.2.1234567890123456789", "is not a message id"),
        ("bad.a=1,oops", "malformed cursor 'bad.a=1,oops'"),
    ],
    ids=["short", "long", "huge", "letter", "negative", "19-digits", "unmarked"],
)
def test_a_malformed_or_mismatched_cursor_answers_400_invalid_cursor(
    http: httpx.Client, cursor: str, says: str
) -> None:
    names = ["bad.a", "bad.b", "bad.c"]
    for headers, path in (
        ({"Last-Event-ID": cursor}, events_path(names)),
        ({}, events_path(names, after=cursor)),
    ):
        r = http.get(path, headers=headers)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "invalid_cursor"
        assert says in error["message"]


# -- the reason of a reset ----------------------------------------------------------------


def reset_of(stream: Stream) -> dict[str, object]:
    ev = stream.event()
    assert ev["event"] == "reset", ev
    assert "id" not in ev
    body: dict[str, object] = json.loads(ev["data"])
    return body


def test_a_cursor_ahead_of_a_recreated_channel_is_reset_as_ahead(
    tidings_server: ServerFactory, store_url: str
) -> None:
    """Deleted after 3 messages and recreated with one: a cursor at 3 is ahead of the
    channel, and the reset says so (single and multiplexed streams, every store), then the
    stream replays the new life from its start."""
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        _ahead(http)


def _ahead(http: httpx.Client) -> None:
    ch = "ahead.recreated"
    old = [publish(http, ch, i) for i in range(3)]
    # The streams open once the server has ended its streams of the deleted channel (with
    # Redis that notice comes back through the relay), so none of them is ended by it.
    watcher = Stream(http, f"/v1/channels/{ch}/events")
    try:
        assert http.delete(f"/v1/channels/{ch}").status_code == 204
        assert watcher.event()["event"] == "close"
    finally:
        watcher.close()
    new = publish(http, ch, "new life")
    assert int(new) < int(old[-1])
    for path in (f"/v1/channels/{ch}/events", events_path([ch, "ahead.other"])):
        cursor = old[-1] if path.startswith("/v1/channels") else cursor_of(old[-1], None)
        stream = Stream(http, path, {"Last-Event-ID": cursor})
        try:
            reset = reset_of(stream)
            assert reset == {"type": "reset", "channel": ch, "first": new, "reason": RESET_AHEAD}
            data = stream.event()["data"]
            assert (data if "?" not in path else json.loads(data)["data"]) == "new life"
        finally:
            stream.close()


def test_a_cursor_behind_the_retained_history_is_reset_as_older(
    tidings_server: ServerFactory, store_url: str
) -> None:
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        _behind(http)


def _behind(http: httpx.Client) -> None:
    ch = "behind.retention"
    r = http.put(f"/v1/channels/{ch}", json={"retention": {"max_messages": 2, "max_age": 3600}})
    assert r.status_code in (200, 204), r.text
    ids = [publish(http, ch, i) for i in range(5)]
    stream = Stream(http, events_path([ch]), {"Last-Event-ID": cursor_of(ids[0])})
    try:
        reset = reset_of(stream)
        assert reset == {"type": "reset", "channel": ch, "first": ids[3], "reason": RESET_BEHIND}
        assert stream.message()[:3] == (ch, ids[3], 3)
    finally:
        stream.close()
