"""The nesting rule and the storable rule on plain values (tidings.server.depth): how depth
is counted, the cheap opener count that spares most values a walk, decoding with a limit,
and what the stores refuse to keep.

The same limits seen through a running server are in tests/hostile/test_depth_and_isolation.py.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tidings.protocol.errors import InvalidBody
from tidings.server.constants import DEFAULT_MAX_DEPTH
from tidings.server.depth import (
    DEPTH_CEILING,
    NestedTooDeep,
    check_depth,
    check_storable,
    decode_limited,
    effective_depth,
    exceeds_depth,
    json_openers,
    msgpack_openers,
)

json_decode = msgspec.json.decode
msgpack_decode = msgspec.msgpack.decode


def nested(depth: int) -> Any:
    """A value `depth` deep: lists inside dicts inside lists ... around a 1."""
    value: Any = 1
    for n in range(depth):
        value = [value] if n % 2 else {"k": value}
    return value


def json_text(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def msgpack_text(depth: int) -> bytes:
    return b"\x91" * depth + b"\x00"  # fixarray of one, `depth` times, around a 0


def far_too_deep() -> Any:
    """A list 100 000 deep: far past the interpreter's recursion limit."""
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    return value


class Point(msgspec.Struct):
    x: Any
    y: Any = None


# -- counting depth ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "depth"),
    [
        (1, 0),
        ("[[[", 0),
        (None, 0),
        ([], 1),
        ({}, 1),
        ([1, "a", None], 1),
        ({"data": [1]}, 2),
        ([[], [[]], []], 3),
        ({"a": 1, "b": {"c": {"d": []}}}, 4),
        ((1, (2, (3,))), 3),
        (Point(x=[1], y={"a": []}), 3),
        ({(1, (2,)): "msgpack array key"}, 3),
    ],
)
def test_depth_counts_containers_not_scalars(value: Any, depth: int) -> None:
    assert not exceeds_depth(value, depth)
    if depth:
        assert exceeds_depth(value, depth - 1)


def test_a_value_far_deeper_than_the_stack_is_measured_without_recursion() -> None:
    deep = far_too_deep()
    assert exceeds_depth(deep, DEPTH_CEILING)
    assert not exceeds_depth(deep, 100_001)


def test_the_limit_in_force_never_exceeds_the_ceiling() -> None:
    assert effective_depth(8) == 8
    assert effective_depth(DEPTH_CEILING) == DEPTH_CEILING
    assert effective_depth(DEPTH_CEILING * 10) == DEPTH_CEILING


# -- check_depth -------------------------------------------------------------------------


def test_check_depth_passes_a_value_at_the_limit_and_refuses_one_past_it() -> None:
    check_depth(nested(8), 8)
    with pytest.raises(NestedTooDeep) as refused:
        check_depth(nested(9), 8, "payload")
    error = refused.value
    assert error.status == 400
    assert error.code == "nested_too_deep"
    assert "payload nests arrays and objects more than 8 deep" in str(error)
    assert "--max-depth" in str(error)


def test_check_depth_applies_the_ceiling_to_a_larger_limit() -> None:
    check_depth(nested(DEPTH_CEILING), DEPTH_CEILING * 2)
    with pytest.raises(NestedTooDeep, match=f"more than {DEPTH_CEILING} deep"):
        check_depth(nested(DEPTH_CEILING + 1), DEPTH_CEILING * 2)


# -- openers -----------------------------------------------------------------------------


def test_json_openers_count_brackets_and_braces_in_bytes_or_text() -> None:
    assert json_openers(b'{"a": [1, {"b": []}]}') == 4
    assert json_openers('{"a": [1, {"b": []}]}') == 4
    assert json_openers(b'"[{"') == 2  # inside a string too: a bound, not a measure
    assert json_openers(b"12") == 0


def test_msgpack_openers_count_every_container_marker() -> None:
    value = {"a": [1, {"b": []}], "c": list(range(20)), "d": {str(n): n for n in range(20)}}
    raw = msgspec.msgpack.encode(value)  # fixmap, fixarray, array16, map16
    assert msgpack_openers(raw) >= 6
    assert msgpack_openers(msgpack_text(7)) == 7
    assert msgpack_openers(msgspec.msgpack.encode("plain")) == 0


@pytest.mark.parametrize("depth", [0, 1, 5, 40])
def test_openers_are_never_fewer_than_the_depth(depth: int) -> None:
    value = nested(depth)
    assert json_openers(msgspec.json.encode(value)) >= depth
    assert msgpack_openers(msgspec.msgpack.encode(value)) >= depth


# -- decode_limited ----------------------------------------------------------------------


def test_decode_limited_returns_the_value_at_the_limit() -> None:
    assert decode_limited(json_decode, json_text(5), 5) == json_decode(json_text(5))
    assert decode_limited(msgpack_decode, msgpack_text(5), 5, msgpack=True) == [[[[[0]]]]]


@pytest.mark.parametrize(
    ("decode", "raw", "is_msgpack"),
    [(json_decode, json_text(6), False), (msgpack_decode, msgpack_text(6), True)],
    ids=["json", "msgpack"],
)
def test_decode_limited_refuses_a_body_one_past_the_limit(
    decode: Any, raw: bytes, is_msgpack: bool
) -> None:
    with pytest.raises(NestedTooDeep, match="frame nests arrays and objects more than 5"):
        decode_limited(decode, raw, 5, "frame", msgpack=is_msgpack)


def test_decode_limited_accepts_brackets_inside_strings_past_the_limit() -> None:
    raw = b'{"data": "' + b"[{" * 100 + b'"}'
    assert decode_limited(json_decode, raw, 2) == {"data": "[{" * 100}


@pytest.mark.parametrize(
    ("decode", "raw", "is_msgpack"),
    [
        (json_decode, json_text(100_000), False),
        (msgpack_decode, msgpack_text(100_000), True),
    ],
    ids=["json", "msgpack"],
)
def test_a_body_too_deep_for_the_decoder_is_refused_as_too_deep(
    decode: Any, raw: bytes, is_msgpack: bool
) -> None:
    with pytest.raises(NestedTooDeep, match=f"more than {DEFAULT_MAX_DEPTH} deep"):
        decode_limited(decode, raw, DEFAULT_MAX_DEPTH, msgpack=is_msgpack)


def test_decode_limited_lets_the_decoders_other_errors_through() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_limited(json_decode, b"[1,", 5)


def test_decode_limited_caps_the_limit_at_the_ceiling() -> None:
    with pytest.raises(NestedTooDeep, match=f"more than {DEPTH_CEILING} deep"):
        decode_limited(json_decode, json_text(DEPTH_CEILING + 1), DEPTH_CEILING * 2)
    decode_limited(json_decode, json_text(DEPTH_CEILING), DEPTH_CEILING * 2)


# -- check_storable ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None, True, 1.5, "text", 0, 2**64 - 1, -(2**63),
        [2**64 - 1, -(2**63)], {"a": [1, {"b": None}]}, {1: "number keys"}, b"bytes",
        Point(x=[1]),
    ],
    ids=repr,
)  # fmt: skip
def test_values_both_wire_formats_carry_are_storable(value: Any) -> None:
    check_storable(value, "result")


@pytest.mark.parametrize(
    "value",
    [2**64, -(2**63) - 1, [2**70], {"n": -(2**64)}],
    ids=["top-level-big", "top-level-small", "in-a-list", "in-a-dict"],
)
def test_integers_beyond_64_bits_are_refused_with_what_to_do(value: Any) -> None:
    with pytest.raises(InvalidBody, match="result holds an integer beyond 64 bits") as refused:
        check_storable(value, "result")
    assert refused.value.status == 422
    assert "send big numbers as strings" in str(refused.value)


@pytest.mark.parametrize(
    "value",
    [{None: 1}, {(1, 2): 1}, {True: 1}, msgspec.msgpack.Ext(1, b"x"), object()],
    ids=["none-key", "tuple-key", "bool-key", "ext", "object"],
)
def test_what_json_or_msgpack_cannot_carry_is_refused_as_invalid(value: Any) -> None:
    with pytest.raises(InvalidBody, match="payload cannot be stored"):
        check_storable(value, "payload")


def test_check_storable_refuses_a_value_past_the_limit_and_keeps_one_at_it() -> None:
    check_storable(nested(8), "progress", limit=8)
    with pytest.raises(NestedTooDeep, match="progress nests arrays and objects more than 8"):
        check_storable(nested(9), "progress", limit=8)
    check_storable({"s": "[" * 50}, "progress", limit=2)  # openers inside a string


def test_check_storable_uses_the_default_limit_and_the_ceiling() -> None:
    check_storable(nested(DEFAULT_MAX_DEPTH), "result")
    with pytest.raises(NestedTooDeep):
        check_storable(nested(DEFAULT_MAX_DEPTH + 1), "result")
    with pytest.raises(NestedTooDeep, match=f"more than {DEPTH_CEILING} deep"):
        check_storable(nested(DEPTH_CEILING + 1), "result", limit=DEPTH_CEILING * 2)


def test_a_value_too_deep_to_encode_is_refused_as_too_deep() -> None:
    with pytest.raises(NestedTooDeep):
        check_storable(far_too_deep(), "result")
