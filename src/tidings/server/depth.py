"""How deep a value may nest, checked wherever the server takes one in.

Every decode boundary — JSON and MessagePack bodies, WebSocket frames, job payloads,
results and errors, app JWT claims — refuses a value whose arrays and objects nest deeper
than the server's `max_depth` (`--max-depth`, TIDINGS_MAX_DEPTH, 64 by default) with 400
`nested_too_deep`. A value deep enough to exhaust the interpreter's recursion limit could
be decoded and stored but never encoded again, and every read of it would fail.

Depth counts containers: a scalar is 0 deep, `[]` and `{}` 1, `{"data": [1]}` 2. A body
or frame is measured whole, as sent (its envelope included); a value handed to the job
service (an in-process handler's result) on its own.

The check is cheap on the hot path: a JSON text cannot nest deeper than it has `[` and
`{` (a MessagePack one than it has container markers), counted at C speed; only a value
with more openers than the limit is walked, iteratively, level by level.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from tidings.protocol.errors import BadRequest, InvalidBody
from tidings.server.constants import DEFAULT_MAX_DEPTH

__all__ = [
    "DEPTH_CEILING",
    "NestedTooDeep",
    "check_depth",
    "check_storable",
    "decode_limited",
    "effective_depth",
    "exceeds_depth",
    "json_openers",
    "msgpack_openers",
]

T = TypeVar("T")

# The deepest nesting any setting allows: deeper values, encoded from a handler's stack,
# run into Python's recursion limit (1000 frames).
DEPTH_CEILING = 512

# MessagePack's container markers: fixmap, fixarray, array16/32, map16/32.
_MSGPACK_CONTAINERS = bytes(range(0x80, 0xA0)) + b"\xdc\xdd\xde\xdf"
_CONTAINERS = (list, dict, tuple, msgspec.Struct)
_SCALARS = frozenset({str, bool, float})
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

_encode_msgpack = msgspec.msgpack.Encoder().encode
_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode


class NestedTooDeep(BadRequest):
    """A value nests arrays and objects deeper than the server's `max_depth` (400)."""

    code = "nested_too_deep"


def effective_depth(limit: int) -> int:
    """The limit in force for a `max_depth` setting (never above DEPTH_CEILING)."""
    return min(limit, DEPTH_CEILING)


def too_deep(what: str, limit: int) -> NestedTooDeep:
    """The error for `what` nesting deeper than `limit`."""
    return NestedTooDeep(
        f"{what} nests arrays and objects more than {limit} deep, the server's limit: "
        f"flatten it, or raise the limit with --max-depth (TIDINGS_MAX_DEPTH, at most "
        f"{DEPTH_CEILING})"
    )


def _nests(x: Any) -> bool:
    return isinstance(x, _CONTAINERS)


def exceeds_depth(value: Any, limit: int) -> bool:
    """True when `value` nests lists, dicts, tuples or Structs more than `limit` deep.

    Iterative (one level at a time), so no depth can exhaust the stack; stops at the
    first level past the limit.
    """
    level = [value] if _nests(value) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for v in level:
            if isinstance(v, dict):
                below.extend(x for x in v.values() if _nests(x))
                below.extend(k for k in v if isinstance(k, tuple))  # MessagePack array keys
            elif isinstance(v, msgspec.Struct):
                fields = (getattr(v, f) for f in v.__struct_fields__)
                below.extend(x for x in fields if _nests(x))
            else:
                below.extend(x for x in v if _nests(x))
        level = below
    return False


def check_depth(value: Any, limit: int, what: str = "value") -> None:
    """NestedTooDeep unless `value` nests at most `limit` deep (the limit is capped at
    DEPTH_CEILING). The one depth check every boundary uses; app JWT claims too."""
    limit = effective_depth(limit)
    if exceeds_depth(value, limit):
        raise too_deep(what, limit)


def json_openers(raw: bytes | str) -> int:
    """How many `[` and `{` a JSON text holds: at least its nesting depth."""
    if isinstance(raw, str):
        return raw.count("[") + raw.count("{")
    return raw.count(b"[") + raw.count(b"{")


def msgpack_openers(raw: bytes) -> int:
    """How many bytes of a MessagePack text could open a container: at least its depth."""
    return len(raw) - len(raw.translate(None, _MSGPACK_CONTAINERS))


def decode_limited(
    decode: Callable[[Any], T],
    raw: bytes | str,
    limit: int,
    what: str = "body",
    *,
    msgpack: bool = False,
) -> T:
    """`decode(raw)`, refusing a value nested deeper than `limit` with NestedTooDeep.

    A decoder that runs out of recursion (a value thousands deep) is refused the same
    way; its other errors pass through for the caller to map.
    """
    limit = effective_depth(limit)
    try:
        value = decode(raw)
    except RecursionError:
        raise too_deep(what, limit) from None
    openers = msgpack_openers(raw) if msgpack else json_openers(raw)  # type: ignore[arg-type]
    if openers > limit and exceeds_depth(value, limit):
        raise too_deep(what, limit)
    return value


def check_storable(value: Any, what: str, limit: int = DEFAULT_MAX_DEPTH) -> None:
    """Refuse a value the stores could not keep or the server could not serve again.

    NestedTooDeep past `limit`; InvalidBody (422) for what JSON (the wire) or MessagePack
    (the job stores) cannot carry: integers beyond 64 bits, MessagePack ext values, map
    keys that are not strings or numbers, objects msgspec cannot encode.
    """
    if value is None or value.__class__ in _SCALARS:
        return
    if value.__class__ is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise _unstorable(what, "an integer beyond 64 bits")
        return
    limit = effective_depth(limit)
    try:
        encoded = _encode_json(value)
        _encode_msgpack(value)
    except RecursionError:
        raise too_deep(what, limit) from None
    except OverflowError:
        raise _unstorable(what, "an integer beyond 64 bits") from None
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        raise InvalidBody(f"{what} cannot be stored: {exc}") from None
    if json_openers(encoded) > limit:
        try:
            plain = _decode_json(encoded)
        except RecursionError:
            raise too_deep(what, limit) from None
        if exceeds_depth(plain, limit):
            raise too_deep(what, limit)


def _unstorable(what: str, part: str) -> InvalidBody:
    return InvalidBody(
        f"{what} holds {part}, which MessagePack cannot carry: send big numbers as strings"
    )
