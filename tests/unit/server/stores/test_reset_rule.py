"""The rule every store shares for a cursor that misses history, and the reason it gives."""

from __future__ import annotations

import pytest

from tidings.protocol.messages import RESET_AHEAD, RESET_BEHIND
from tidings.server.stores.base import is_reset, reset_reason


@pytest.mark.parametrize(
    ("after", "first", "last", "reason"),
    [
        (0, 5, 9, None),  # from the oldest: never a gap
        (4, 5, 9, None),  # just before the oldest retained
        (9, 5, 9, None),  # at the newest
        (3, 5, 9, RESET_BEHIND),  # retention dropped message 4
        (10, 5, 9, RESET_AHEAD),  # past the newest: an earlier life of the channel
        (9, 10, 9, None),  # every message expired, cursor at the newest
        (7, 10, 9, RESET_BEHIND),
        (3, 1, 0, RESET_AHEAD),  # the channel is gone or has no message yet
    ],
)
def test_a_cursor_is_reset_behind_or_ahead_of_the_channel(
    after: int, first: int, last: int, reason: str | None
) -> None:
    assert is_reset(after, first, last) is (reason is not None)
    if reason is not None:
        assert reset_reason(after, last) == reason
