"""The SQLite store's schedules: a table by name, with the next slot indexed.

    schedules (name PRIMARY KEY, next_run_at REAL, owner TEXT, body BLOB: the msgpack
               Schedule), indexed by next_run_at and by owner (counted against a cap)

One server process writes a file (stores/lockfile.py), through one writer thread: the
compare-and-set of `advance_schedule` is an UPDATE whose WHERE names the body as read.
"""

from __future__ import annotations

import sqlite3

from tidings.protocol.schedules import Schedule
from tidings.server.constants import MAX_SCHEDULES
from tidings.server.stores.base import ScheduleStore
from tidings.server.stores.common import (
    decode_schedule,
    encode_schedule,
    owner_schedules_full,
    schedules_full,
)
from tidings.server.stores.sqlite.core import SQLiteCore

__all__ = ["SQLiteSchedules"]


class SQLiteSchedules(ScheduleStore):
    """Every ScheduleStore method.

    Args:
        core: the store's connections and writer thread.
        cap: the most schedules kept.
    """

    def __init__(self, core: SQLiteCore, cap: int = MAX_SCHEDULES) -> None:
        self._core = core
        self.cap = cap

    async def put_schedule(
        self, schedule: Schedule, read: Schedule | None, owner_cap: int | None = None
    ) -> bool:
        body = encode_schedule(schedule)
        expected = None if read is None else encode_schedule(read)
        cap, owner = self.cap, schedule.owner

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT body FROM schedules WHERE name = ?", (schedule.name,)
            ).fetchone()
            if (None if row is None else bytes(row[0])) != expected:
                return False
            if row is None:
                (count,) = conn.execute("SELECT count(*) FROM schedules").fetchone()
                if count >= cap:
                    raise schedules_full(cap)
            if (
                owner_cap is not None
                and owner is not None
                and (read is None or read.owner != owner)
            ):
                (owned,) = conn.execute(
                    "SELECT count(*) FROM schedules WHERE owner = ?", (owner,)
                ).fetchone()
                if owned >= owner_cap:
                    raise owner_schedules_full(owner, owner_cap)
            conn.execute(
                "INSERT OR REPLACE INTO schedules (name, next_run_at, owner, body)"
                " VALUES (?, ?, ?, ?)",
                (schedule.name, schedule.next_run_at, owner, body),
            )
            return True

        return await self._core.write(op)

    async def get_schedule(self, name: str) -> Schedule | None:
        row = await self._core.read(
            lambda c: c.execute("SELECT body FROM schedules WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else decode_schedule(row[0])

    async def list_schedules(self, after: str = "", limit: int = 1000) -> list[Schedule]:
        rows = await self._core.read(
            lambda c: c.execute(
                "SELECT body FROM schedules WHERE name > ? ORDER BY name LIMIT ?",
                (after, max(limit, 0)),
            ).fetchall()
        )
        return [decode_schedule(r[0]) for r in rows]

    async def delete_schedule(self, name: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount > 0

        return await self._core.write(op)

    async def due_schedules(self, now: float, limit: int) -> list[Schedule]:
        rows = await self._core.read(
            lambda c: c.execute(
                "SELECT body FROM schedules WHERE next_run_at <= ?"
                " ORDER BY next_run_at, name LIMIT ?",
                (now, max(limit, 0)),
            ).fetchall()
        )
        return [decode_schedule(r[0]) for r in rows]

    async def next_schedule_at(self) -> float | None:
        row = await self._core.read(
            lambda c: c.execute("SELECT min(next_run_at) FROM schedules").fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    async def advance_schedule(self, read: Schedule, new: Schedule) -> bool:
        expected, body = encode_schedule(read), encode_schedule(new)

        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE schedules SET next_run_at = ?, body = ? WHERE name = ? AND body = ?",
                (new.next_run_at, body, read.name, expected),
            )
            return cur.rowcount > 0

        return await self._core.write(op)
