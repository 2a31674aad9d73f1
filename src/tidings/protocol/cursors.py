"""The cursor of a stream that follows several channels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tidings.protocol.messages import valid_channel

COMPACT_CURSOR = "~"


def encode_composite_cursor(positions: Mapping[str, str | None]) -> str:
    """Cursor of a multiplexed stream: `~`, then the position in each channel, in the
    stream's channel order, joined by `.`; an empty position is 0 (no message yet).

    It names no channel: the stream's URL does, and EventSource resends that URL unchanged
    with the cursor. So it grows by one message id and a dot per channel, whatever the
    channel names. The leading `~` (never in a channel name) marks this form; another
    form would take another mark.
    """
    return COMPACT_CURSOR + ".".join(
        "" if pos is None or pos == "0" else pos for pos in positions.values()
    )


def decode_composite_cursor(text: str, channels: Sequence[str]) -> dict[str, str]:
    """The position a multiplexed stream's cursor gives each of `channels` (the stream's,
    in its order); raises ValueError on a malformed cursor.

    The compact form (`encode_composite_cursor`) must hold one position per channel. The
    older `channel=id,...` form is matched by name: a channel it does not name is absent
    from the answer, a channel the stream does not follow is ignored.
    """
    if not text:
        return {}
    if text.startswith(COMPACT_CURSOR):
        parts = text[len(COMPACT_CURSOR) :].split(".")
        if len(parts) != len(channels):
            raise ValueError(
                f"cursor holds {len(parts)} positions but the stream follows "
                f"{len(channels)} channels: resume with the same channels, in the same "
                "order, as the stream that gave the cursor"
            )
        return {ch: pos or "0" for ch, pos in zip(channels, parts, strict=True)}
    named: dict[str, str] = {}
    for part in text.split(","):
        ch, sep, pos = part.partition("=")
        if not sep or not valid_channel(ch) or not pos:
            raise ValueError(
                f"malformed cursor part {part[:100]!r}: expected an id this stream sent"
            )
        named[ch] = pos
    return {ch: named[ch] for ch in channels if ch in named}
