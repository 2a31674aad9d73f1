"""The stores every contract suite runs on: memory, SQLite (a real file) and Redis (the
session's private redis-server, a key prefix of the test's own)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tidings.server.stores import open_store
from tidings.server.stores.base import Retention, Store

DEFAULT = Retention(max_messages=100, max_age=3600.0)

StoreFactory = Callable[..., Store]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """A factory of unstarted stores of one kind: `make_store(retention=DEFAULT)`. SQLite
    ones of one test share one file, Redis ones one key prefix (so a second store opened
    by the test sees what the first wrote, as a second node or a restart would)."""
    redis_url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def factory(retention: Retention = DEFAULT) -> Store:
        if request.param == "memory":
            return open_store("memory://", retention)
        if request.param == "redis":
            return open_store(redis_url, retention)
        return open_store(f"sqlite:///{tmp_path / 'contract.db'}", retention)

    factory.kind = request.param  # type: ignore[attr-defined]
    return factory
