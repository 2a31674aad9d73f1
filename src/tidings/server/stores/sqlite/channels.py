"""The SQLite store's channels: messages in one table, the writer thread's ChannelLog
for sequence numbers, idempotency keys in a table of their own."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from tidings.protocol.messages import Message
from tidings.server.constants import IDEMPOTENCY_TTL
from tidings.server.stores.base import (
    ChannelInfo,
    ChannelStore,
    Published,
    ReadResult,
    Retention,
    is_reset,
)
from tidings.server.stores.common import decode_json, encode_json, parse_seq
from tidings.server.stores.sqlite.core import ChannelLog, SQLiteCore

__all__ = ["SQLiteChannels"]


class SQLiteChannels(ChannelStore):
    """Every ChannelStore method: writes through the core's writer thread, reads on its
    reader thread."""

    def __init__(self, core: SQLiteCore, log: ChannelLog) -> None:
        super().__init__(log.default_retention)
        self._core = core
        self._log = log

    def cursor_key(self, message_id: str) -> int:
        return parse_seq(message_id)

    async def publish(
        self,
        channel: str,
        data: Any,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> Published:
        blob = encode_json(data)
        log = self._log

        def op(conn: sqlite3.Connection) -> Published:
            now = time.time()
            row = None
            if idempotency_key is not None:
                row = conn.execute(
                    "SELECT i.seq, i.time, m.data, m.event FROM idempotency i"
                    " LEFT JOIN messages m ON m.channel = i.channel AND m.seq = i.seq"
                    " WHERE i.channel = ? AND i.key = ? AND i.expires > ?",
                    (channel, idempotency_key, now),
                ).fetchone()
            st = log.channel(conn, channel)
            if row is not None:
                seq, ts, old_blob, old_event = row
                first = Message(
                    id=str(seq),
                    channel=channel,
                    data=decode_json(old_blob) if old_blob is not None else data,
                    event=old_event if old_blob is not None else event,
                    time=ts,
                )
                keep = log.keep(st)
                return Published(first, str(seq - 1) if seq > 1 else None, keep, duplicate=True)
            published = log.append(conn, channel, data, blob, event, now)
            if idempotency_key is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency (channel, key, seq, time, expires)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (channel, idempotency_key, st.last_seq, now, now + IDEMPOTENCY_TTL),
                )
            return published

        return await self._core.write(op)

    async def read(self, channel: str, after: str, limit: int) -> ReadResult:
        after_seq = parse_seq(after)

        def op(conn: sqlite3.Connection) -> ReadResult:
            conn.execute("BEGIN")
            try:
                row = conn.execute(
                    "SELECT last_seq FROM channels WHERE name = ?", (channel,)
                ).fetchone()
                if row is None:
                    return ReadResult([], reset=after_seq != 0, first_id=None, last_id=None)
                last = row[0]
                low = conn.execute(
                    "SELECT min(seq) FROM messages WHERE channel = ?", (channel,)
                ).fetchone()[0]
                first = low if low is not None else last + 1
                reset = is_reset(after_seq, first, last)
                rows = conn.execute(
                    "SELECT seq, time, event, data FROM messages"
                    " WHERE channel = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (channel, 0 if reset else after_seq, limit),
                ).fetchall()
            finally:
                conn.execute("COMMIT")
            msgs = [
                Message(id=str(s), channel=channel, data=decode_json(d), event=e, time=t)
                for s, t, e, d in rows
            ]
            return ReadResult(
                msgs,
                reset=reset,
                first_id=str(low) if low is not None else None,
                last_id=str(last) if last else None,
            )

        return await self._core.read(op)

    def _info_rows(
        self, conn: sqlite3.Connection, where: str, args: tuple[Any, ...]
    ) -> list[ChannelInfo]:
        # A channel's retained sequence numbers are contiguous up to its last_seq (messages
        # leave from the front only: by count in ChannelLog.flush, by age in `sweep`), so
        # its oldest one gives the count without reading the others.
        rows = conn.execute(
            "SELECT c.name, c.last_seq, c.created, c.max_messages, c.max_age,"
            " (SELECT min(seq) FROM messages m WHERE m.channel = c.name)"
            f" FROM channels c {where}",
            args,
        ).fetchall()
        out = []
        for name, last, created, max_messages, max_age, low in rows:
            custom = max_messages is not None
            out.append(
                ChannelInfo(
                    name=name,
                    first_id=str(low) if low is not None else None,
                    last_id=str(last) if last else None,
                    messages=0 if low is None else last - low + 1,
                    created=created,
                    retention=Retention(max_messages, max_age)
                    if custom
                    else self.default_retention,
                    custom_retention=custom,
                )
            )
        return out

    async def info(self, channel: str) -> ChannelInfo | None:
        rows = await self._core.read(lambda c: self._info_rows(c, "WHERE c.name = ?", (channel,)))
        return rows[0] if rows else None

    async def list_channels(
        self, prefix: str = "", limit: int = 1000, after: str = ""
    ) -> list[ChannelInfo]:
        # One range of the primary key: from the later of `prefix` and `after` (one lower
        # bound, so the search starts there) to below prefix + U+10FFFF.
        low = "c.name > ?" if after >= prefix else "c.name >= ?"
        return await self._core.read(
            lambda c: self._info_rows(
                c,
                f"WHERE {low} AND c.name < ? ORDER BY c.name LIMIT ?",
                (max(after, prefix), prefix + "\U0010ffff", max(0, limit)),
            )
        )

    async def delete(self, channel: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            self._log.forget(channel)
            cur = conn.execute("DELETE FROM channels WHERE name = ?", (channel,))
            conn.execute("DELETE FROM messages WHERE channel = ?", (channel,))
            conn.execute("DELETE FROM idempotency WHERE channel = ?", (channel,))
            return cur.rowcount > 0

        return await self._core.write(op)

    async def set_retention(self, channel: str, retention: Retention | None) -> ChannelInfo:
        await self._core.write(lambda conn: self._log.set_retention(conn, channel, retention))
        info = await self.info(channel)
        if info is None:  # deleted between the write and the read
            raise RuntimeError(f"channel {channel!r} vanished while its retention was set")
        return info

    async def sweep(self, now: float) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            trimmed = []
            rows = conn.execute(
                "SELECT c.name, coalesce(c.max_age, ?),"
                " (SELECT time FROM messages m WHERE m.channel = c.name ORDER BY seq LIMIT 1)"
                " FROM channels c WHERE c.name < 'job.' OR c.name >= 'job/'",  # not job.*
                (self.default_retention.max_age,),
            ).fetchall()
            for name, max_age, oldest in rows:
                if oldest is not None and oldest < now - max_age:
                    # From the front up to the first message young enough (as Redis's
                    # sweep does): the retained ids stay contiguous even when the clock
                    # stepped back between two publishes.
                    conn.execute(
                        "DELETE FROM messages WHERE channel = ? AND seq < coalesce("
                        "(SELECT seq FROM messages WHERE channel = ? AND time >= ?"
                        " ORDER BY seq LIMIT 1), 9223372036854775807)",
                        (name, name, now - max_age),
                    )
                    trimmed.append(name)
            conn.execute("DELETE FROM idempotency WHERE expires <= ?", (now,))
            return trimmed

        return await self._core.write(op)
