"""The SQLite store's forwards (bridges' outbound side): two small tables.

    forward_leases  (bridge PRIMARY KEY, holder TEXT, expires REAL: wall-clock seconds)
    forward_cursors (bridge, channel, message_id; PRIMARY KEY (bridge, channel))

One server process writes a file (stores/lockfile.py), through one writer thread: a
lease's compare-and-set and a cursor write fenced by the lease are each one operation of
that thread. Both skip the fsync (`durable=False`): a renewal or a cursor lost to a power
cut only makes the bridge forward a few messages again, which at-least-once allows.
"""

from __future__ import annotations

import sqlite3
import time

from tidings.server.constants import MAX_FORWARD_CHANNELS
from tidings.server.stores.base import ForwardStore, forward_cursors_full
from tidings.server.stores.sqlite.core import SQLiteCore

__all__ = ["SQLiteForwards"]


class SQLiteForwards(ForwardStore):
    """Every ForwardStore method.

    Args:
        core: the store's connections and writer thread.
        cap: the most cursors one bridge keeps.
    """

    def __init__(self, core: SQLiteCore, cap: int = MAX_FORWARD_CHANNELS) -> None:
        self._core = core
        self.cap = cap

    async def hold_lease(self, bridge: str, holder: str, ttl: float) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            now = time.time()
            row = conn.execute(
                "SELECT holder, expires FROM forward_leases WHERE bridge = ?", (bridge,)
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO forward_leases (bridge, holder, expires) VALUES (?, ?, ?)",
                (bridge, holder, now + ttl),
            )
            return True

        return await self._core.write(op, durable=False)

    async def clear_leases(self) -> None:
        """Forget every lease: for a server that has just taken the file's lock, when
        no other process can hold one."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM forward_leases")

        await self._core.write(op, durable=False)

    async def release_lease(self, bridge: str, holder: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM forward_leases WHERE bridge = ? AND holder = ?", (bridge, holder)
            )

        await self._core.write(op, durable=False)

    async def get_cursors(self, bridge: str) -> dict[str, str]:
        rows = await self._core.read(
            lambda c: c.execute(
                "SELECT channel, message_id FROM forward_cursors WHERE bridge = ?", (bridge,)
            ).fetchall()
        )
        return {r[0]: r[1] for r in rows}

    async def set_cursor(self, bridge: str, holder: str, channel: str, message_id: str) -> bool:
        cap = self.cap

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM forward_leases WHERE bridge = ? AND holder = ? AND expires > ?",
                (bridge, holder, time.time()),
            ).fetchone()
            if row is None:
                return False
            updated = conn.execute(
                "UPDATE forward_cursors SET message_id = ? WHERE bridge = ? AND channel = ?",
                (message_id, bridge, channel),
            ).rowcount
            if updated:
                return True
            (count,) = conn.execute(
                "SELECT count(*) FROM forward_cursors WHERE bridge = ?", (bridge,)
            ).fetchone()
            if count >= cap:
                raise forward_cursors_full(bridge, cap)
            conn.execute(
                "INSERT INTO forward_cursors (bridge, channel, message_id) VALUES (?, ?, ?)",
                (bridge, channel, message_id),
            )
            return True

        return await self._core.write(op, durable=False)

    async def drop_cursors(self, bridge: str, channels: list[str] | None = None) -> None:
        def op(conn: sqlite3.Connection) -> None:
            if channels is None:
                conn.execute("DELETE FROM forward_cursors WHERE bridge = ?", (bridge,))
                return
            conn.executemany(
                "DELETE FROM forward_cursors WHERE bridge = ? AND channel = ?",
                [(bridge, c) for c in channels],
            )

        await self._core.write(op, durable=False)
