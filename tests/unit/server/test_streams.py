"""Parsing a stream request: its channels, where it resumes, and what is refused."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.protocol.cursors import encode_composite_cursor
from tidings.protocol.errors import BadRequest, InvalidChannel, InvalidCursor
from tidings.server.streams import (
    STREAM_PATH,
    multiplexed_channels,
    multiplexed_positions,
    stream_query,
)


def scope(query: str = "", last_event_id: str | None = None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1")]
    if last_event_id is not None:
        headers.append((b"last-event-id", last_event_id.encode()))
    return {"type": "http", "query_string": query.encode(), "headers": headers}


def test_a_stream_without_a_cursor_starts_from_now() -> None:
    q = stream_query(scope("channel=a"))
    assert (q.cursor, q.after) == (None, None)
    assert q.query == [("channel", "a")]


def test_after_gives_the_resume_point() -> None:
    q = stream_query(scope("after=5"))
    assert (q.cursor, q.after) == ("5", "5")


def test_last_event_id_wins_over_after_which_is_still_kept_to_be_checked() -> None:
    q = stream_query(scope("after=5", last_event_id=" 9 "))
    assert (q.cursor, q.after) == ("9", "5")


def test_an_empty_after_or_last_event_id_means_from_now() -> None:
    q = stream_query(scope("after=", last_event_id="  "))
    assert (q.cursor, q.after) == (None, None)


def test_a_multiplexed_stream_names_each_channel_once_in_first_seen_order() -> None:
    query = stream_query(scope("channel=b&channel=a&after=x&channel=b")).query
    assert multiplexed_channels(query, 10) == ["b", "a"]


def test_a_multiplexed_stream_naming_no_channel_is_refused_with_an_example() -> None:
    with pytest.raises(BadRequest, match=r"/v1/events\?channel=a&channel=b"):
        multiplexed_channels([("after", "1")], 10)


def test_a_multiplexed_stream_over_the_channel_cap_is_refused_naming_the_option() -> None:
    query = [("channel", f"c{i}") for i in range(4)]
    assert len(multiplexed_channels(query, 4)) == 4
    with pytest.raises(BadRequest, match="--max-stream-channels"):
        multiplexed_channels(query, 3)


def test_a_bad_channel_name_in_a_multiplexed_stream_is_refused() -> None:
    with pytest.raises(InvalidChannel):
        multiplexed_channels([("channel", "no spaces")], 10)


def test_a_composite_cursor_gives_each_channel_its_position() -> None:
    cursor = encode_composite_cursor({"a": "3", "b": None})
    assert multiplexed_positions(cursor, None, ["a", "b"]) == {"a": "3", "b": "0"}
    assert multiplexed_positions(None, None, ["a", "b"]) == {}


def test_a_cursor_that_does_not_fit_the_channels_is_an_invalid_cursor() -> None:
    with pytest.raises(InvalidCursor):
        multiplexed_positions("5", None, ["a", "b"])
    with pytest.raises(InvalidCursor):
        multiplexed_positions(encode_composite_cursor({"a": "1"}), None, ["a", "b"])


def test_a_bad_after_is_refused_even_when_last_event_id_is_used() -> None:
    good = encode_composite_cursor({"a": "1", "b": "2"})
    assert multiplexed_positions(good, good, ["a", "b"]) == {"a": "1", "b": "2"}
    with pytest.raises(InvalidCursor):
        multiplexed_positions(good, "junk", ["a", "b"])


@pytest.mark.parametrize(
    ("path", "groups"),
    [
        ("/v1/channels/news/events", ("channels", "news", "events")),
        ("/v1/channels/news/ws", ("channels", "news", "ws")),
        ("/v1/jobs/abc/events", ("jobs", "abc", "events")),
        ("/v1/jobs/abc/ws", ("jobs", "abc", "ws")),
    ],
)
def test_stream_paths_name_the_resource_and_the_transport(
    path: str, groups: tuple[str, str, str]
) -> None:
    m = STREAM_PATH.fullmatch(path)
    assert m is not None and m.groups() == groups


@pytest.mark.parametrize(
    "path",
    [
        "/v1/channels/news/messages",
        "/v1/channels/a/b/events",
        "/v1/events",
        "/v1/x/y/ws",
        "/v1/channels/news/events\n",  # a decoded %0A after the path is not the stream
        "/v1/channels/news/events/x",
    ],
)
def test_other_paths_are_not_streams_of_one_resource(path: str) -> None:
    assert STREAM_PATH.fullmatch(path) is None
