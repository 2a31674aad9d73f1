"""Paging through `GET /v1/channels` and `GET /v1/jobs` on a real server: each page's `next`
sent back as `after` / `before` lists everything once, in order, and ends with `next`
null; bad cursors and limits are refused with a JSON error; a non-admin's channel pages
hold only what they may read."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.helpers import cli_ok
from tidings import Client
from tidings.server.hub import Hub
from tidings.server.jobs import JobService
from tidings.server.stores import open_store
from tidings.server.stores.base import Retention

pytestmark = pytest.mark.timeout(60)

Json = dict[str, Any]


def pages(
    http: httpx.Client, path: str, cursor: str, params: dict[str, Any], most: int = 200
) -> list[Json]:
    """Every page of a listing, following `next` (sent back as `cursor`) until it is null."""
    out: list[Json] = []
    query = dict(params)
    for _ in range(most):
        r = http.get(path, params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        out.append(page)
        if page["next"] is None:
            return out
        query[cursor] = page["next"]
    raise AssertionError(f"{path} {params}: no last page after {most}")


def channel_names(http: httpx.Client, **params: Any) -> list[str]:
    found = pages(http, "/v1/channels", "after", params)
    return [c["name"] for page in found for c in page["channels"]]


def job_ids(http: httpx.Client, **params: Any) -> list[str]:
    found = pages(http, "/v1/jobs", "before", params)
    for page in found:
        assert len(page["jobs"]) <= params.get("limit", 100)
    return [j["id"] for page in found for j in page["jobs"]]


def test_channel_pages_list_every_channel_once_by_name(
    tidings_server: ServerFactory, store_url: str
) -> None:
    srv = tidings_server(store_url)
    inside = sorted(f"pg.{i:02d}" for i in range(23))
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for name in [*inside, "pf.x", "ph", "pg"]:
            assert http.post(f"/v1/channels/{name}/messages", content="x").status_code == 201
        for limit in (1, 5, 22, 23, 1000):
            assert channel_names(http, prefix="pg.", limit=limit) == inside, limit
        # A page that holds the last channels says it is the last: no empty page follows.
        assert len(pages(http, "/v1/channels", "after", {"prefix": "pg.", "limit": 23})) == 1
        assert len(pages(http, "/v1/channels", "after", {"prefix": "pg.", "limit": 22})) == 2
        first = http.get("/v1/channels", params={"prefix": "pg.", "limit": 5}).json()
        assert first["next"] == "pg.04"
        rest = http.get("/v1/channels", params={"prefix": "pg.", "after": "pg.20"}).json()
        assert [c["name"] for c in rest["channels"]] == ["pg.21", "pg.22"]
        assert rest["next"] is None
        assert channel_names(http, limit=7)[:3] == ["pf.x", "pg", "pg.00"]


def test_job_pages_list_every_match_once_newest_first(
    tidings_server: ServerFactory, store_url: str
) -> None:
    srv = tidings_server(store_url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        submitted = []
        for i in range(14):
            r = http.post("/v1/jobs", json={"type": "xy"[i % 2], "payload": i})
            assert r.status_code == 202, r.text
            submitted.append(r.json())
        cancelled = {j["id"] for j in submitted[::3]}
        for job_id in cancelled:
            assert http.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
        newest_first = submitted[::-1]
        for status in (None, "queued", "cancelled", "failed"):
            for type_ in (None, "x", "y"):
                expected = [
                    j["id"]
                    for j in newest_first
                    if type_ in (None, j["type"])
                    and status in (None, "cancelled" if j["id"] in cancelled else "queued")
                ]
                params = {k: v for k, v in (("status", status), ("type", type_)) if v}
                for limit in (1, 4, 100):
                    assert job_ids(http, **params, limit=limit) == expected, (params, limit)
        with Client(srv.url) as sdk:
            assert [j.id for j in sdk.list_jobs(status="queued", type="x", limit=2)] == [
                j["id"] for j in newest_first if j["type"] == "x" and j["id"] not in cancelled
            ][:2]
            assert len(sdk.list_jobs(limit=5)) == 5
            assert len(sdk.list_jobs()) == 14
        page = http.get("/v1/jobs", params={"limit": 14}).json()
        assert len(page["jobs"]) == 14
        assert page["next"] is None


@pytest.mark.parametrize(
    "cursor",
    ["abc", "nan~x", "inf~x", "1.5~", "~123", "1.5", "1" * 300 + "~x"],
)
def test_a_malformed_job_cursor_is_a_400_saying_what_to_send(
    tidings_server: ServerFactory, cursor: str
) -> None:
    srv = tidings_server()
    r = httpx.get(f"{srv.url}/v1/jobs", params={"before": cursor}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == "bad_request"
    assert "`next`" in error["message"]


def test_limits_out_of_bounds_are_refused(tidings_server: ServerFactory) -> None:
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for path, low, high in (("/v1/jobs", 1, 1000), ("/v1/channels", 1, 10_000)):
            for bad in (low - 1, high + 1, "ten"):
                r = http.get(path, params={"limit": bad})
                assert r.status_code == 400, (path, bad, r.text)
                assert r.json()["error"]["code"] == "bad_request"
                assert "limit" in r.json()["error"]["message"]
            for good in (low, high):
                assert http.get(path, params={"limit": good}).status_code == 200


@pytest.fixture
def seeded_store(tmp_path: Path) -> str:
    """A SQLite store with channels on either side of 40 jobs' channels (`job.*`), alice
    (may read `news.*` and `zz.*`) and root (admin)."""
    url = f"sqlite:///{tmp_path / 'paging.db'}"

    async def seed() -> None:
        store = open_store(url, Retention(100, 3600.0))
        await store.start()
        svc = JobService(store, Hub(store.channels.cursor_key))
        try:
            names = [f"{p}.{i}" for p in ("a", "news", "secret", "zz") for i in range(5)]
            await asyncio.gather(*(store.channels.publish(n, n) for n in names))
            for _ in range(40):
                await svc.submit("t")
        finally:
            svc.close()
            await store.close()

    asyncio.run(seed())
    return url


def test_a_non_admins_channel_pages_hold_what_they_may_read_and_no_job_channels(
    tidings_server: ServerFactory, seeded_store: str
) -> None:
    alice_pw, root_pw = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
    cli_ok(
        "users", "add", "alice", "--store", seeded_store, "--password-stdin",
        "--subscribe", "news.*", "--subscribe", "zz.*", stdin=alice_pw + "\n",
    )  # fmt: skip
    cli_ok(
        "users", "add", "root", "--store", seeded_store, "--password-stdin", "--admin",
        stdin=root_pw + "\n",
    )  # fmt: skip
    srv: ServerProcess = tidings_server(seeded_store, args=["--require-auth"])

    def client(user: str, password: str) -> httpx.Client:
        r = httpx.post(
            f"{srv.url}/v1/auth/login", json={"username": user, "password": password}, timeout=10
        )
        assert r.status_code == 200, r.text
        token = r.json()["token"]
        return httpx.Client(
            base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    readable = [f"news.{i}" for i in range(5)] + [f"zz.{i}" for i in range(5)]
    with client("alice", alice_pw) as alice, client("root", root_pw) as root:
        for limit in (1, 3, 4, 11, 50, 1000):
            found = pages(alice, "/v1/channels", "after", {"limit": limit})
            assert [c["name"] for p in found for c in p["channels"]] == readable, limit
            # Pages that reach the job channels go on past them: the 40 of them cost
            # no page of their own.
            assert len(found) <= 20 // limit + 2, (limit, len(found))
        # A page may be short, even empty, while `next` says more follows.
        first = alice.get("/v1/channels", params={"limit": 5}).json()
        assert first == {"channels": [], "next": "a.4"}
        assert channel_names(alice, after="job.0000") == readable
        assert channel_names(alice, after="secret") == readable[5:]
        assert channel_names(alice, prefix="job.") == []
        assert channel_names(alice, prefix="secret.") == []
        # The SDK follows `next` past short pages until it has what was asked for.
        token = alice.headers["Authorization"].removeprefix("Bearer ")
        with Client(srv.url, token=token) as sdk:
            assert [c.name for c in sdk.list_channels(limit=3)] == readable[:3]
            assert [c.name for c in sdk.list_channels()] == readable
            assert [c.name for c in sdk.list_channels(prefix="zz.", limit=2)] == readable[5:7]
        everything = channel_names(root, limit=7)
        assert len(everything) == 60
        assert sum(name.startswith("job.") for name in everything) == 40
        assert everything == sorted(everything)
