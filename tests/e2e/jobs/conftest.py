"""Fixtures of the jobs API tests.

One real server per store (`server`, shared by the whole folder, retry backoff 0.05 s);
every test submits jobs of its own fresh type and leases only that type, so tests never
take each other's jobs. Clients are real: httpx for request/response and SSE, the
`websockets` client for the job's WebSocket.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerProcess


@pytest.fixture(scope="package", params=["memory", "sqlite", "redis"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per store for this folder's tests, which each use their own job types."""
    tmp: Path = tmp_path_factory.mktemp(f"jobs-{request.param}")
    store = {
        "memory": "memory://",
        "sqlite": f"sqlite:///{tmp / 'tidings.db'}",
        "redis": f"{request.getfixturevalue('redis_proc').url}?prefix={tmp.name}:",
    }[request.param]
    srv = ServerProcess(store, tmp / "server.log", [], {"TIDINGS_RETRY_BACKOFF": "0.05"})
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture
def jtype() -> str:
    """A job type no other test uses."""
    return f"t.{uuid.uuid4().hex[:12]}"
