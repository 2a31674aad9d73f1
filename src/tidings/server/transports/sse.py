"""Server-Sent Events: one channel (`/v1/channels/{c}/events`), several (`/v1/events`),
or a job (`/v1/jobs/{id}/events`, ending after the job's last event).

Raw ASGI on purpose: the hub writes frames with the server's own `send`, so no middleware
wrapper sits between the fan-out loop and the socket (see docs/decisions/0002).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from tidings.protocol.codecs import encode_json
from tidings.protocol.messages import sse_frame
from tidings.server.channels import ChannelService
from tidings.server.http.protocol import chunk_writer
from tidings.server.hub import Subscriber
from tidings.server.transports.kind import StreamKind
from tidings.server.transports.stream import run_stream

__all__ = ["SSE_HEADERS", "serve_sse"]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
_START = {"type": "http.response.start", "status": 200, "headers": SSE_HEADERS}
_END = {"type": "http.response.body", "body": b"", "more_body": False}


def control_frame(obj: dict[str, Any]) -> dict[str, Any]:
    """A control event (`reset`, `close`): no `id:` line, so it does not move the cursor."""
    body = sse_frame(None, str(obj["type"]), encode_json(obj).decode())
    return {"type": "http.response.body", "body": body, "more_body": True}


def _closing(reason: str) -> list[dict[str, Any]]:
    return [control_frame({"type": "close", "reason": reason}), _END]


def serve_sse(
    svc: ChannelService,
    send: Any,
    receive: Any,
    requested: dict[str, str | None],
    multi: bool,
    buffer_limit: int,
    until: frozenset[str] | None = None,
    session: str | None = None,
    whole: bool = False,
) -> Coroutine[Any, Any, None]:
    """The coroutine serving one SSE stream until the client leaves or the server ends it.

    `whole` (`?format=json`): each event's data is the whole message as JSON, as a
    multiplexed stream's always is.
    Must be called from the stream's own task (its subscriber belongs to that task).
    """
    kind = StreamKind.SSE_MULTI if multi else StreamKind.SSE_JSON if whole else StreamKind.SSE
    # A multiplexed stream's frames carry its own cursor: no batch chunk is shared.
    direct = None if multi else chunk_writer(send)
    sub = Subscriber(
        svc.hub, kind, send, dict.fromkeys(requested), buffer_limit, until, session, direct
    )
    # Headers only: the `retry:` hint rides on the first heartbeat, saving a write per connect.
    return run_stream(svc, sub, requested, _START, receive, control_frame, _closing)
