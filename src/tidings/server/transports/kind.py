"""`StreamKind`: how a live stream frames the messages it carries.

The hub encodes each fanned-out batch once per kind and shares the frames among every
subscriber of that kind, so the kind is what a subscriber's frames are keyed by.
"""

from __future__ import annotations

import enum

__all__ = ["StreamKind", "ws_text_frame"]


class StreamKind(enum.StrEnum):
    """A live stream's framing. A `str` enum: its value is the name logs and the
    `tidings_open_streams` metric's `transport` label show (`sse`, `ws`)."""

    SSE = "sse"  # one channel's Server-Sent Events; each `id:` is the message id
    # The same, each event's `data:` the whole message as JSON (`?format=json`): a
    # client learns the data's type (the string "1" and the number 1 differ) and its time.
    SSE_JSON = "sse-json"
    SSE_MULTI = "sse-multi"  # several channels' SSE; each `id:` is the stream's cursor
    WS = "ws"  # WebSocket text frames, one message each


def ws_text_frame(text: str) -> bytes:
    """One whole, unmasked WebSocket text frame (RFC 6455 §5.2), as a server sends it:
    the same bytes for every client without extensions, so built once per message."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = b"\x81\x7e" + n.to_bytes(2, "big")
    else:
        head = b"\x81\x7f" + n.to_bytes(8, "big")
    return head + payload
