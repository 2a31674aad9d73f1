"""Users and API tokens end to end: made, granted, revoked and removed from the CLI or
by an admin over HTTP, each change taking effect on a running server."""

from __future__ import annotations

import hashlib
import secrets
import time

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
from tests.e2e.helpers import cli_ok, tidings_cli
from tests.e2e.test_channels_api import RawSSE, wait_for


@pytest.mark.timeout(40)
def test_cli_api_tokens_and_grants_take_effect_on_a_running_server(
    tidings_server: ServerFactory, store: str
) -> None:
    """`tidings tokens create` prints a token that authenticates; `tokens list` shows its
    key prefix (never the secret); `tokens revoke` makes it 401; `users grant` widens a
    user's permissions without a new login; `users remove` ends the user's sessions."""
    srv = auth_server(tidings_server, store, "database")
    secret = cli_ok("tokens", "create", "alice", "--store", store, "--name", "ci").strip()
    assert secret
    assert len(secret.splitlines()) == 1
    key = hashlib.sha256(secret.encode()).hexdigest()
    listed = cli_ok("tokens", "list", "--store", store)
    assert key[:12] in listed
    assert secret not in listed

    bob = login(srv, "bob", BOB_PASSWORD)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        me = http.get("/v1/auth/me", headers=bearer(secret))
        assert me.status_code == 200, me.text
        assert me.json()["user"] == "alice"
        assert send(http, "news.t", "by token", bearer(secret)).status_code == 201
        assert_error(send(http, "other.t", "by token", bearer(secret)), 403)
        # The CLI clients take the token too (--token or TIDINGS_TOKEN).
        cli_ok("publish", "news.t", "by the cli", "--url", srv.url, "--token", secret)
        refused = tidings_cli("publish", "news.t", "anonymous", "--url", srv.url)
        assert refused.returncode != 0
        assert "401" in refused.stderr
        page = http.get("/v1/channels/news.t/messages?after=0", headers=bearer(secret)).json()
        assert [m["data"] for m in page["messages"]] == ["by token", "by the cli"]

        cli_ok("tokens", "revoke", key[:12], "--store", store)
        wait_for(
            lambda: http.get("/v1/auth/me", headers=bearer(secret)).status_code == 401,
            timeout=3,
        )
        assert_error(send(http, "news.t", "revoked", bearer(secret)), 401)

        assert_error(send(http, "news.t", "bob", bearer(bob)), 403)
        cli_ok("users", "grant", "bob", "--store", store, "--publish", "news.*")
        wait_for(lambda: send(http, "news.t", "bob", bearer(bob)).status_code == 201, timeout=3)
        assert "news.*" in cli_ok("users", "list", "--store", store)

        cli_ok("users", "remove", "bob", "--store", store)
        wait_for(lambda: http.get("/v1/auth/me", headers=bearer(bob)).status_code == 401, timeout=3)
        assert_error(login_response(srv, "bob", BOB_PASSWORD), 401)


@pytest.mark.timeout(40)
def test_an_admin_manages_users_and_tokens_over_http_and_nobody_else_may(
    tidings_server: ServerFactory, store: str
) -> None:
    """An admin (made by the CLI) creates a user and a token for it over HTTP; the user
    logs in and acts within its grants; the token is revoked; a non-admin gets 403."""
    admin_password = secrets.token_urlsafe(12)
    cli_ok(
        "users", "add", "root", "--store", store, "--password-stdin", "--admin",
        stdin=admin_password + "\n",
    )  # fmt: skip
    srv = auth_server(tidings_server, store, "database")
    admin = bearer(login(srv, "root", admin_password))
    alice = bearer(login(srv))
    carol_password = secrets.token_urlsafe(12)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        grants = {"publish": ["carol.*"], "subscribe": ["carol.*"]}
        made = http.put(
            "/v1/admin/users/carol",
            json={"password": carol_password, "permissions": grants},
            headers=admin,
        )
        assert made.status_code == 201, made.text
        assert made.json()["permissions"]["publish"] == ["carol.*"]
        assert "carol" in [
            u["name"] for u in http.get("/v1/admin/users", headers=admin).json()["users"]
        ]
        carol = bearer(login(srv, "carol", carol_password))
        assert send(http, "carol.x", 1, carol).status_code == 201
        assert_error(send(http, "news.x", 1, carol), 403)

        token = http.post("/v1/admin/users/carol/tokens", json={"name": "ci"}, headers=admin)
        assert token.status_code == 201, token.text
        secret, key = token.json()["token"], token.json()["key"]
        assert send(http, "carol.t", 1, bearer(secret)).status_code == 201
        assert http.delete(f"/v1/admin/tokens/{key}", headers=admin).status_code == 204
        wait_for(lambda: send(http, "carol.t", 2, bearer(secret)).status_code == 401, timeout=3)

        # Replacing without a password keeps it; bad input is 422; others may not.
        again = http.put(
            "/v1/admin/users/carol", json={"permissions": {"publish": ["*"]}}, headers=admin
        )
        assert again.status_code == 200
        assert login_response(srv, "carol", carol_password).status_code == 200
        assert (
            http.put("/v1/admin/users/carol", json={"password": "short"}, headers=admin).status_code
            == 422
        )
        assert http.put("/v1/admin/users/bad name", json={}, headers=admin).status_code == 422
        assert_error(http.get("/v1/admin/users", headers=alice), 403)
        assert_error(http.put("/v1/admin/users/eve", json={}, headers=alice), 403)
        assert_error(http.delete("/v1/admin/users/carol", headers=alice), 403)
        assert_error(http.get("/v1/admin/users"), 401)

        # A new password ends the sessions made with the old one.
        assert http.get("/v1/auth/me", headers=carol).status_code == 200
        new_password = secrets.token_urlsafe(12)
        changed = http.put("/v1/admin/users/carol", json={"password": new_password}, headers=admin)
        assert changed.status_code == 200
        wait_for(lambda: http.get("/v1/auth/me", headers=carol).status_code == 401, timeout=3)
        assert login_response(srv, "carol", carol_password).status_code == 401
        carol = bearer(login(srv, "carol", new_password))

        assert http.delete("/v1/admin/users/carol", headers=admin).status_code == 204
        wait_for(lambda: http.get("/v1/auth/me", headers=carol).status_code == 401, timeout=3)
        assert http.delete("/v1/admin/users/carol", headers=admin).status_code == 404


@pytest.mark.timeout(40)
@pytest.mark.parametrize("sessions", SESSION_MODES)
def test_removing_a_user_ends_their_streams_and_a_namesake_inherits_nothing(
    tidings_server: ServerFactory, store: str, sessions: str
) -> None:
    """`tidings users remove` closes the user's open stream (every mode); a user made
    again under the same name cannot use the old user's sessions or tokens."""
    srv = auth_server(tidings_server, store, sessions)
    session = login(srv)
    api_token = cli_ok("tokens", "create", "alice", "--store", store).strip()
    sse = RawSSE(srv.port, "/v1/channels/news.gone/events", headers=bearer(session))
    try:
        assert sse.status == 200
        cli_ok("users", "remove", "alice", "--store", store)
        # From the removal's commit: the CLI's own start-up, slow on a loaded machine, is
        # not the server's reaction time.
        started = time.monotonic()
        frame = next_event(sse, 5)
        while frame.get("event") != "close":
            frame = next_event(sse, 5)
        assert time.monotonic() - started < 3
    finally:
        sse.close()
    cli_ok(
        "users", "add", "alice", "--store", store, "--password-stdin", "--publish", "*",
        stdin=ALICE_PASSWORD + "\n",
    )  # fmt: skip
    time.sleep(1.2)  # past the principal cache
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for old in (session, api_token):
            assert_error(http.get("/v1/auth/me", headers=bearer(old)), 401)
        assert http.get("/v1/auth/me", headers=bearer(login(srv))).status_code == 200


@pytest.mark.timeout(30)
def test_user_names_hold_no_dot_so_sub_patterns_cannot_overlap() -> None:
    """`user.{sub}.*` for bob would cover `user.bob.evil.*`: dotted names are refused."""
    refused = tidings_cli(
        "users", "add", "bob.evil", "--store", "sqlite:////nonexistent/never.db",
        "--password-stdin", stdin="a long password\n",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "no '.'" in refused.stderr
