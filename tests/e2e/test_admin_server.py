"""The admin's views of a server, against real servers: `GET /v1/admin/server` (secrets
never in it), `GET /v1/admin/users/{name}/credentials` (and revoking one), and the job
counters of `/metrics`.

The secrets are made per run; the Redis whose password must not show is a private
`redis-server --requirepass` started here.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ServerFactory, free_port
from tests.e2e.helpers import cli_ok
from tidings._version import __version__
from tidings.protocol.codecs import parse_time
from tidings.server.http.admin import REDACTED

Json = dict[str, Any]


@pytest.fixture
def redis_with_password(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A private redis-server that requires a password: (its store URL, the password)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: `make test` installs it (Debian redis-server)")
    password = secrets.token_hex(16)
    port = free_port()
    proc = subprocess.Popen(
        [
            binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
            "--save", "", "--appendonly", "no", "--requirepass", password,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"-NOAUTH"):
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        yield f"redis://:{password}@127.0.0.1:{port}/0?prefix=t:", password
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.timeout(60)
def test_the_server_view_describes_the_process_and_never_shows_a_secret(
    tidings_server: ServerFactory, redis_with_password: tuple[str, str]
) -> None:
    store, store_password = redis_with_password
    jwt_secret, app_key = secrets.token_hex(32), secrets.token_hex(32)
    srv = tidings_server(
        store=store,
        args=["--app-jwt-algorithm", "HS256", "--retry-backoff", "0.25"],
        env={"TIDINGS_JWT_SECRET": jwt_secret, "TIDINGS_APP_JWT_KEY": app_key},
    )
    before = time.time()
    r = httpx.get(f"{srv.url}/v1/admin/server", timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    for secret in (store_password, jwt_secret, app_key):
        assert secret not in r.text
    body = r.json()
    assert body["version"] == __version__
    assert body["python"].count(".") == 2
    assert body["pid"] == srv.pid
    started = parse_time(body["started_at"])
    assert started <= before
    assert 0 <= body["uptime"] <= time.time() - started + 1
    assert body["store"] == {
        "engine": "redis",
        "url": store.replace(store_password, REDACTED),
    }
    settings = body["settings"]
    assert settings["store"] == body["store"]["url"]
    assert settings["jwt_secret"] == REDACTED
    assert settings["app_jwt_key"] == REDACTED
    assert settings["ssl_keyfile"] == ""  # a secret that is not set says so
    assert settings["app_jwt_algorithm"] == "HS256"
    assert settings["retry_backoff"] == 0.25
    assert settings["port"] == srv.port


@pytest.mark.timeout(30)
def test_the_server_view_names_the_memory_and_sqlite_engines(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    sqlite = f"sqlite:///{tmp_path / 'tidings.db'}"
    for store, engine in (("memory://", "memory"), (sqlite, "sqlite")):
        srv = tidings_server(store=store)
        body = httpx.get(f"{srv.url}/v1/admin/server", timeout=10).json()
        assert body["store"] == {"engine": engine, "url": store}
        srv.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(url: str, user: str, password: str) -> Json:
    r = httpx.post(
        f"{url}/v1/auth/login", json={"username": user, "password": password}, timeout=10
    )
    assert r.status_code == 200, r.text
    body: Json = r.json()
    return body


@pytest.mark.timeout(60)
def test_a_users_credentials_list_tokens_and_sessions_and_revoking_a_session_ends_it(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'tidings.db'}"
    root_password, alice_password = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    cli_ok("users", "add", "root", "--admin", "--password-stdin", "--store", store,
           stdin=root_password + "\n")  # fmt: skip
    srv = tidings_server(store=store, args=["--require-auth"])
    root = login(srv.url, "root", root_password)["token"]
    with httpx.Client(base_url=srv.url, headers=bearer(root), timeout=10) as admin:
        r = admin.put(
            "/v1/admin/users/alice",
            json={"password": alice_password, "permissions": {"subscribe": ["news.*"]}},
        )
        assert r.status_code == 201, r.text
        r = admin.post("/v1/admin/users/alice/tokens", json={"name": "ci", "expires": 3600})
        assert r.status_code == 201, r.text
        token = r.json()
        forever = admin.post("/v1/admin/users/alice/tokens", json={}).json()
        session = login(srv.url, "alice", alice_password)

        r = admin.get("/v1/admin/users/alice/credentials")
        assert r.status_code == 200, r.text
        assert r.headers["cache-control"] == "no-store"
        for secret in (token["token"], forever["token"], session["token"]):
            assert secret not in r.text
        creds = r.json()["credentials"]
        assert [c["kind"] for c in creds] == ["token", "token", "session"]  # oldest first
        ci, never, sess = creds
        assert (ci["key"], ci["name"], never["key"], never["name"]) == (
            token["key"], "ci", forever["key"], "",
        )  # fmt: skip
        assert never["expires"] is None
        assert abs(parse_time(ci["expires"]) - (parse_time(ci["created"]) + 3600)) < 1
        assert parse_time(sess["expires"]) == pytest.approx(parse_time(session["expires_at"]))
        for c in creds:
            assert set(c) == {"key", "kind", "name", "created", "expires"}

        me = httpx.get(f"{srv.url}/v1/auth/me", headers=bearer(session["token"]), timeout=10)
        assert me.status_code == 200
        assert admin.delete(f"/v1/admin/tokens/{sess['key']}").status_code == 204
        deadline = time.monotonic() + 5
        while True:
            me = httpx.get(f"{srv.url}/v1/auth/me", headers=bearer(session["token"]), timeout=10)
            if me.status_code == 401 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert me.status_code == 401, me.text
        # The session is gone from the list; her tokens still work.
        assert [c["kind"] for c in admin.get("/v1/admin/users/alice/credentials").json()[
            "credentials"
        ]] == ["token", "token"]  # fmt: skip
        me = httpx.get(f"{srv.url}/v1/auth/me", headers=bearer(token["token"]), timeout=10)
        assert (me.status_code, me.json()["user"]) == (200, "alice")

        r = admin.get("/v1/admin/users/nobody/credentials")
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "not_found"
        # Only admins.
        for path in ("/v1/admin/users/alice/credentials", "/v1/admin/server"):
            r = httpx.get(f"{srv.url}{path}", headers=bearer(token["token"]), timeout=10)
            assert r.status_code == 403, r.text
            r = httpx.get(f"{srv.url}{path}", timeout=10)
            assert r.status_code == 401, r.text


def counters(metrics: str) -> dict[str, float]:
    """The job outcome counters of a /metrics text, by series."""
    out: dict[str, float] = {}
    for line in metrics.splitlines():
        if line.startswith(("tidings_jobs_submitted_total", "tidings_jobs_finished_total")):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


@pytest.mark.timeout(60)
def test_metrics_count_the_jobs_this_process_saw_submitted_and_finished(
    tidings_server: ServerFactory, store_url: str
) -> None:
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        zero = counters(http.get("/metrics").text)
        assert zero == {
            "tidings_jobs_submitted_total": 0,
            'tidings_jobs_finished_total{status="succeeded"}': 0,
            'tidings_jobs_finished_total{status="failed"}': 0,
            'tidings_jobs_finished_total{status="cancelled"}': 0,
        }

        def submit(type_: str, **extra: Any) -> Json:
            r = http.post("/v1/jobs", json={"type": type_, "max_attempts": 1}, **extra)
            assert r.status_code == 202, r.text
            body: Json = r.json()
            return body

        once = {"headers": {"Idempotency-Key": "k1"}}
        submit("ok", **once)
        submit("ok", **once)  # a repeat: the same job, not a new one
        submit("bad")
        cancelled = submit("never")
        for type_, outcome in (("ok", {"result": 1}), ("bad", {"error": "no"})):
            [job] = http.post(
                "/v1/workers/lease", json={"types": [type_], "lease": 30, "wait": 0}
            ).json()["jobs"]
            path = "complete" if "result" in outcome else "fail"
            r = http.post(
                f"/v1/jobs/{job['id']}/{path}",
                json={"lease_token": job["lease_token"], **outcome},
            )
            assert r.status_code == 200, r.text
        assert http.post(f"/v1/jobs/{cancelled['id']}/cancel").status_code == 200

        assert counters(http.get("/metrics").text) == {
            "tidings_jobs_submitted_total": 3,
            'tidings_jobs_finished_total{status="succeeded"}': 1,
            'tidings_jobs_finished_total{status="failed"}': 1,
            'tidings_jobs_finished_total{status="cancelled"}': 1,
        }


def samples(metrics: str, name: str) -> dict[tuple[str, str, str], float]:
    """The samples of histogram `name`: (sample name, type, le) -> value."""
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == name:
            for s in family.samples:
                out[(s.name, s.labels["type"], s.labels.get("le", ""))] = s.value
    return out


@pytest.mark.timeout(60)
def test_metrics_time_how_long_jobs_waited_ready_and_ran_by_type(
    tidings_server: ServerFactory, store_url: str
) -> None:
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for type_ in ("slow", "never"):
            r = http.post("/v1/jobs", json={"type": type_, "max_attempts": 1})
            assert r.status_code == 202, r.text
        time.sleep(0.3)  # ready, not leased
        [job] = http.post(
            "/v1/workers/lease", json={"types": ["slow"], "lease": 30, "wait": 0}
        ).json()["jobs"]
        time.sleep(0.2)  # at work
        r = http.post(
            f"/v1/jobs/{job['id']}/complete", json={"lease_token": job["lease_token"], "result": 1}
        )
        assert r.status_code == 200, r.text
        never = http.get("/v1/jobs", params={"type": "never"}).json()["jobs"][0]
        assert http.post(f"/v1/jobs/{never['id']}/cancel").status_code == 200

        text = http.get("/metrics").text
        for name, least in (("tidings_job_wait_seconds", 0.3), ("tidings_job_run_seconds", 0.2)):
            timings = samples(text, name)
            assert timings[(f"{name}_count", "slow", "")] == 1, timings
            assert least <= timings[(f"{name}_sum", "slow", "")] < 30
            assert timings[(f"{name}_bucket", "slow", "0.1")] == 0
            assert timings[(f"{name}_bucket", "slow", "+Inf")] == 1
            # Never leased, never run: the cancelled job is in neither.
            assert not any(key[1] == "never" for key in timings)
