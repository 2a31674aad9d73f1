"""WebSocket: `/v1/channels/{c}/ws` — messages out as JSON text frames, publishes in.

Frames to the client: a message is the poll message object (`id`, `channel`, `event`,
`data`, `time`); control frames carry a `type`: `reset`, `ack`, `error`, `close`.
Frames from the client: `{"data": any, "event"?: str, "ref"?: any}` publishes to the
channel; the answer is `{"type": "ack", "ref", "id", "channel", "time"}` or
`{"type": "error", "ref", "error": {"code", "message"}}`.

A frame nested deeper than the server's `max_depth` is answered like any other bad
publish frame: an error frame (`nested_too_deep`, with `ref` null: the frame is not read
further) and the socket stays open.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

import msgspec

from tidings.protocol.codecs import JSON_DECODER, encode_json
from tidings.protocol.errors import (
    BadRequest,
    Forbidden,
    InvalidBody,
    PayloadTooLarge,
    TidingsError,
)
from tidings.server.channels import ChannelService
from tidings.server.constants import DEFAULT_MAX_DEPTH
from tidings.server.depth import decode_limited
from tidings.server.http.errors import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_REASON_MAX,
    error_body,
    error_frame,
)
from tidings.server.hub import Subscriber
from tidings.server.transports.kind import StreamKind
from tidings.server.transports.stream import run_stream

__all__ = ["serve_ws"]

log = logging.getLogger("tidings.ws")

_ACCEPT = {"type": "websocket.accept"}


def control_frame(obj: dict[str, Any]) -> dict[str, Any]:
    """A control frame as an ASGI message."""
    return {"type": "websocket.send", "text": encode_json(obj).decode()}


def _ref_of(message: dict[str, Any], max_depth: int) -> Any:
    """The `ref` of a client frame, if it is a JSON object that has one."""
    raw = message.get("text") or message.get("bytes") or b""
    try:
        body = decode_limited(JSON_DECODER.decode, raw, max_depth, "frame")
    except (msgspec.DecodeError, UnicodeDecodeError, TidingsError):
        return None
    return body.get("ref") if isinstance(body, dict) else None


def _publish_frame(raw: str | bytes, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """A client's publish frame, read: refused when too large, malformed, nested too deep
    or not `{"data": ...}`."""
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"frame of {len(raw)} bytes is over the {max_bytes}-byte limit")
    try:
        body = decode_limited(JSON_DECODER.decode, raw, max_depth, "frame")
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f'frame is not valid JSON ({exc}): send {{"data": ...}}') from exc
    if not isinstance(body, dict) or "data" not in body:
        raise InvalidBody('a publish frame is a JSON object with a "data" field')
    return body


async def _client_publish(
    svc: ChannelService,
    channel: str,
    sub: Subscriber,
    raw: str | bytes,
    max_bytes: int,
    max_depth: int,
) -> None:
    ref: Any = None
    try:
        body = _publish_frame(raw, max_bytes, max_depth)
        ref = body.get("ref")
        ack = await svc.publish(channel, body["data"], body.get("event"))
        reply = {"type": "ack", "ref": ref, **msgspec.structs.asdict(ack.to_wire())}
    except TidingsError as exc:
        reply = error_frame(ref, exc)
    except Exception:
        # One bad frame must not kill the socket (nor reach the client as a traceback).
        log.exception("publish from a WebSocket frame on %s failed", channel)
        reply = {
            "type": "error",
            "ref": ref,
            **error_body("internal_error", "the publish failed: retry later"),
        }
    sub.write(control_frame(reply))


def serve_ws(
    svc: ChannelService,
    send: Any,
    receive: Any,
    channel: str,
    cursor: str | None,
    buffer_limit: int,
    max_message_bytes: int,
    until: frozenset[str] | None = None,
    session: str | None = None,
    may_publish: bool = True,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> Coroutine[Any, Any, None]:
    """The coroutine serving one WebSocket (its `websocket.connect` already received).

    With `until` (a job's stream) the socket is read-only: publishes are refused; so are
    they when the principal may not publish to the channel (`may_publish`). A publish
    frame nested deeper than `max_depth` is refused with an error frame.
    """
    sub = Subscriber(svc.hub, StreamKind.WS, send, {channel: None}, buffer_limit, until, session)
    ws = _Socket(svc, sub, channel, until, may_publish, max_message_bytes, max_depth)
    return run_stream(
        svc,
        sub,
        {channel: cursor},
        _ACCEPT,
        receive,
        control_frame,
        ws.closing,
        ws.on_message,
    )


class _Socket:
    """What one open WebSocket does with the client's frames and at its end: slots rather
    than two closures over seven cells (memory per idle socket)."""

    __slots__ = ("channel", "max_bytes", "max_depth", "may_publish", "sub", "svc", "until")

    def __init__(
        self,
        svc: ChannelService,
        sub: Subscriber,
        channel: str,
        until: frozenset[str] | None,
        may_publish: bool,
        max_bytes: int,
        max_depth: int,
    ) -> None:
        self.svc = svc
        self.sub = sub
        self.channel = channel
        self.until = until
        self.may_publish = may_publish
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def on_message(self, message: dict[str, Any]) -> None:
        if self.until is not None or not self.may_publish:
            err = Forbidden(
                "this socket follows a job: it is read-only"
                if self.until is not None
                else f"you may not publish to {self.channel!r}: ask for a publish grant"
            )
            self.sub.write(control_frame(error_frame(_ref_of(message, self.max_depth), err)))
            return
        raw = message.get("text")
        if raw is None:
            raw = message.get("bytes") or b""
        await _client_publish(self.svc, self.channel, self.sub, raw, self.max_bytes, self.max_depth)

    def closing(self, reason: str) -> list[dict[str, Any]]:
        # A job's socket that reached its terminal event is complete (1000); any other
        # end (shutdown, a revoked session, a cut) is the server going away (1001).
        code = CLOSE_NORMAL if self.sub.completed else CLOSE_GOING_AWAY
        reason = reason[:CLOSE_REASON_MAX]
        return [
            control_frame({"type": "close", "reason": reason}),
            {"type": "websocket.close", "code": code, "reason": reason},
        ]
