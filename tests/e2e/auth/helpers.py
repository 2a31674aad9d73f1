"""What the authentication tests share: the users' passwords and the keys (made per run),
the calls every test makes (log in, publish, check an error) and the servers they start.

Logins go through the module-level `httpx.post` (no cookie jar) so that the clients used
afterwards are authenticated only by what each request says: a bearer token, an explicit
Cookie header, or nothing.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import httpx
import jwt

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.test_channels_api import RawSSE, parse_frame

# Generated per run: no credential is written into the source.
ALICE_PASSWORD = secrets.token_urlsafe(16)
BOB_PASSWORD = secrets.token_urlsafe(16)
JWT_SECRET = secrets.token_hex(32)  # 64 bytes, the --sessions jwt signing key
APP_KEY = secrets.token_hex(32)  # the application backend's HS256 key
APP_ISSUER = "https://app.example"
APP_AUDIENCE = "tidings-api"
SESSION_MODES = ["database", "jwt", "memory"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login_response(srv: ServerProcess, user: str, password: str) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/v1/auth/login", json={"username": user, "password": password}, timeout=10
    )


def login(srv: ServerProcess, user: str = "alice", password: str = ALICE_PASSWORD) -> str:
    """A fresh session's token."""
    r = login_response(srv, user, password)
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def send(http: httpx.Client, channel: str, data: Any, headers: dict[str, str]) -> httpx.Response:
    return http.post(f"/v1/channels/{channel}/messages", json={"data": data}, headers=headers)


def assert_error(r: httpx.Response, status: int) -> None:
    """`r` is the JSON error `status` with the code the API gives it."""
    codes = {401: "unauthorized", 403: "forbidden"}
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    assert r.json()["error"]["code"] == codes[status], r.text


def b64url(obj: dict[str, Any]) -> str:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def session_claims(**overrides: Any) -> dict[str, Any]:
    """The claims of a `--sessions jwt` token for alice; a None override drops the claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "alice",
        "iat": now,
        "exp": now + 300,
        "jti": secrets.token_hex(16),
        "iss": "tidings",
        "aud": "tidings",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def app_token(key: str = APP_KEY, **overrides: Any) -> str:
    """An application-issued JWT for `svc-1` that may publish/subscribe `app.*`."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "svc-1",
        "iss": APP_ISSUER,
        "aud": APP_AUDIENCE,
        "iat": now,
        "exp": now + 300,
        "tidings": {"publish": ["app.*"], "subscribe": ["app.*"]},
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm="HS256")


def next_event(sse: RawSSE, timeout: float) -> dict[str, str]:
    return parse_frame(sse.event(timeout=timeout))


def auth_server(
    factory: ServerFactory, store: str, sessions: str, *args: str, env: dict[str, str] | None = None
) -> ServerProcess:
    """`tidings serve --require-auth --sessions SESSIONS ARGS` (the jwt secret in the env)."""
    srv: ServerProcess = factory(
        store=store,
        args=["--require-auth", "--sessions", sessions, *args],
        env={"TIDINGS_JWT_SECRET": JWT_SECRET, **(env or {})},
    )
    return srv


def app_jwt_server(factory: ServerFactory, store: str) -> ServerProcess:
    """A `--sessions database` server that also takes HS256 JWTs from the application's
    backend (key APP_KEY, issuer APP_ISSUER, audience APP_AUDIENCE)."""
    return auth_server(
        factory, store, "database",
        "--app-jwt-algorithm", "HS256",
        "--app-jwt-issuer", APP_ISSUER,
        "--app-jwt-audience", APP_AUDIENCE,
        env={"TIDINGS_APP_JWT_KEY": APP_KEY},
    )  # fmt: skip
