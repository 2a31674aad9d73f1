"""Server-Sent Events: one channel (`/v1/channels/{c}/events`) or several (`/v1/events`).

Raw ASGI on purpose: the hub writes frames with the server's own `send`, so no middleware
wrapper sits between the fan-out loop and the socket (see docs/decisions/0002).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from tidings.channels import ChannelService
from tidings.hub import KIND_SSE, KIND_SSE_MULTI, Subscriber
from tidings.transports.catchup import catch_up
from tidings.wire import encode_json, sse_frame

__all__ = ["SSE_HEADERS", "serve_sse"]

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
# Time allowed to write the closing frame to a stream the server ends.
CLOSE_TIMEOUT = 2.0


def control_frame(obj: dict[str, Any]) -> dict[str, Any]:
    """A control event (`reset`, `close`): no `id:` line, so it does not move the cursor."""
    body = sse_frame(None, str(obj["type"]), encode_json(obj).decode())
    return {"type": "http.response.body", "body": body, "more_body": True}


async def serve_sse(
    svc: ChannelService,
    send: Any,
    receive: Any,
    requested: dict[str, str | None],
    multi: bool,
    buffer_limit: int,
) -> None:
    """Serve one SSE stream until the client leaves or the server ends it."""
    # Headers only: the `retry:` hint rides on the first heartbeat, saving a write per connect.
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    sub = Subscriber(
        svc.hub, KIND_SSE_MULTI if multi else KIND_SSE, send, dict.fromkeys(requested), buffer_limit
    )
    svc.hub.add(sub)
    try:
        await catch_up(svc, sub, requested, control_frame)
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
    except asyncio.CancelledError:
        if sub.close_reason is None:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        # The server ended this stream (shutdown, channel deleted): say why, then finish.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                if sub.drainer is None and not (sub.transport and sub.transport.is_closing()):
                    await send(control_frame({"type": "close", "reason": sub.close_reason}))
                await send({"type": "http.response.body", "body": b"", "more_body": False})
    finally:
        sub.close("stream ended", abort=False)
