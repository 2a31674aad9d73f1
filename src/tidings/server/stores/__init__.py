"""Stores, picked by URL scheme; drivers are imported only when their scheme is used."""

from __future__ import annotations

from urllib.parse import urlsplit

from tidings.server.stores.base import ChannelStore, Retention, Store

__all__ = ["ChannelStore", "Retention", "Store", "open_store"]


def open_store(
    url: str, retention: Retention, sqlite_synchronous: str = "FULL", *, exclusive: bool = True
) -> Store:
    """Build the store named by `url` (not started yet).

    `sqlite:///relative.db`, `sqlite:////absolute/path.db`, `memory://`,
    `redis://host:port/db[?prefix=tidings:]`.

    `exclusive` (a server's store): a SQLite file is locked here already, so a second
    server on it is refused (StoreLocked, an OSError) before it binds its port or opens
    the database. Commands that only manage users and tokens pass False.
    """
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme == "memory":
        from tidings.server.stores.memory import MemoryStore

        return MemoryStore(retention)
    if scheme == "sqlite":
        from tidings.server.stores.sqlite import SQLiteStore

        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path:
            raise ValueError(
                f"store URL {url!r}: write sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        store = SQLiteStore(path, retention, synchronous=sqlite_synchronous)
        if exclusive:
            store.lock()
        return store
    if scheme in ("redis", "rediss"):
        try:
            from tidings.server.stores.redis import RedisStore
        except ImportError as exc:  # redis-py is an extra
            raise ValueError(
                f"store URL {url!r} needs redis-py: pip install 'tidings[redis]' ({exc})"
            ) from None
        return RedisStore(url, retention)
    raise ValueError(
        f"unknown store URL {url!r}: use sqlite:///path.db, memory:// or redis://host:port/0"
    )
