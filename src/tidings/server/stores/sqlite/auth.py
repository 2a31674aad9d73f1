"""The SQLite store's users and credentials.

Read on every call, never cached: `tidings users` and `tidings tokens` write them from
another process into the same file while a server has it open.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from tidings.server.principals import Credential, User
from tidings.server.stores.base import AuthStore
from tidings.server.stores.common import decode_credential, decode_user, encode_msgpack
from tidings.server.stores.sqlite.core import SQLiteCore

__all__ = ["SQLiteAuth"]


class SQLiteAuth(AuthStore):
    """Every AuthStore method."""

    def __init__(self, core: SQLiteCore) -> None:
        self._core = core

    async def put_user(self, user: User) -> None:
        body = encode_msgpack(user)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO users (name, body) VALUES (?, ?)", (user.name, body)
            )

        await self._core.write(op)

    async def get_user(self, name: str) -> User | None:
        row = await self._core.read(
            lambda c: c.execute("SELECT body FROM users WHERE name = ?", (name,)).fetchone()
        )
        return None if row is None else decode_user(row[0])

    async def list_users(self) -> list[User]:
        rows = await self._core.read(
            lambda c: c.execute("SELECT body FROM users ORDER BY name").fetchall()
        )
        return [decode_user(r[0]) for r in rows]

    async def delete_user(self, name: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM users WHERE name = ?", (name,))
            conn.execute("DELETE FROM credentials WHERE user = ?", (name,))
            return cur.rowcount > 0

        return await self._core.write(op)

    async def put_credential(self, cred: Credential) -> None:
        body = encode_msgpack(cred)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO credentials (key, user, expires, created, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (cred.key, cred.user, cred.expires, cred.created, body),
            )

        await self._core.write(op)

    async def get_credential(self, key: str) -> Credential | None:
        now = time.time()
        row = await self._core.read(
            lambda c: c.execute(
                "SELECT body FROM credentials WHERE key = ? AND (expires IS NULL OR expires > ?)",
                (key, now),
            ).fetchone()
        )
        return None if row is None else decode_credential(row[0])

    async def list_credentials(self, user: str | None = None) -> list[Credential]:
        now = time.time()
        where = "(expires IS NULL OR expires > ?)"
        args: list[Any] = [now]
        if user is not None:
            where += " AND user = ?"
            args.append(user)
        rows = await self._core.read(
            lambda c: c.execute(
                f"SELECT body FROM credentials WHERE {where} ORDER BY created, key", args
            ).fetchall()
        )
        return [decode_credential(r[0]) for r in rows]

    async def delete_credential(self, key: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM credentials WHERE key = ?", (key,)).rowcount > 0

        return await self._core.write(op)

    async def live_credentials(self, keys: list[str], now: float) -> set[str]:
        def op(conn: sqlite3.Connection) -> set[str]:
            live: set[str] = set()
            for i in range(0, len(keys), 500):  # under SQLite's bound-parameter limit
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                live.update(
                    row[0]
                    for row in conn.execute(
                        f"SELECT key FROM credentials WHERE key IN ({marks})"
                        " AND (expires IS NULL OR expires > ?)",
                        (*chunk, now),
                    )
                )
            return live

        return await self._core.read(op) if keys else set()

    async def sweep_credentials(self, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            return conn.execute("DELETE FROM credentials WHERE expires <= ?", (now,)).rowcount

        # Forgetting what already expired acknowledges nothing: no fsync needed.
        return await self._core.write(op, durable=False)
