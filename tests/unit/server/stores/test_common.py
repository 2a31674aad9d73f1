"""The helpers every store engine shares: message ids and the error translation."""

from __future__ import annotations

import pytest

from tidings.protocol.errors import InvalidCursor, StoreClosed, StoreError
from tidings.server.stores.common import parse_seq, store_errors


def test_parse_seq_reads_decimal_ids_and_refuses_anything_else() -> None:
    assert parse_seq("0") == 0
    assert parse_seq("42") == 42
    for bad in ("", "-1", "1.5", "١٢", "0x10", "1" * 19, "1-0"):
        with pytest.raises(InvalidCursor, match="not a message id"):
            parse_seq(bad)


def test_store_errors_translates_the_driver_errors_it_names_and_nothing_else() -> None:
    """The driver's exception becomes the translated StoreError with the original as its
    cause; other exceptions pass unchanged; one instance serves any number of uses."""
    errors = store_errors(
        (KeyError, OSError), lambda exc: StoreClosed(f"gone: {type(exc).__name__}")
    )
    for _ in range(2):
        with pytest.raises(StoreError, match="gone: KeyError") as caught, errors:
            raise KeyError("k")
        assert isinstance(caught.value, StoreClosed)
        assert isinstance(caught.value.__cause__, KeyError)
    with pytest.raises(ValueError, match="mine"), errors:
        raise ValueError("mine")
    with errors:
        pass
