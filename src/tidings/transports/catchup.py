"""Bringing a new stream up to date: resolve cursors, replay history, then go live.

Shared by SSE (single and multiplexed) and WebSocket. The subscriber is registered with
the hub *before* the replay, so nothing published meanwhile is missed; what the replay
already sent is skipped when the parked live messages are flushed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tidings.channels import ChannelService
from tidings.hub import Subscriber
from tidings.wire import Reset

__all__ = ["catch_up"]

PAGE = 500

ControlFrame = Callable[[dict[str, Any]], dict[str, Any]]


async def _replay(
    svc: ChannelService, sub: Subscriber, channel: str, control: ControlFrame
) -> None:
    after = sub.cursors[channel] or "0"
    first_page = True
    while True:
        res = await svc.read(channel, after, PAGE)
        if res.reset and first_page:
            await sub.send_now(control(Reset(channel, res.first_id).to_wire()))
        first_page = False
        for msg in res.messages:
            await sub.send_now(sub.frame(msg))
            sub.cursors[channel] = msg.id
        if len(res.messages) < PAGE:
            return
        after = res.messages[-1].id


async def catch_up(
    svc: ChannelService,
    sub: Subscriber,
    requested: dict[str, str | None],
    control: ControlFrame,
) -> None:
    """Replay from each requested cursor (None: from now), then switch the subscriber live.

    Must be called after `hub.add(sub)`; returns with `sub.catching_up` False.
    """
    for channel, cursor in requested.items():
        sub.cursors[channel] = cursor if cursor is not None else await svc.last_id(channel)
    # A stream that asked for "from now" has nothing to replay: what follows its resolved
    # cursor is already parked in `pending`, since it was registered first.
    replay = [ch for ch, cursor in requested.items() if cursor is not None]
    while True:
        for channel in replay:
            await _replay(svc, sub, channel, control)
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
