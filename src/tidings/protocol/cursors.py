"""The cursor of a stream that follows several channels (`GET /v1/events`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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
    in its order); empty for an empty cursor. Raises ValueError on a malformed cursor: one
    without the `~` mark, or with another number of positions than `channels`.

    The positions are not checked here: each is a message id the store validates.
    """
    if not text:
        return {}
    if not text.startswith(COMPACT_CURSOR):
        raise ValueError(
            f"malformed cursor {text[:100]!r}: expected the `id:` of an event this stream sent"
        )
    parts = text[len(COMPACT_CURSOR) :].split(".")
    if len(parts) != len(channels):
        raise ValueError(
            f"cursor holds {len(parts)} positions but the stream follows "
            f"{len(channels)} channels: resume with the same channels, in the same "
            "order, as the stream that gave the cursor"
        )
    return {ch: pos or "0" for ch, pos in zip(channels, parts, strict=True)}
