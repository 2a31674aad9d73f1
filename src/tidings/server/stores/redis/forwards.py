"""Forwards (bridges' outbound side) in the Redis store: every node sharing the Redis
sees one lease and one set of cursors per bridge.

    {p}fwdlease:{bridge}   string: the node holding the bridge's lease, expiring with it
    {p}fwdcur:{bridge}     hash: channel -> id of the last message forwarded

Taking or renewing a lease is one script call (lua/forward_hold.lua), a release another
(lua/forward_release.lua), and so is a cursor write (lua/forward_cursor.lua), which
writes only while the caller holds the lease: of two nodes that both believed they held
it, only the holder moves a cursor. Expiry is Redis's own (PX): no node's clock counts.
"""

from __future__ import annotations

import math

from redis.commands.core import AsyncScript

from tidings.server.constants import MAX_FORWARD_CHANNELS
from tidings.server.stores.base import ForwardStore, forward_cursors_full
from tidings.server.stores.redis.core import RedisCore, lua

__all__ = ["RedisForwards"]

_HOLD = lua("forward_hold.lua")
_RELEASE = lua("forward_release.lua")
_CURSOR = lua("forward_cursor.lua")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisForwards(ForwardStore):
    """Every ForwardStore method on a string and a hash per bridge.

    Args:
        core: the store's connections and key names.
        cap: the most cursors one bridge keeps.
    """

    _hold: AsyncScript
    _release: AsyncScript
    _cursor: AsyncScript

    def __init__(self, core: RedisCore, cap: int = MAX_FORWARD_CHANNELS) -> None:
        self._core = core
        self._errors = core.errors
        self.cap = cap

    def register_scripts(self) -> None:
        """Register this part's Lua scripts (once the core is open)."""
        self._hold = self._core.script(_HOLD)
        self._release = self._core.script(_RELEASE)
        self._cursor = self._core.script(_CURSOR)

    def _lease(self, bridge: str) -> str:
        return self._core.key("fwdlease", bridge)

    def _cursors(self, bridge: str) -> str:
        return self._core.key("fwdcur", bridge)

    async def hold_lease(self, bridge: str, holder: str, ttl: float) -> bool:
        client = self._core.client
        ms = max(1, math.ceil(ttl * 1000))
        with self._errors:
            reply = await self._hold(keys=[self._lease(bridge)], args=[holder, ms], client=client)
        return bool(reply == 1)

    async def release_lease(self, bridge: str, holder: str) -> None:
        client = self._core.client
        with self._errors:
            await self._release(keys=[self._lease(bridge)], args=[holder], client=client)

    async def get_cursors(self, bridge: str) -> dict[str, str]:
        client = self._core.client
        with self._errors:
            found = await client.hgetall(self._cursors(bridge))
        return {_text(k): _text(v) for k, v in found.items()}

    async def set_cursor(self, bridge: str, holder: str, channel: str, message_id: str) -> bool:
        client = self._core.client
        keys = [self._lease(bridge), self._cursors(bridge)]
        with self._errors:
            reply = await self._cursor(
                keys=keys, args=[holder, channel, message_id, self.cap], client=client
            )
        if reply == -1:
            raise forward_cursors_full(bridge, self.cap)
        return bool(reply == 1)

    async def drop_cursors(self, bridge: str, channels: list[str] | None = None) -> None:
        client = self._core.client
        with self._errors:
            if channels is None:
                await client.delete(self._cursors(bridge))
            elif channels:
                await client.hdel(self._cursors(bridge), *channels)
