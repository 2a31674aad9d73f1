"""The wire's time form: `format_time` writes it, `parse_time` reads it back."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from tidings.protocol.codecs import encode_json, format_time, parse_optional_time, parse_time


def test_format_time_is_rfc3339_utc_with_microseconds():
    assert format_time(0.0) == "1970-01-01T00:00:00.000000Z"
    assert format_time(1700000000.25) == "2023-11-14T22:13:20.250000Z"


def test_format_time_matches_datetime_to_the_microsecond():
    """The cached formatter rounds exactly as datetime.fromtimestamp does."""
    rng = random.Random(7)
    for ts in [0.0, 0.9999995, 1700000000.25, *(rng.uniform(0, 4e9) for _ in range(20000))]:
        assert format_time(ts) == datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_microsecond_that_rounds_up_carries_into_the_second():
    assert format_time(1.9999996) == "1970-01-01T00:00:02.000000Z"


def test_parse_time_reads_back_what_format_time_wrote():
    rng = random.Random(11)
    for ts in [0.0, 1700000000.25, *(round(rng.uniform(0, 4e9), 6) for _ in range(2000))]:
        assert parse_time(format_time(ts)) == pytest.approx(ts, abs=1e-6)


def test_parse_time_takes_any_offset_and_reads_a_time_without_one_as_utc():
    assert parse_time("2023-11-14T23:13:20.25+01:00") == 1700000000.25
    assert parse_time("2023-11-14T22:13:20.250000") == 1700000000.25


@pytest.mark.parametrize("bad", ["", "yesterday", "2023-13-01T00:00:00Z", "1700000000"])
def test_parse_time_refuses_what_is_not_rfc3339(bad: str):
    with pytest.raises(ValueError, match=r"isoformat|must be in"):
        parse_time(bad)


def test_parse_optional_time_keeps_null():
    assert parse_optional_time(None) is None
    assert parse_optional_time("1970-01-01T00:00:01.000000Z") == 1.0


def test_encode_json_is_compact():
    assert encode_json({"a": [1, None, "x"]}) == b'{"a":[1,null,"x"]}'
