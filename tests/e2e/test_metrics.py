"""/metrics of a real server: the store's write counters where the store counts them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(60)


def counter(text: str, name: str) -> float | None:
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return None if found is None else float(found.group(1))


def test_sqlite_commits_and_writes_are_counted(tidings_server: Any, tmp_path: Path) -> None:
    srv = tidings_server(f"sqlite:///{tmp_path}/metrics.db")
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for i in range(3):
            assert http.post("/v1/channels/m/messages", content=f"m{i}").status_code == 201
        text = http.get("/metrics").text
    writes = counter(text, "tidings_store_writes_total")
    commits = counter(text, "tidings_store_commits_total")
    assert writes is not None and writes >= 3
    assert commits is not None and 1 <= commits <= writes


def test_a_store_without_write_counters_shows_none(tidings_server: Any) -> None:
    srv = tidings_server("memory://")
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.post("/v1/channels/m/messages", content="x").status_code == 201
        text = http.get("/metrics").text
    assert "tidings_store_writes" not in text
