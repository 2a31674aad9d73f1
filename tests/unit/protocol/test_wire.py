"""Wire encodings: SSE frames, composite cursors, message forms."""

from __future__ import annotations

import pytest

from tidings.protocol.cursors import decode_composite_cursor, encode_composite_cursor
from tidings.protocol.messages import Message, data_text, sse_frame, valid_channel


def test_sse_frame_fields_and_multiline_data():
    assert sse_frame("7", None, "hi") == b"id: 7\ndata: hi\n\n"
    assert sse_frame("7", "up", "a\nb\r\nc") == b"id: 7\nevent: up\ndata: a\ndata: b\ndata: c\n\n"
    assert sse_frame(None, "reset", "{}") == b"event: reset\ndata: {}\n\n"


def test_data_text_is_the_text_or_its_json():
    assert data_text("plain") == "plain"
    assert data_text({"a": [1, None]}) == '{"a":[1,null]}'
    assert data_text(3) == "3"


def test_composite_cursor_holds_positions_in_channel_order_and_no_names():
    positions = {"news.a": "12", "b:c-d_e": "0", "x" * 200: "345"}
    text = encode_composite_cursor(positions)
    assert text == "~12..345"
    assert decode_composite_cursor(text, list(positions)) == positions
    assert encode_composite_cursor({"a": None, "b": "0"}) == "~."
    assert decode_composite_cursor("~", ["a"]) == {"a": "0"}
    assert decode_composite_cursor("", ["a"]) == {}


def test_composite_cursor_length_is_bounded_by_the_channel_count():
    """One 18-digit id and a separator per channel, plus the mark: 19 bytes a channel."""
    biggest = str(10**18 - 1)
    names = [f"{i:0200d}" for i in range(100)]
    assert len(encode_composite_cursor(dict.fromkeys(names, biggest))) == 19 * 100


def test_compact_cursor_of_another_channel_count_is_refused():
    with pytest.raises(ValueError, match="holds 3 positions but the stream follows 2 channels"):
        decode_composite_cursor("~1.2.3", ["a", "b"])
    with pytest.raises(ValueError, match="holds 1 positions but the stream follows 2"):
        decode_composite_cursor("~", ["a", "b"])


def test_named_composite_cursor_is_still_read_and_matched_by_name():
    """The `channel=id,...` form earlier servers sent resumes the channels it names."""
    text = "news.a=12,b:c-d_e=0,gone=7"
    assert decode_composite_cursor(text, ["b:c-d_e", "news.a", "new"]) == {
        "b:c-d_e": "0",
        "news.a": "12",
    }
    for bad in ["news", "a=", "=3", "bad name=1"]:
        with pytest.raises(ValueError, match="malformed"):
            decode_composite_cursor(bad, ["a"])


def test_message_wire_form_round_trips():
    m = Message(id="5", channel="c", data={"x": 1}, event="e", time=1700000000.25)
    wire = m.to_wire()
    assert wire["time"] == "2023-11-14T22:13:20.250000Z"
    assert Message.from_wire(wire) == m


def test_channel_names():
    assert valid_channel("a")
    assert valid_channel("job.123:x-y_z")
    assert valid_channel("x" * 200)
    for bad in ["", "x" * 201, "a b", "a/b", "é", "a,b", "a=b"]:
        assert not valid_channel(bad)


def test_format_time_matches_datetime_to_the_microsecond():
    """The cached formatter rounds exactly as datetime.fromtimestamp does."""
    import random
    from datetime import UTC, datetime

    from tidings.protocol.codecs import format_time

    rng = random.Random(7)
    for ts in [0.0, 0.9999995, 1700000000.25, *(rng.uniform(0, 4e9) for _ in range(20000))]:
        assert format_time(ts) == datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
