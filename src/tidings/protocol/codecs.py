"""How values are written on the wire: JSON codecs and the RFC 3339 time form."""

from __future__ import annotations

import functools
import math
import time

import msgspec

encode_json = msgspec.json.Encoder().encode
JSON_DECODER = msgspec.json.Decoder()


def format_time(ts: float) -> str:
    """RFC 3339 UTC with microseconds, the form every `time` field takes on the wire.

    Built from a cached per-second prefix: polls format every message's time, and
    `datetime.strftime` cost 20x the JSON encoding of a page (decision 0008).
    """
    frac, whole = math.modf(ts)  # the rounding datetime.fromtimestamp does
    micros = round(frac * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_second(int(whole))}.{micros:06d}Z"


@functools.lru_cache(maxsize=4096)
def _second(secs: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
