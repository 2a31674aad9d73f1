"""JSON Web Tokens end to end: the server's own `--sessions jwt` tokens are pinned to
HS256 and every forgery is refused; tokens issued by the application's backend (HS256 with
a shared key, RS256/ES256 with a public key file) act with the permissions in their
`tidings` claim and are never admin."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.auth.helpers import (
    ALICE_PASSWORD,
    APP_AUDIENCE,
    APP_ISSUER,
    APP_KEY,
    JWT_SECRET,
    app_jwt_server,
    app_token,
    assert_error,
    auth_server,
    b64url,
    bearer,
    login,
    send,
    session_claims,
)


def _forgeries(ucr: float) -> dict[str, str]:
    """Tokens a `--sessions jwt` server must refuse, each wrong in one way only (`ucr`:
    the user's creation, as the server's own tokens carry it)."""
    header_none = b64url({"alg": "none", "typ": "JWT"})
    now = int(time.time())
    good = jwt.encode(session_claims(ucr=ucr), JWT_SECRET, algorithm="HS256")
    _, _, good_sig = good.split(".")
    return {
        "alg none": f"{header_none}.{b64url(session_claims(ucr=ucr))}.",
        "alg none, signature kept": f"{header_none}.{b64url(session_claims(ucr=ucr))}.{good_sig}",
        "expired": jwt.encode(
            session_claims(ucr=ucr, iat=now - 900, exp=now - 60), JWT_SECRET, algorithm="HS256"
        ),
        "wrong audience": jwt.encode(
            session_claims(ucr=ucr, aud="someone-else"), JWT_SECRET, algorithm="HS256"
        ),
        "wrong issuer": jwt.encode(
            session_claims(ucr=ucr, iss="mallory"), JWT_SECRET, algorithm="HS256"
        ),
        "another key": jwt.encode(
            session_claims(ucr=ucr), secrets.token_hex(32), algorithm="HS256"
        ),
        "HS512 with the right key": jwt.encode(
            session_claims(ucr=ucr), JWT_SECRET, algorithm="HS512"
        ),
        "no exp": jwt.encode(session_claims(ucr=ucr, exp=None), JWT_SECRET, algorithm="HS256"),
        "no jti": jwt.encode(session_claims(ucr=ucr, jti=None), JWT_SECRET, algorithm="HS256"),
        "unknown user": jwt.encode(
            session_claims(ucr=ucr, sub="mallory"), JWT_SECRET, algorithm="HS256"
        ),
        "an earlier user of the same name": jwt.encode(
            session_claims(ucr=ucr - 100), JWT_SECRET, algorithm="HS256"
        ),
        "payload swapped": ".".join(
            [good.split(".")[0], b64url(session_claims(ucr=ucr, sub="bob")), good_sig]
        ),
    }


@pytest.mark.timeout(30)
def test_jwt_sessions_are_pinned_hs256_and_every_forgery_is_401(
    tidings_server: ServerFactory, store: str
) -> None:
    """Configured through the environment only. The login token is an HS256 JWT with
    iss=aud="tidings", exp, iat, jti, sub; a token we sign the same way is accepted, and
    each forgery (alg=none, expired, wrong aud/iss, another key, another alg, missing
    claims, unknown user, swapped payload) is 401 everywhere."""
    srv: ServerProcess = tidings_server(
        store=store,
        env={
            "TIDINGS_REQUIRE_AUTH": "true",
            "TIDINGS_SESSIONS": "jwt",
            "TIDINGS_JWT_SECRET": JWT_SECRET,
            "TIDINGS_SESSION_TTL": "600",
        },
    )
    token = login(srv)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(
        token, JWT_SECRET, algorithms=["HS256"], audience="tidings", issuer="tidings"
    )
    assert set(claims) >= {"sub", "iat", "exp", "jti", "iss", "aud", "ucr"}
    ucr = claims["ucr"]  # the user's creation time: tokens for a namesake made later fail
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 600
    assert abs(claims["iat"] - time.time()) < 60

    with httpx.Client(base_url=srv.url, timeout=10) as http:
        # Control: a token built like the forgeries but correct is accepted.
        ours = jwt.encode(session_claims(ucr=ucr), JWT_SECRET, algorithm="HS256")
        assert http.get("/v1/auth/me", headers=bearer(ours)).status_code == 200
        assert send(http, "news.a", "ours", bearer(ours)).status_code == 201

        accepted = []
        for name, forged in _forgeries(ucr).items():
            me = http.get("/v1/auth/me", headers=bearer(forged))
            pub = send(http, "news.a", name, bearer(forged))
            if me.status_code != 401 or pub.status_code != 401:
                accepted.append((name, me.status_code, pub.status_code, me.text))
            else:
                assert_error(me, 401)
                assert_error(pub, 401)
        assert not accepted, f"forged tokens not refused with 401: {accepted}"


@pytest.mark.timeout(30)
def test_app_issued_jwts_act_with_the_permissions_in_their_tidings_claim(
    tidings_server: ServerFactory, store: str
) -> None:
    """An HS256 JWT from the application's backend (key in TIDINGS_APP_JWT_KEY, issuer and
    audience pinned) may publish to app.x and not to news.x; tokens with the wrong issuer,
    audience, key or algorithm, expired, or missing exp/sub are 401. Logins still work."""
    srv = app_jwt_server(tidings_server, store)
    good = app_token()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        me = http.get("/v1/auth/me", headers=bearer(good))
        assert me.status_code == 200, me.text
        assert me.json()["user"] == "svc-1"
        assert me.json()["anonymous"] is False
        assert me.json()["permissions"]["publish"] == ["app.*"]
        assert me.json()["permissions"]["admin"] is False

        r = send(http, "app.x", {"from": "app"}, bearer(good))
        assert r.status_code == 201, r.text
        assert_error(send(http, "news.x", {"from": "app"}, bearer(good)), 403)
        page = http.get("/v1/channels/app.x/messages?after=0", headers=bearer(good))
        assert page.status_code == 200, page.text
        assert [m["data"] for m in page.json()["messages"]] == [{"from": "app"}]
        assert_error(http.get("/v1/channels/news.x/messages", headers=bearer(good)), 403)

        now = int(time.time())
        good_claims = jwt.decode(good, options={"verify_signature": False})
        refused = {
            "wrong issuer": app_token(iss="https://evil.example"),
            "wrong audience": app_token(aud="another-api"),
            "another key": app_token(key=secrets.token_hex(32)),
            "expired": app_token(iat=now - 900, exp=now - 60),
            "no exp": app_token(exp=None),
            "no sub": app_token(sub=None),
            "no issuer": app_token(iss=None),
            "HS512": jwt.encode(good_claims, APP_KEY, algorithm="HS512"),
        }
        for name, token in refused.items():
            r = send(http, "app.x", name, bearer(token))
            assert r.status_code == 401, f"{name}: {r.status_code} {r.text}"
            assert_error(r, 401)

        # Password logins keep working next to the application's tokens.
        alice = login(srv)
        assert send(http, "news.x", "alice", bearer(alice)).status_code == 201


@pytest.mark.timeout(30)
@pytest.mark.parametrize("algorithm", ["ES256", "RS256"])
def test_app_jwts_signed_with_a_private_key_are_checked_with_the_public_key_file(
    tidings_server: ServerFactory, store: str, tmp_path: Path, algorithm: str
) -> None:
    """RS256/ES256: the server holds only the PEM public key (--app-jwt-key-file); a token
    signed by the matching private key works, one signed by another key pair or as HS256
    with the public key as the secret (the algorithm-confusion attack) is 401."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    def keypair() -> Any:
        if algorithm == "ES256":
            return ec.generate_private_key(ec.SECP256R1())
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    private, stranger = keypair(), keypair()
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key_file = tmp_path / "app.pub.pem"
    key_file.write_bytes(public_pem)
    srv = auth_server(
        tidings_server, store, "database",
        "--app-jwt-algorithm", algorithm, "--app-jwt-key-file", str(key_file),
        "--app-jwt-issuer", APP_ISSUER, "--app-jwt-audience", APP_AUDIENCE,
    )  # fmt: skip
    now = int(time.time())
    claims = {
        "sub": "svc-2",
        "iss": APP_ISSUER,
        "aud": APP_AUDIENCE,
        "exp": now + 300,
        "tidings": {"publish": ["app.*"]},
    }
    good = jwt.encode(claims, private, algorithm=algorithm)
    forged = jwt.encode(claims, stranger, algorithm=algorithm)
    # HS256 keyed with the public PEM: PyJWT refuses to make it, so sign it by hand.
    head = b64url({"alg": "HS256", "typ": "JWT"}) + "." + b64url(claims)
    mac = hmac.new(public_pem, head.encode(), hashlib.sha256).digest()
    confused = head + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert send(http, "app.k", "signed", bearer(good)).status_code == 201
        assert_error(send(http, "news.k", "signed", bearer(good)), 403)
        assert_error(send(http, "app.k", "forged", bearer(forged)), 401)
        assert_error(send(http, "app.k", "confused", bearer(confused)), 401)


@pytest.mark.timeout(30)
def test_login_takes_json_only_and_app_tokens_are_never_admin(
    tidings_server: ServerFactory, store: str
) -> None:
    """A text/plain login (what a cross-site form can send) is 415; an app JWT claiming
    admin gets no admin rights."""
    srv = app_jwt_server(tidings_server, store)
    body = json.dumps({"username": "alice", "password": ALICE_PASSWORD})
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        plain = http.post("/v1/auth/login", content=body, headers={"content-type": "text/plain"})
        assert plain.status_code == 415
        assert "set-cookie" not in plain.headers
        claims = {"publish": ["app.*"], "admin": True}
        boss = bearer(app_token(tidings=claims))
        assert http.get("/v1/auth/me", headers=boss).json()["permissions"]["admin"] is False
        assert_error(http.get("/v1/admin/users", headers=boss), 403)
