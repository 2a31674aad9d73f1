"""The cursor of a multiplexed stream: positions in the URL's channel order, no names."""

from __future__ import annotations

import pytest

from tidings.protocol.cursors import decode_composite_cursor, encode_composite_cursor


def test_composite_cursor_holds_positions_in_channel_order_and_no_names():
    positions = {"news.a": "12", "b:c-d_e": "0", "x" * 200: "345"}
    text = encode_composite_cursor(positions)
    assert text == "~12..345"
    assert decode_composite_cursor(text, list(positions)) == positions


def test_a_channel_without_a_message_yet_is_an_empty_position_read_back_as_0():
    assert encode_composite_cursor({"a": None, "b": "0"}) == "~."
    assert decode_composite_cursor("~.", ["a", "b"]) == {"a": "0", "b": "0"}
    assert decode_composite_cursor("~", ["a"]) == {"a": "0"}


def test_an_empty_cursor_gives_no_position():
    assert decode_composite_cursor("", ["a"]) == {}


def test_composite_cursor_length_is_bounded_by_the_channel_count():
    """One 18-digit id and a separator per channel, plus the mark: 19 bytes a channel."""
    biggest = str(10**18 - 1)
    names = [f"{i:0200d}" for i in range(100)]
    assert len(encode_composite_cursor(dict.fromkeys(names, biggest))) == 19 * 100


def test_a_cursor_of_another_channel_count_is_refused():
    with pytest.raises(ValueError, match="holds 3 positions but the stream follows 2 channels"):
        decode_composite_cursor("~1.2.3", ["a", "b"])
    with pytest.raises(ValueError, match="holds 1 positions but the stream follows 2"):
        decode_composite_cursor("~", ["a", "b"])


@pytest.mark.parametrize("bad", ["12", "news.a=12", "a=1,b=2", " ~1"])
def test_a_cursor_without_the_mark_is_refused(bad: str):
    with pytest.raises(ValueError, match="malformed cursor"):
        decode_composite_cursor(bad, ["a"])
