"""Login sessions end to end, in each session mode (database, jwt, memory): logging in
gates publishing, a logout or an expiry makes the token 401 at once, and the session's open
streams, parked long polls and parked leases end with it."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.e2e.auth.helpers import (
    ALICE_PASSWORD,
    BOB_PASSWORD,
    SESSION_MODES,
    assert_error,
    auth_server,
    bearer,
    login,
    login_response,
    next_event,
    send,
)
from tests.e2e.helpers import cli_ok
from tests.e2e.test_channels_api import RawSSE


@pytest.mark.timeout(40)
@pytest.mark.parametrize("sessions", SESSION_MODES)
def test_login_gates_publishing_and_only_memory_sessions_die_with_the_process(
    tidings_server: ServerFactory, store: str, sessions: str
) -> None:
    """Wrong password 401; login 200 with a token; anonymous 401; news.a 201; other.a 403.
    After a restart on the same store and secret the token still works under database and
    jwt, and is 401 under memory."""
    srv = auth_server(tidings_server, store, sessions)

    wrong = login_response(srv, "alice", ALICE_PASSWORD + "x")
    assert_error(wrong, 401)
    assert "set-cookie" not in wrong.headers
    assert_error(login_response(srv, "nobody", ALICE_PASSWORD), 401)

    r = login_response(srv, "alice", ALICE_PASSWORD)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"token", "expires_at", "user", "permissions"}
    assert body["user"] == "alice"
    assert body["permissions"]["publish"] == ["news.*"]
    assert body["permissions"]["subscribe"] == ["news.*"]
    assert body["permissions"]["admin"] is False
    assert body["expires_at"]
    token = body["token"]
    assert token
    assert (token.count(".") == 2) == (sessions == "jwt")

    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert_error(send(http, "news.a", "anon", {}), 401)
        assert_error(http.get("/v1/channels/news.a/messages"), 401)
        assert_error(http.get("/v1/auth/me"), 401)
        assert_error(send(http, "news.a", "junk", bearer("tds_not-a-real-token")), 401)

        r = send(http, "news.a", {"n": 1}, bearer(token))
        assert r.status_code == 201, r.text
        first_id = r.json()["id"]
        assert_error(send(http, "other.a", {"n": 1}, bearer(token)), 403)

        me = http.get("/v1/auth/me", headers=bearer(token))
        assert me.status_code == 200, me.text
        assert me.json()["user"] == "alice"
        assert me.json()["anonymous"] is False
        assert me.json()["permissions"]["publish"] == ["news.*"]

    srv.restart()

    with httpx.Client(base_url=srv.url, timeout=10) as http:
        me = http.get("/v1/auth/me", headers=bearer(token))
        if sessions == "memory":
            assert_error(me, 401)
            # The user is in the store, so logging in again works.
            token = login(srv)
        else:
            assert me.status_code == 200, me.text
            assert me.json()["user"] == "alice"
        page = http.get(
            "/v1/channels/news.a/messages", params={"after": "0"}, headers=bearer(token)
        )
        assert page.status_code == 200, page.text
        assert [m["id"] for m in page.json()["messages"]] == [first_id]


@pytest.mark.timeout(40)
@pytest.mark.parametrize("sessions", ["database", "jwt"])
def test_logout_makes_the_token_401_at_once_and_for_good(
    tidings_server: ServerFactory, store: str, sessions: str
) -> None:
    """The logged-out token is 401 on the very next request (even right after a request
    that would have cached it), on every endpoint, and after a restart; the user's other
    session is untouched."""
    srv = auth_server(tidings_server, store, sessions)
    token, other = login(srv), login(srv)
    assert token != other

    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.get("/v1/auth/me", headers=bearer(token)).status_code == 200
        out = http.post("/v1/auth/logout", headers=bearer(token))
        assert out.status_code == 200, out.text
        assert_error(http.get("/v1/auth/me", headers=bearer(token)), 401)
        assert_error(send(http, "news.a", "after logout", bearer(token)), 401)
        assert_error(http.post("/v1/auth/logout", headers=bearer(token)), 401)
        assert http.get("/v1/auth/me", headers=bearer(other)).status_code == 200

    srv.restart()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert_error(http.get("/v1/auth/me", headers=bearer(token)), 401)
        assert http.get("/v1/auth/me", headers=bearer(other)).status_code == 200


@pytest.mark.timeout(40)
@pytest.mark.parametrize("sessions", SESSION_MODES)
def test_logging_out_with_an_api_token_is_400_and_leaves_the_token_working(
    tidings_server: ServerFactory, store: str, sessions: str
) -> None:
    """Logout ends sessions only: with an API token it answers a 400 JSON error naming
    `tidings tokens revoke` and DELETE /v1/admin/tokens/{key}, and the token keeps working
    (past the principal cache, and after a restart); a session's logout still works."""
    srv = auth_server(tidings_server, store, sessions)
    secret = cli_ok("tokens", "create", "alice", "--store", store, "--name", "ci").strip()
    session = login(srv)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        out = http.post("/v1/auth/logout", headers=bearer(secret))
        assert out.status_code == 400, out.text
        assert out.headers["content-type"].startswith("application/json")
        error = out.json()["error"]
        assert error["code"] == "bad_request", error
        assert "tidings tokens revoke" in error["message"], error
        assert "DELETE /v1/admin/tokens/" in error["message"], error
        assert "set-cookie" not in out.headers
        time.sleep(1.2)  # past the principal cache: the store must still know the token
        assert http.get("/v1/auth/me", headers=bearer(secret)).status_code == 200
        assert send(http, "news.a", "still here", bearer(secret)).status_code == 201
        assert http.post("/v1/auth/logout", headers=bearer(session)).status_code == 200
        assert_error(http.get("/v1/auth/me", headers=bearer(session)), 401)
    srv.restart()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.get("/v1/auth/me", headers=bearer(secret)).status_code == 200


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sessions", SESSION_MODES)
def test_logging_out_closes_the_sessions_open_stream_within_two_seconds(
    tidings_server: ServerFactory, store: str, sessions: str
) -> None:
    """An SSE stream opened with a session gets `event: close` and ends < 2.5 s after that
    session is logged out from another client; a stream of another session stays open."""
    srv = auth_server(tidings_server, store, sessions)
    token, other = login(srv), login(srv)
    path = "/v1/channels/news.live/events?after=0"
    doomed = RawSSE(srv.port, path, headers=bearer(token))
    kept = RawSSE(srv.port, path, headers=bearer(other))
    try:
        assert (doomed.status, kept.status) == (200, 200)
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            first = send(http, "news.live", "first", bearer(other))
            assert first.status_code == 201
            # Both streams are live before the logout.
            assert next_event(doomed, 5)["id"] == first.json()["id"]
            assert next_event(kept, 5)["id"] == first.json()["id"]

            started = time.monotonic()
            out = http.post("/v1/auth/logout", headers=bearer(token))
            assert out.status_code == 200, out.text
            frame = next_event(doomed, 5)
            elapsed = time.monotonic() - started
            assert frame.get("event") == "close", frame
            assert "id" not in frame
            assert "revoked" in json.loads(frame["data"])["reason"]
            assert elapsed < 2.5, f"the stream was closed {elapsed:.2f}s after the logout"
            with pytest.raises(EOFError):
                doomed.frame(timeout=3)

            second = send(http, "news.live", "second", bearer(other))
            assert second.status_code == 201
            frame = next_event(kept, 5)
            assert frame["id"] == second.json()["id"]
    finally:
        doomed.close()
        kept.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sessions", ["database", "jwt"])
def test_logging_out_answers_the_sessions_parked_long_poll_with_401(
    tidings_server: ServerFactory, store: str, sessions: str
) -> None:
    """A long poll parked with a session is answered 401 < 2.5 s after its logout, instead
    of staying parked until its wait ends."""
    srv = auth_server(tidings_server, store, sessions)
    token = login(srv)
    result: dict[str, Any] = {}

    def park() -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            r = http.get("/v1/channels/news.lp/messages?after=0&wait=20", headers=bearer(token))
            result["response"], result["at"] = r, time.monotonic()

    parked = threading.Thread(target=park)
    parked.start()
    try:
        time.sleep(0.5)  # let it park
        assert "response" not in result
        started = time.monotonic()
        out = httpx.post(f"{srv.url}/v1/auth/logout", headers=bearer(token), timeout=10)
        assert out.status_code == 200, out.text
        parked.join(timeout=10)
        assert not parked.is_alive()
        assert_error(result["response"], 401)
        assert "revoked" in result["response"].json()["error"]["message"]
        assert result["at"] - started < 2.5, "the long poll stayed parked after the logout"
    finally:
        parked.join(timeout=25)


@pytest.mark.timeout(40)
def test_a_revoked_workers_parked_lease_gets_401_not_jobs(
    tidings_server: ServerFactory, store: str
) -> None:
    """A worker parks a lease and its session is revoked: the lease is answered 401 within
    ~1 s, and a job submitted afterwards stays queued for someone else."""
    cli_ok("users", "grant", "bob", "--store", store, "--work", "secret", "--submit", "secret")
    srv = auth_server(tidings_server, store, "database")
    worker, submitter = login(srv, "bob", BOB_PASSWORD), login(srv, "bob", BOB_PASSWORD)
    result: dict[str, Any] = {}

    def park() -> None:
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            result["r"] = http.post(
                "/v1/workers/lease",
                json={"types": ["secret"], "wait": 20},
                headers=bearer(worker),
            )

    parked = threading.Thread(target=park)
    parked.start()
    try:
        time.sleep(0.5)
        out = httpx.post(f"{srv.url}/v1/auth/logout", headers=bearer(worker), timeout=10)
        assert out.status_code == 200
        parked.join(timeout=5)
        assert not parked.is_alive(), "the revoked worker's lease stayed parked"
        assert_error(result["r"], 401)
        job = httpx.post(
            f"{srv.url}/v1/jobs",
            json={"type": "secret", "payload": {"otp": 1}},
            headers=bearer(submitter),
            timeout=10,
        ).json()
        time.sleep(0.3)
        got = httpx.get(f"{srv.url}/v1/jobs/{job['id']}", headers=bearer(submitter), timeout=10)
        assert got.json()["status"] == "queued"
    finally:
        parked.join(timeout=25)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("sessions", SESSION_MODES)
def test_an_expired_session_is_401_and_its_open_stream_ends(
    tidings_server: ServerFactory, store: str, sessions: str
) -> None:
    """With --session-ttl 2, the token is 401 after 2 s and a stream opened with it is
    closed within about a second of its expiry."""
    srv = auth_server(tidings_server, store, sessions, "--session-ttl", "2")
    token = login(srv)
    born = time.monotonic()
    sse = RawSSE(srv.port, "/v1/channels/news.ttl/events", headers=bearer(token))
    try:
        assert sse.status == 200
        frame = next_event(sse, 6)
        while frame.get("event") != "close":
            frame = next_event(sse, 6)
        ended = time.monotonic() - born
        assert "expired" in json.loads(frame["data"])["reason"]
        assert 1.5 < ended < 4.0, f"the stream ended {ended:.1f}s after login (ttl 2 s)"
    finally:
        sse.close()
    assert_error(httpx.get(f"{srv.url}/v1/auth/me", headers=bearer(token), timeout=10), 401)
