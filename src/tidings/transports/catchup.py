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


async def _resolve(svc: ChannelService, channel: str) -> str:
    """The cursor meaning "only what comes next": the channel's newest id, or 0."""
    known, last = svc.hub.last_id(channel)
    if not known:
        res = await svc.store.read(channel, "0", 0)
        last = res.last_id
        svc.hub.note_last(channel, last)
    return last or "0"


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
        sub.cursors[channel] = cursor if cursor is not None else await _resolve(svc, channel)
    while True:
        for channel in requested:
            await _replay(svc, sub, channel, control)
        if sub.overflowed:
            sub.overflowed = False
            continue
        pending = sub.take_pending()
        if not pending:
            # No await since take_pending(): nothing can have been parked in between.
            sub.catching_up = False
            return
        for msg in pending:
            await sub.send_now(sub.frame(msg))
            sub.cursors[msg.channel] = msg.id
