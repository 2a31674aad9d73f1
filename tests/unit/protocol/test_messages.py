"""Channel messages on the wire: names, the message, publish and reset forms, SSE frames."""

from __future__ import annotations

import msgspec
import pytest

from tidings.protocol.codecs import encode_json
from tidings.protocol.messages import (
    RESET_AHEAD,
    RESET_BEHIND,
    Message,
    MessageWire,
    PageWire,
    PublishAck,
    PublishAckWire,
    Reset,
    ResetWire,
    data_text,
    sse_frame,
    valid_channel,
)


def test_channel_names():
    assert valid_channel("a")
    assert valid_channel("job.123:x-y_z")
    assert valid_channel("x" * 200)
    for bad in ["", "x" * 201, "a b", "a/b", "é", "a,b", "a=b", "a\n"]:
        assert not valid_channel(bad)


def test_sse_frame_fields_and_multiline_data():
    assert sse_frame("7", None, "hi") == b"id: 7\ndata: hi\n\n"
    assert sse_frame("7", "up", "a\nb\r\nc") == b"id: 7\nevent: up\ndata: a\ndata: b\ndata: c\n\n"
    assert sse_frame(None, "reset", "{}") == b"event: reset\ndata: {}\n\n"
    assert sse_frame("1", None, "a\rb") == b"id: 1\ndata: a\ndata: b\n\n"


def test_data_text_is_the_text_or_its_json():
    assert data_text("plain") == "plain"
    assert data_text({"a": [1, None]}) == '{"a":[1,null]}'
    assert data_text(3) == "3"
    assert data_text(None) == "null"


def test_a_message_is_sent_with_its_fields_in_wire_order_null_event_included():
    m = Message(id="5", channel="c", data={"x": 1}, time=1700000000.25)
    assert encode_json(m.to_wire()) == (
        b'{"id":"5","channel":"c","event":null,"data":{"x":1},"time":"2023-11-14T22:13:20.250000Z"}'
    )


@pytest.mark.parametrize("data", ["text", {"x": [1, None]}, None, 3, [1.5, True], ""])
@pytest.mark.parametrize("event", [None, "e"])
def test_a_message_encoded_as_the_server_does_decodes_in_the_sdk_to_the_same_values(
    data: object, event: str | None
):
    m = Message(id="5", channel="c.d", data=data, event=event, time=1700000000.25)
    wire = msgspec.json.decode(encode_json(m.to_wire()), type=MessageWire)
    assert Message.from_wire(wire) == m


def test_a_page_decodes_into_its_messages():
    messages = [Message(str(i), "c", {"n": i}, None, float(i)) for i in range(1, 4)]
    body = encode_json({"messages": [m.to_wire() for m in messages], "next": "3", "reset": False})
    page = msgspec.json.decode(body, type=PageWire)
    assert [Message.from_wire(w) for w in page.messages] == messages
    assert (page.next, page.reset) == ("3", False)


def test_a_message_without_its_time_is_refused():
    with pytest.raises(msgspec.ValidationError, match="time"):
        msgspec.json.decode(b'{"id":"1","channel":"c","event":null,"data":1}', type=MessageWire)


def test_a_publish_ack_round_trips():
    ack = PublishAck("9", "news", 1700000000.5)
    body = encode_json(ack.to_wire())
    assert body == b'{"id":"9","channel":"news","time":"2023-11-14T22:13:20.500000Z"}'
    assert PublishAck.from_wire(msgspec.json.decode(body, type=PublishAckWire)) == ack


@pytest.mark.parametrize("first", [None, "4"])
@pytest.mark.parametrize("reason", [RESET_BEHIND, RESET_AHEAD])
def test_a_reset_frame_names_its_type_first_and_round_trips(first: str | None, reason: str):
    reset = Reset("c", first, reason)
    body = reset.to_wire()
    assert list(body) == ["type", "channel", "first", "reason"]
    assert body["type"] == "reset"
    decoded = msgspec.json.decode(encode_json(body), type=ResetWire)
    assert Reset.from_wire(decoded) == reset


def test_a_frame_of_another_type_is_not_a_reset():
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(
            b'{"type":"close","channel":"c","first":null,"reason":"x"}', type=ResetWire
        )
