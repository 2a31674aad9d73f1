"""Application JWTs with absurd or hostile claims: always 401 with a reason, never 500.

Reported: an app JWT with `exp=1e20` made `GET /v1/auth/me` answer 500 (the expiry could
not be written as a time), and app JWT claims were decoded with no nesting cap. Every test
runs a real `tidings serve --require-auth` that trusts an HS256 application key.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import ServerFactory, ServerProcess

APP_KEY = secrets.token_hex(32)  # the application backend's HS256 key, made per run
APP_ISSUER = "https://app.example"
MAX_DEPTH = 16  # --max-depth of these servers: small, so the tests stay small


def app_server(factory: ServerFactory) -> ServerProcess:
    srv: ServerProcess = factory(
        store="memory://",
        args=[
            "--require-auth",
            "--app-jwt-algorithm", "HS256",
            "--app-jwt-issuer", APP_ISSUER,
            "--max-depth", str(MAX_DEPTH),
        ],
        env={"TIDINGS_APP_JWT_KEY": APP_KEY},
    )  # fmt: skip
    return srv


def app_token(**overrides: Any) -> str:
    """An app JWT for `svc-1` that may publish/subscribe `app.*`; None drops a claim."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": "svc-1",
        "iss": APP_ISSUER,
        "iat": now,
        "exp": now + 300,
        "tidings": {"publish": ["app.*"], "subscribe": ["app.*"]},
    }
    claims.update(overrides)
    return jwt.encode({k: v for k, v in claims.items() if v is not None}, APP_KEY, "HS256")


def signed(payload: bytes, header: bytes = b'{"alg":"HS256","typ":"JWT"}') -> str:
    """An HS256 JWT over raw JSON bytes (any nesting), signed with the application key."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head_and_body = f"{b64(header)}.{b64(payload)}"
    signature = jwt.get_algorithm_by_name("HS256").sign(
        head_and_body.encode(), jwt.get_algorithm_by_name("HS256").prepare_key(APP_KEY)
    )
    return f"{head_and_body}.{b64(signature)}"


def nested(depth: int) -> Any:
    value: Any = "app.*"
    for _ in range(depth):
        value = [value]
    return value


def assert_refused(r: httpx.Response, *words: str) -> None:
    """`r` is a JSON 401 whose message holds every one of `words`."""
    assert r.status_code == 401, f"{r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    message = r.json()["error"]["message"]
    for word in words:
        assert word in message, message


@pytest.mark.timeout(30)
def test_an_app_jwt_with_an_absurd_or_mistyped_date_is_refused_with_401_not_500(
    tidings_server: ServerFactory,
) -> None:
    """exp=1e20 (the reported 500), exp as a string, a float beyond the year 9999, a
    boolean, an absurd nbf or iat: each is 401 on /v1/auth/me and on a publish, with a
    message naming the claim; the server keeps answering the good token."""
    srv = app_server(tidings_server)
    now = int(time.time())
    refused = {
        "exp=1e20": (app_token(exp=1e20), "exp"),
        "exp=1e300": (app_token(exp=1e300), "exp"),
        "exp as a string": (app_token(exp=str(now + 300)), "exp"),
        "exp=true": (app_token(exp=True), "exp"),
        "exp beyond 9999 as an int": (app_token(exp=10**12), "exp"),
        "iat far in the past": (app_token(iat=-1e20), "iat"),
        "iat as a list": (app_token(iat=[now]), "iat"),
        "nbf far in the past": (app_token(nbf=-(10**15)), "nbf"),
        "nbf as a string": (app_token(nbf="0"), "nbf"),
    }
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for name, (token, claim) in refused.items():
            headers = {"Authorization": f"Bearer {token}"}
            http.headers.clear()
            assert_refused(http.get("/v1/auth/me", headers=headers), claim)
            publish = http.post("/v1/channels/app.x/messages", json={"data": name}, headers=headers)
            assert_refused(publish, claim)
        # A float expiry within range is still a NumericDate.
        for token in (app_token(), app_token(exp=now + 300.5)):
            me = http.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200, me.text
            assert me.json()["user"] == "svc-1"
    assert "Traceback" not in srv.log()


@pytest.mark.timeout(30)
def test_app_jwt_claims_nested_deeper_than_max_depth_are_refused_before_parsing(
    tidings_server: ServerFactory,
) -> None:
    """A `tidings` claim nested past --max-depth is 401 "token claims nested too deep";
    so is a header nested deep (checked before the signature), and a token of 10,000
    brackets (past Python's recursion limit) is 401, not 500. Brackets inside strings
    do not count; a claim at the limit is checked as usual."""
    srv = app_server(tidings_server)
    now = int(time.time())
    base = {"sub": "svc-1", "iss": APP_ISSUER, "exp": now + 300}
    too_deep = signed(json.dumps({**base, "tidings": {"publish": nested(MAX_DEPTH)}}).encode())
    bomb = signed(b'{"tidings":' + b"[" * 10_000 + b"]" * 10_000 + b"}")
    deep_header = signed(
        json.dumps(base).encode(),
        header=b'{"alg":"HS256","x":' + b"[" * 5_000 + b"]" * 5_000 + b"}",
    )
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for token in (too_deep, bomb, deep_header):
            r = http.get("/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
            assert_refused(r, "nested too deep", str(MAX_DEPTH))

        # At the limit: parsed, then refused only because a permission is not a string.
        at_limit = {**base, "tidings": {"publish": nested(MAX_DEPTH - 2)}}
        r = http.get(
            "/v1/auth/me",
            headers={"Authorization": f"Bearer {signed(json.dumps(at_limit).encode())}"},
        )
        assert_refused(r, "invalid token claims")
        # Brackets in strings are text, not nesting.
        brackets = {**base, "note": "[" * 500, "tidings": {"publish": ["app.*"]}}
        r = http.get(
            "/v1/auth/me",
            headers={"Authorization": f"Bearer {signed(json.dumps(brackets).encode())}"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["permissions"]["publish"] == ["app.*"]
    assert "Traceback" not in srv.log()


@pytest.mark.timeout(30)
def test_app_jwt_permission_lists_are_bounded_in_count_and_length(
    tidings_server: ServerFactory,
) -> None:
    """At most 100 patterns per list and 256 characters per pattern: past either, 401
    naming the list; at the bounds the token works."""
    srv = app_server(tidings_server)
    at_bounds = app_token(tidings={"subscribe": ["a" * 256] + [f"app.{i}" for i in range(99)]})
    too_many = app_token(tidings={"subscribe": [f"app.{i}" for i in range(101)]})
    too_long = app_token(tidings={"publish": ["a" * 257]})
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        ok = http.get("/v1/auth/me", headers={"Authorization": f"Bearer {at_bounds}"})
        assert ok.status_code == 200, ok.text
        assert len(ok.json()["permissions"]["subscribe"]) == 100
        r = http.get("/v1/auth/me", headers={"Authorization": f"Bearer {too_many}"})
        assert_refused(r, "invalid token claims", "subscribe")
        r = http.get("/v1/auth/me", headers={"Authorization": f"Bearer {too_long}"})
        assert_refused(r, "invalid token claims", "publish")
