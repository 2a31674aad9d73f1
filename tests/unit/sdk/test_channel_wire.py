"""A channel as the SDK decodes the server's answer: `created` is RFC 3339, only."""

from __future__ import annotations

import msgspec
import pytest

from tidings.sdk.client import _CHANNEL, _channel_info


def test_created_is_an_rfc3339_time_and_nothing_else() -> None:
    info = _channel_info(_CHANNEL.decode(b'{"name":"a","created":"1970-01-01T00:00:01.500000Z"}'))
    assert info.created == pytest.approx(1.5)
    for created in (b"1.5", b"null"):
        with pytest.raises(msgspec.ValidationError, match="created"):
            _CHANNEL.decode(b'{"name":"a","created":' + created + b"}")
