"""`POST /v1/admin/lab` against a real server under --require-auth: a tiny lab's report
and chart, one lab at a time (409), admins only (403), a bad body refused (422 saying
what to fix), and the lab's own token revoked when it ends."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.e2e.helpers import cli_ok
from tests.e2e.test_admin_server import bearer, login

TINY = {"clients": 2, "rate": 2, "seconds": 1, "patterns": ["poll", "sse"]}


@pytest.mark.timeout(120)
def test_an_admin_runs_a_tiny_lab_one_at_a_time_and_others_are_refused(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'tidings.db'}"
    password = secrets.token_urlsafe(16)
    cli_ok("users", "add", "root", "--admin", "--password-stdin", "--store", store,
           stdin=password + "\n")  # fmt: skip
    srv = tidings_server(store=store, args=["--require-auth"])
    root = bearer(login(srv.url, "root", password)["token"])
    with httpx.Client(base_url=srv.url, headers=root, timeout=90) as admin:
        r = admin.put("/v1/admin/users/alice", json={"password": password, "permissions": {}})
        assert r.status_code == 201, r.text
        alice = bearer(login(srv.url, "alice", password)["token"])
        r = httpx.post(f"{srv.url}/v1/admin/lab", json=TINY, headers=alice, timeout=10)
        assert r.status_code == 403, r.text

        for bad, field in (
            ({"clients": 51}, '"clients"'),
            ({"seconds": 0}, '"seconds"'),
            ({"patterns": ["carrier-pigeon"]}, "carrier-pigeon"),
            ({"patterns": []}, '"patterns"'),
            ({"clients": 2, "extra": 1}, "extra"),
        ):
            r = admin.post("/v1/admin/lab", json=bad)
            assert r.status_code == 422, (bad, r.text)
            assert field in r.json()["error"]["message"], r.text

        # Two labs asked at once: one runs, the other is refused while it does.
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: admin.post("/v1/admin/lab", json=TINY), range(2)))
        assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
        done = next(a for a in answers if a.status_code == 200)
        refused = next(a for a in answers if a.status_code == 409)
        assert "a lab is running" in refused.json()["error"]["message"]
        body = done.json()
        (point,) = body["report"]["points"]
        assert [r["pattern"] for r in point["results"]] == ["poll", "sse"]
        assert all(r["delivered"] > 0 for r in point["results"]), point
        assert "chart" not in body["report"]  # the child's temporary path is not shown
        assert body["svg"].startswith("<svg")
        assert done.headers["cache-control"] == "no-store"

        # The token made for the lab is gone: only root's login session is left.
        r = admin.get("/v1/admin/users/root/credentials")
        assert [c["kind"] for c in r.json()["credentials"]] == ["session"], r.text
