"""Stores, picked by URL scheme; drivers are imported only when their scheme is used."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from tidings.server.stores.base import ChannelStore, Retention, Store

__all__ = ["KNOWN_SCHEMES", "ChannelStore", "Retention", "Store", "open_store", "sqlite_path"]


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

        store = SQLiteStore(sqlite_path(url), retention, synchronous=sqlite_synchronous)
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
    if not scheme:
        raise ValueError(
            f"store URL {url!r} has no scheme: write sqlite:///{url} for a SQLite file, "
            "memory:// or redis://host:port/0"
        )
    raise ValueError(f"unknown store URL {url!r}: the known schemes are {KNOWN_SCHEMES}")


KNOWN_SCHEMES = (
    "sqlite:///relative.db, sqlite:////absolute/path.db, memory://, "
    "redis://host:port/0 and rediss://host:port/0 (TLS)"
)


def sqlite_path(url: str) -> str:
    """The file named by a `sqlite:` URL; ValueError saying the right form or what is missing.

    Only `sqlite:///relative.db` and `sqlite:////absolute/path.db` are accepted:
    `sqlite:/x.db` and `sqlite:x.db` would otherwise both mean ./x.db, though the first
    reads as an absolute path. A file whose directory does not exist is refused here,
    before any lock or connection fails on it.
    """
    parts = urlsplit(url)
    rest = url.split(":", 1)[1]
    if not rest.startswith("//"):
        name = rest.lstrip("/") or "tidings.db"
        raise ValueError(
            f"store URL {url!r} needs three slashes after sqlite: write sqlite:///{name} "
            f"for {name} in the current directory or sqlite:////{name} for /{name}"
        )
    if parts.netloc:
        name = f"{parts.netloc}{parts.path}"
        raise ValueError(
            f"store URL {url!r} names a host ({parts.netloc!r}): a SQLite store is a local "
            f"file, write sqlite:///{name} (relative) or sqlite:////absolute/path.db"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"store URL {url!r}: a sqlite URL takes no ?query or #fragment")
    path = parts.path[1:]
    if not path:
        raise ValueError(
            f"store URL {url!r} names no file: write sqlite:///relative.db or "
            "sqlite:////absolute/path.db"
        )
    if path == ":memory:":
        return path
    if os.path.isdir(path):
        raise ValueError(
            f"store URL {url!r}: {os.path.abspath(path)} is a directory: name a file in it, "
            f"e.g. sqlite:///{path.rstrip('/')}/tidings.db"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(
            f"store URL {url!r}: the directory {folder} does not exist: create it "
            f"(mkdir -p {folder}) or name a file in an existing directory"
        )
    return path
