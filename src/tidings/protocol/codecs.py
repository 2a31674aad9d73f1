"""How values are written on the wire: JSON codecs and the RFC 3339 time form.

`format_time` writes the form every `time` field takes; `parse_time` reads it back; `Time`
is the type wire shapes give such fields (a string, described as an RFC 3339 date-time in
the OpenAPI document).
"""

from __future__ import annotations

import functools
import math
import time
from datetime import UTC, datetime
from typing import Annotated

import msgspec

__all__ = [
    "JSON_DECODER",
    "Time",
    "encode_json",
    "format_time",
    "parse_optional_time",
    "parse_time",
]

encode_json = msgspec.json.Encoder().encode
JSON_DECODER = msgspec.json.Decoder()

# A time on the wire: RFC 3339 in UTC with microseconds, as `format_time` writes it.
Time = Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})]


def format_time(ts: float) -> str:
    """RFC 3339 UTC with microseconds, the form every `time` field takes on the wire.

    Built from a cached per-second prefix: polls format every message's time, and
    `datetime.strftime` on each would cost more than encoding the page (decision 0008).
    """
    frac, whole = math.modf(ts)  # the rounding datetime.fromtimestamp does
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_second(int(whole))}.{micros:06d}Z"


@functools.lru_cache(maxsize=4096)
def _second(secs: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))


def parse_time(text: str) -> float:
    """Seconds since the epoch from an RFC 3339 time (`format_time`'s form, or any offset;
    a time without one is UTC). Raises ValueError when `text` is not such a time."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_optional_time(text: str | None) -> float | None:
    """`parse_time` for a field that may be null."""
    return None if text is None else parse_time(text)
