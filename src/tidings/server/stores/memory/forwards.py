"""The memory store's forwards (bridges' outbound side): leases and cursors in
dictionaries; a lease's expiry is read on this process's monotonic clock."""

from __future__ import annotations

import time
from collections.abc import Callable

from tidings.server.constants import MAX_FORWARD_CHANNELS
from tidings.server.stores.base import ForwardStore, forward_cursors_full

__all__ = ["MemoryForwards"]


class MemoryForwards(ForwardStore):
    """Every ForwardStore method on two dictionaries.

    Args:
        check: called before every operation; raises when the store is not open.
        cap: the most cursors one bridge keeps.
    """

    def __init__(self, check: Callable[[], None], cap: int = MAX_FORWARD_CHANNELS) -> None:
        self._check = check
        self.cap = cap
        # bridge -> (holder, monotonic expiry)
        self._leases: dict[str, tuple[str, float]] = {}
        self._cursors: dict[str, dict[str, str]] = {}

    def _holds(self, bridge: str, holder: str, now: float) -> bool:
        lease = self._leases.get(bridge)
        return lease is not None and lease[0] == holder and lease[1] > now

    async def hold_lease(self, bridge: str, holder: str, ttl: float) -> bool:
        self._check()
        now = time.monotonic()
        lease = self._leases.get(bridge)
        if lease is not None and lease[0] != holder and lease[1] > now:
            return False
        self._leases[bridge] = (holder, now + ttl)
        return True

    async def release_lease(self, bridge: str, holder: str) -> None:
        self._check()
        lease = self._leases.get(bridge)
        if lease is not None and lease[0] == holder:
            del self._leases[bridge]

    async def get_cursors(self, bridge: str) -> dict[str, str]:
        self._check()
        return dict(self._cursors.get(bridge, {}))

    async def set_cursor(self, bridge: str, holder: str, channel: str, message_id: str) -> bool:
        self._check()
        if not self._holds(bridge, holder, time.monotonic()):
            return False
        cursors = self._cursors.setdefault(bridge, {})
        if channel not in cursors and len(cursors) >= self.cap:
            raise forward_cursors_full(bridge, self.cap)
        cursors[channel] = message_id
        return True

    async def drop_cursors(self, bridge: str, channels: list[str] | None = None) -> None:
        self._check()
        if channels is None:
            self._cursors.pop(bridge, None)
            return
        cursors = self._cursors.get(bridge, {})
        for channel in channels:
            cursors.pop(channel, None)
