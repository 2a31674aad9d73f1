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


def samples(text: str, name: str) -> dict[str, float]:
    """The samples of one metric: {label text: value}."""
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(rf"^{name}\{{([^}}]*)\}} (\S+)$", text, re.M)
    }


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_job_gauges_count_jobs_by_type_and_status_with_the_types_capped(
    tidings_server: Any, tmp_path: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    """tidings_jobs{type,status} are the store's counts at scrape time (queued, running,
    succeeded move as jobs do); past 50 types the others are summed as `~other`."""
    store = (
        f"sqlite:///{tmp_path}/jobs.db"
        if kind == "sqlite"
        else f"{request.getfixturevalue('redis_proc').url}?prefix={tmp_path.name}:"
    )
    srv = tidings_server(store)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for _ in range(3):
            assert http.post("/v1/jobs", json={"type": "mail"}).status_code == 202
        text = http.get("/metrics").text
        assert samples(text, "tidings_jobs")['status="queued",type="mail"'] == 3
        assert samples(text, "tidings_jobs")['status="running",type="mail"'] == 0

        leased = http.post("/v1/workers/lease", json={"types": ["mail"], "max": 2}).json()
        first = leased["jobs"][0]
        done = {"lease_token": first["lease_token"], "result": "sent"}
        assert http.post(f"/v1/jobs/{first['id']}/complete", json=done).status_code == 200
        jobs = samples(http.get("/metrics").text, "tidings_jobs")
        assert jobs['status="queued",type="mail"'] == 1
        assert jobs['status="running",type="mail"'] == 1
        assert jobs['status="succeeded",type="mail"'] == 1

        for i in range(55):
            assert http.post("/v1/jobs", json={"type": f"bulk.{i:02d}"}).status_code == 202
        text = http.get("/metrics").text
    jobs = samples(text, "tidings_jobs")
    types = {labels.split('type="')[1].rstrip('"') for labels in jobs}
    assert len(types) == 51  # 50 types of their own, and ~other
    assert "mail" in types  # the most unfinished jobs: kept
    assert "~other" in types
    assert counter(text, "tidings_job_types") == 56
    assert sum(v for k, v in jobs.items() if 'status="queued"' in k) == 1 + 55
