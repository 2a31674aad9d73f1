"""The sans-I/O core of `subscribe`: cursor, frame parsing, resume and reconnect policy.

`_Subscription` is fed frames as the transports would deliver them; no server runs.
"""

from __future__ import annotations

from typing import Any

import pytest
from httpx_sse import ServerSentEvent

from tidings.protocol.codecs import encode_json
from tidings.protocol.messages import RESET_AHEAD, Message, Reset
from tidings.sdk.client import Page, _StreamClosedError, _Subscription
from tidings.sdk.common import ClientError, TidingsConnectionError, TidingsHTTPError


def sub(via: str = "sse", after: str | None = "0", reconnect_delay: float = 0.5) -> _Subscription:
    return _Subscription("news", via, after, poll_interval=1.0, reconnect_delay=reconnect_delay)


def sse(id: str, data: Any, event: str = "message") -> ServerSentEvent:
    """A message event as a format=json stream sends it: the whole message as JSON."""
    wire = Message(id, "news", data, None if event == "message" else event).to_wire()
    return ServerSentEvent(event=event, data=encode_json(wire).decode(), id=id)


def items(s: _Subscription, events: list[ServerSentEvent]) -> list[Message | Reset]:
    out = []
    for e in events:
        item = s.sse_item(e)
        if item is not None:
            out.append(item)
    return out


def test_an_unknown_transport_is_refused():
    with pytest.raises(ValueError, match="via must be one of"):
        sub(via="carrier-pigeon")


def test_sse_messages_come_in_order_and_move_the_cursor():
    s = sub()
    got = items(s, [sse("1", "a"), sse("2", {"n": 2}, "up"), sse("3", [1])])
    assert got == [
        Message("1", "news", "a"),
        Message("2", "news", {"n": 2}, "up"),
        Message("3", "news", [1]),
    ]
    assert s.cursor == "3"
    assert s.sse_request()["headers"] == {"Last-Event-ID": "3"}
    assert s.sse_request()["params"] == {"format": "json"}


def test_after_a_drop_the_stream_resumes_after_the_last_message_without_a_duplicate():
    s = sub()
    items(s, [sse("1", "a"), sse("2", "b")])
    s.retry_delay(TidingsConnectionError("connection reset"))  # the connection dropped
    assert s.sse_request()["headers"] == {"Last-Event-ID": "2"}
    s.connected()
    # The server replays the cursor's own message, then what follows it.
    assert items(s, [sse("2", "b"), sse("3", "c")]) == [Message("3", "news", "c")]
    assert s.cursor == "3"


def test_a_reset_control_event_yields_a_reset_and_keeps_the_cursor():
    s = sub()
    items(s, [sse("5", "a")])
    body = encode_json(Reset("news", "9", RESET_AHEAD).to_wire()).decode()
    # Control events have no id: line; the SSE decoder carries the last id over.
    got = s.sse_item(ServerSentEvent(event="reset", data=body, id="5"))
    assert got == Reset("news", "9", RESET_AHEAD)
    assert s.cursor == "5"
    assert items(s, [sse("9", "after the gap")]) == [Message("9", "news", "after the gap")]


def test_a_reset_of_another_shape_still_resets():
    s = sub()
    assert s.sse_item(ServerSentEvent(event="reset", data="not json", id="")) == Reset("news", None)


def test_a_close_event_ends_the_stream_and_the_reconnect_starts_its_backoff_over():
    s = sub(reconnect_delay=0.5)
    for _ in range(3):
        s.retry_delay(OSError("refused"))
    with pytest.raises(_StreamClosedError, match="draining"):
        s.sse_item(ServerSentEvent(event="close", data="draining", id=""))
    assert s.retry_delay(_StreamClosedError("draining")) == 0.5


def test_reconnect_delays_double_up_to_the_ceiling():
    s = sub(reconnect_delay=0.5)
    delays = [s.retry_delay(OSError("refused")) for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    s.connected()
    assert s.retry_delay(OSError("refused")) == 0.5


def test_a_retry_after_is_waited_and_a_4xx_is_raised():
    s = sub()
    assert s.retry_delay(TidingsHTTPError(503, "store_unavailable", "x", retry_after=7)) == 7
    assert s.retry_delay(TidingsHTTPError(429, "too_many_requests", "x")) > 0
    forbidden = TidingsHTTPError(403, "forbidden", "no grant")
    with pytest.raises(TidingsHTTPError) as raised:
        s.retry_delay(forbidden)
    assert raised.value is forbidden
    with pytest.raises(ValueError, match="a bug"):
        s.retry_delay(ValueError("a bug"))


def test_websocket_frames_keep_exact_types_and_times():
    s = sub(via="ws")
    frame = encode_json(Message("1", "news", 123, None, 1700000000.25).to_wire())
    assert s.ws_item(frame) == Message("1", "news", 123, None, 1700000000.25)
    assert s.ws_item(frame) is None  # the same id again: already yielded
    assert s.ws_item(b'{"type":"ack","ref":1,"id":"2"}') is None
    reset = encode_json(Reset("news", None).to_wire())
    assert s.ws_item(reset) == Reset("news", None)
    with pytest.raises(_StreamClosedError):
        s.ws_item(b'{"type":"close","reason":"bye"}')
    with pytest.raises(ClientError, match="malformed WebSocket frame"):
        s.ws_item(b"{not json")
    with pytest.raises(ClientError, match="malformed message frame"):
        s.ws_item(b'{"id":"2","channel":"news"}')


def test_a_websocket_closed_for_a_reason_a_retry_cannot_fix_raises():
    s = sub(via="ws")
    with pytest.raises(TidingsHTTPError) as raised:
        s.ws_closed(1008, "no grant")
    assert raised.value.status == 403
    with pytest.raises(TidingsHTTPError) as raised:
        s.ws_closed(4404, "")
    assert raised.value.status == 404
    for code in (1000, 1001, 1011, 4408, 4429, None):
        s.ws_closed(code, "")  # retried


def test_the_websocket_url_keeps_the_path_prefix_and_the_cursor():
    s = sub(via="ws", after="7")
    assert (
        s.ws_url("https://example.com/push/")
        == "wss://example.com/push/v1/channels/news/ws?after=7"
    )
    assert sub(via="ws", after=None).ws_url("http://h:1") == "ws://h:1/v1/channels/news/ws"


def test_a_poll_page_with_a_reset_yields_it_first_and_skips_the_cursor_message():
    s = sub(via="poll", after="4")
    page = Page(
        messages=[Message("4", "news", "seen"), Message("8", "news", "x")], next="8", reset=True
    )
    assert s.page_items(page) == [Reset("news", "4"), Message("8", "news", "x")]
    assert s.cursor == "8"
    assert s.read_args() == {"after": "8", "wait": None}


def test_poll_pauses_only_when_nothing_came():
    poll, longpoll = sub(via="poll"), sub(via="longpoll")
    empty = Page(messages=[], next="0", reset=False)
    full = Page(messages=[Message("1", "news", "x")], next="1", reset=False)
    assert poll.pause_after(full, 0.0) == 0.0
    assert poll.pause_after(empty, 5.0) == 1.0
    assert longpoll.pause_after(empty, 25.0) == 0.0
    assert longpoll.pause_after(empty, 0.01) == 1.0  # came back at once: do not spin
    assert longpoll.read_args()["wait"] == 25.0


def test_a_subscription_from_now_reads_from_0_until_the_end_is_known():
    assert sub(via="poll", after=None).read_args()["after"] == "0"
