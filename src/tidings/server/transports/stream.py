"""A stream's life, shared by SSE (single and multiplexed) and WebSocket.

Register with the hub, catch up (resolve cursors, replay history), go live, and end —
because the client left, or because the server ended it (shutdown, channel deleted, a
job's last event, a slow consumer cut).

The subscriber is registered *before* the replay, so nothing published meanwhile is
missed; what the replay already sent is skipped when the parked live messages are flushed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from tidings.protocol.errors import TidingsError
from tidings.protocol.messages import Reset
from tidings.server.channels import ChannelService
from tidings.server.http.errors import CLOSE_NORMAL, close_socket
from tidings.server.hub import Subscriber
from tidings.server.stores.base import reset_reason

__all__ = ["catch_up", "end_at_once", "resolve", "run_stream"]

log = logging.getLogger("tidings.streams")

PAGE = 500
# Time allowed to drain and write the closing frames of a stream the server ends.
CLOSE_TIMEOUT = 2.0
_DISCONNECTS = ("http.disconnect", "websocket.disconnect")

ControlFrame = Callable[[dict[str, Any]], dict[str, Any]]


async def end_at_once(send: Any, websocket: bool, reason: str) -> None:
    """Answer a stream that has nothing left to send (a finished job resumed at its end).

    SSE: 204 No Content, which tells an EventSource to stop reconnecting (HTML's
    "fail the connection"); a 200 with no events would have it reconnect forever. A
    WebSocket (its connect already received) is accepted, then closed 1000 with `reason`.
    """
    if websocket:
        await close_socket(send, CLOSE_NORMAL, reason)
        return
    await send(
        {"type": "http.response.start", "status": 204, "headers": [(b"cache-control", b"no-cache")]}
    )
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _replay(
    svc: ChannelService, sub: Subscriber, channel: str, control: ControlFrame
) -> None:
    after = sub.cursors[channel] or "0"
    first_page = True
    while True:
        res = await svc.read(channel, after, PAGE)
        if res.reset and first_page:
            key = svc.store.channels.cursor_key
            reason = reset_reason(key(after), key(res.last_id) if res.last_id else 0)
            await sub.send_now(control(Reset(channel, res.first_id, reason).to_wire()))
        first_page = False
        for msg in res.messages:
            await sub.send_now(sub.frame(msg))
            sub.cursors[channel] = msg.id
            sub.check_until(msg)
            if sub.close_reason is not None:
                return
        if len(res.messages) < PAGE:
            return
        after = res.messages[-1].id


async def resolve(svc: ChannelService, sub: Subscriber, requested: dict[str, str | None]) -> None:
    """Set each cursor: the one asked for, or the channel's newest id for "from now"."""
    for channel, cursor in requested.items():
        sub.cursors[channel] = cursor if cursor is not None else await svc.last_id(channel)


async def catch_up(
    svc: ChannelService,
    sub: Subscriber,
    requested: dict[str, str | None],
    control: ControlFrame,
) -> None:
    """Replay from each requested cursor (None: from now), then switch the subscriber live.

    Must be called after `hub.add(sub)` and `resolve()`; returns with `sub.catching_up`
    False, or early with `sub.close_reason` set when the stream reached an `until` event.
    """
    # A stream that asked for "from now" has nothing to replay: what follows its resolved
    # cursor is already parked in `pending`, since it was registered first.
    replay = [ch for ch, cursor in requested.items() if cursor is not None]
    while True:
        for channel in replay:
            await _replay(svc, sub, channel, control)
            if sub.close_reason is not None:
                return
        if sub.overflowed:
            # Parked messages were dropped; the store has them: replay every channel.
            sub.overflowed = False
            replay = list(requested)
            continue
        pending = sub.take_pending()
        if not pending:
            # No await since take_pending(): nothing can have been parked in between.
            sub.catching_up = False
            return
        for msg in pending:
            await sub.send_now(sub.frame(msg))
            sub.cursors[msg.channel] = msg.id
            sub.check_until(msg)
            if sub.close_reason is not None:
                return


async def run_stream(
    svc: ChannelService,
    sub: Subscriber,
    requested: dict[str, str | None],
    start: dict[str, Any],
    receive: Any,
    control: ControlFrame,
    closing: Callable[[str], list[dict[str, Any]]],
    on_message: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> None:
    """Serve `sub` until the client leaves (return) or the server ends the stream.

    `start` (the response head, or the WebSocket accept) is sent only once the stream is
    registered and its cursors resolved: a client that publishes as soon as it sees the
    stream open is sure to receive its own message. An error before that propagates (the
    caller answers it); after it, the stream is ended with the error as its reason.
    `on_message` gets what the client sends (WebSocket frames); `closing(reason)` gives the
    frames that end a stream the server closes.
    """
    svc.hub.add(sub)
    try:
        for channel in requested:  # shared store: follow from before the history is read
            await svc.watch(channel)
        await resolve(svc, sub, requested)
    except BaseException:
        sub.close("stream failed to start", abort=False)
        raise
    try:
        await sub.send(start)
        await catch_up(svc, sub, requested, control)
        while sub.close_reason is None:
            message = await receive()
            if message["type"] in _DISCONNECTS:
                return
            if on_message is not None:
                await on_message(message)
    except asyncio.CancelledError:
        if sub.close_reason is None:
            raise
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    except TidingsError as exc:
        log.warning("ending a stream of %s: %s", list(sub.cursors), exc.message)
        sub.close(f"server error: {exc.message}; reconnect with your last id", abort=False)
    finally:
        if sub.close_reason is None:
            sub.close("stream ended", abort=False)
    # The server ended the stream: let frames already handed over drain, say why, finish.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            if sub.drainer is not None:
                await asyncio.wait((sub.drainer,))
            if sub.transport is not None and sub.transport.is_closing():
                # Gone or aborted: wait until the server has noticed, so that it counts the
                # response as ended by the client rather than abandoned by us.
                while (await receive())["type"] not in _DISCONNECTS:
                    pass
            else:
                for frame in closing(sub.close_reason or "stream ended"):
                    await sub.send(frame)
