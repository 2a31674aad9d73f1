"""Authentication end to end: users made by the CLI, login sessions in each mode, API
tokens, application-issued JWTs, subscribe permissions, revocation of open streams, the
session cookie's Origin check, and the refusal to serve anonymous clients beyond loopback.

Every test runs a real `tidings serve --require-auth` on a real SQLite file. The users
(alice: publish/subscribe `news.*`; bob: publish/subscribe `other.*`) are made once per
module by `tidings users add ... --password-stdin` and the file is copied for each test,
so each test starts from the same store without paying for the CLI again.

Logins go through the module-level `httpx.post` (no cookie jar) so that the clients used
afterwards are authenticated only by what each request says: a bearer token, an explicit
Cookie header, or nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerProcess, free_port
from tests.e2e.test_channels_api import RawSSE, parse_frame, wait_for

ServerFactory = Any  # tests.conftest.ServerFactory: (store=, args=, env=) -> ServerProcess

# Generated per run: no credential is written into the source.
ALICE_PASSWORD = secrets.token_urlsafe(16)
BOB_PASSWORD = secrets.token_urlsafe(16)
JWT_SECRET = secrets.token_hex(32)  # 64 bytes, the --sessions jwt signing key
APP_KEY = secrets.token_hex(32)  # the application backend's HS256 key
APP_ISSUER = "https://app.example"
APP_AUDIENCE = "tidings-api"
SESSION_MODES = ["database", "jwt", "memory"]


# -- helpers --------------------------------------------------------------------------------


def tidings_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m tidings ARGS` (a wide terminal, so tables do not wrap)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "COLUMNS": "200"},
        check=False,
    )


def cli_ok(*args: str, stdin: str | None = None) -> str:
    done = tidings_cli(*args, stdin=stdin)
    assert done.returncode == 0, f"tidings {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout


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


# -- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def users_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store holding alice and bob, made with `tidings users add`."""
    folder = tmp_path_factory.mktemp("auth-users")
    url = f"sqlite:///{folder / 't.db'}"
    out = cli_ok(
        "users", "add", "alice", "--store", url, "--password-stdin",
        "--publish", "news.*", "--subscribe", "news.*",
        stdin=ALICE_PASSWORD + "\n",
    )  # fmt: skip
    assert "alice" in out
    cli_ok(
        "users", "add", "bob", "--store", url, "--password-stdin",
        "--publish", "other.*", "--subscribe", "other.*",
        stdin=BOB_PASSWORD + "\n",
    )  # fmt: skip
    listed = cli_ok("users", "list", "--store", url)
    assert "alice" in listed
    assert "bob" in listed
    assert ALICE_PASSWORD not in listed
    return folder


@pytest.fixture
def store(users_store: Path, tmp_path: Path) -> str:
    """This test's own copy of the users' store, as a URL."""
    for f in users_store.glob("t.db*"):
        shutil.copy(f, tmp_path / f.name)
    return f"sqlite:///{tmp_path / 't.db'}"


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


# -- 1. login in each session mode, permissions, and a restart -------------------------------


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
        page = http.get("/v1/channels/news.a/messages", headers=bearer(token))
        assert page.status_code == 200, page.text
        assert [m["id"] for m in page.json()["messages"]] == [first_id]


# -- 2. logout, and forged session JWTs ------------------------------------------------------


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


# -- 3. application-issued JWTs --------------------------------------------------------------


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
        page = http.get("/v1/channels/app.x/messages", headers=bearer(good))
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


# -- 4. subscribe permissions ----------------------------------------------------------------


@pytest.mark.timeout(30)
def test_a_subscriber_without_permission_receives_none_of_a_channels_messages(
    tidings_server: ServerFactory, store: str
) -> None:
    """bob (subscribe other.*) is refused news.a on every way of reading it: poll, long
    poll, SSE, multiplexed SSE, WebSocket, channel info and listing; alice's SSE on news.a
    gets the replayed and the live messages."""
    srv = auth_server(tidings_server, store, "database")
    alice, bob = login(srv), login(srv, "bob", BOB_PASSWORD)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        ids = []
        for n in range(3):
            r = send(http, "news.a", {"n": n}, bearer(alice))
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        assert send(http, "other.a", "bob's", bearer(bob)).status_code == 201

        assert_error(http.get("/v1/channels/news.a/messages", headers=bearer(bob)), 403)
        long_poll = http.get(
            "/v1/channels/news.a/messages",
            params={"after": ids[-1], "wait": "2"},
            headers=bearer(bob),
        )
        assert_error(long_poll, 403)
        assert_error(http.get("/v1/channels/news.a", headers=bearer(bob)), 403)
        listed = http.get("/v1/channels", headers=bearer(bob))
        assert listed.status_code == 200, listed.text
        assert [c["name"] for c in listed.json()["channels"]] == ["other.a"]
        own = http.get("/v1/channels/other.a/messages", headers=bearer(bob))
        assert [m["data"] for m in own.json()["messages"]] == ["bob's"]

        sse_headers = {**bearer(bob), "Accept": "text/event-stream"}
        with http.stream(
            "GET", "/v1/channels/news.a/events", params={"after": "0"}, headers=sse_headers
        ) as r:
            r.read()
            assert_error(r, 403)
        with http.stream(
            "GET",
            "/v1/events",
            params=[("channel", "other.a"), ("channel", "news.a")],
            headers=sse_headers,
        ) as r:
            r.read()
            assert_error(r, 403)

    with ws_connect(
        f"{srv.ws_url}/v1/channels/news.a/ws?after=0", additional_headers=bearer(bob)
    ) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008

    sse = RawSSE(srv.port, "/v1/channels/news.a/events?after=0", headers=bearer(alice))
    try:
        assert sse.status == 200
        got = [next_event(sse, 5) for _ in range(3)]
        assert [f["id"] for f in got] == ids
        assert [json.loads(f["data"]) for f in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            live = send(http, "news.a", {"n": 3}, bearer(alice))
            assert live.status_code == 201
        frame = next_event(sse, 5)
        assert frame["id"] == live.json()["id"]
        assert json.loads(frame["data"]) == {"n": 3}
    finally:
        sse.close()


# -- 5. revoked sessions lose their open streams ---------------------------------------------


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


# -- 6. the session cookie -------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_the_session_cookie_is_httponly_and_changes_nothing_without_an_allowed_origin(
    tidings_server: ServerFactory, store: str
) -> None:
    """Login sets `tidings_session` HttpOnly, SameSite=Lax (not Secure over plain HTTP).
    With that cookie, reads need no Origin; a publish needs Origin = the server's own
    origin or one of --cors-origins, and is 403 without one or with any other; logout by
    cookie too, after which the cookie is 401."""
    srv = auth_server(tidings_server, store, "database", "--cors-origins", "https://app.example")
    r = login_response(srv, "alice", ALICE_PASSWORD)
    assert r.status_code == 200, r.text
    token = r.json()["token"]
    set_cookies = r.headers.get_list("set-cookie")
    assert len(set_cookies) == 1, set_cookies
    first, *attrs = (part.strip() for part in set_cookies[0].split(";"))
    assert first == f"tidings_session={token}"
    lowered = {a.lower() for a in attrs}
    assert "httponly" in lowered
    assert "samesite=lax" in lowered
    assert "path=/" in lowered
    assert "secure" not in lowered
    assert r.headers.get("cache-control") == "no-store"

    cookie = {"Cookie": f"tidings_session={token}"}
    own_origin = srv.url  # http://127.0.0.1:<port>
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        me = http.get("/v1/auth/me", headers=cookie)
        assert me.status_code == 200, me.text
        assert me.json()["user"] == "alice"
        assert http.get("/v1/channels/news.a/messages", headers=cookie).status_code == 200

        assert_error(send(http, "news.a", "no origin", cookie), 403)
        for origin in (
            "https://evil.example",
            "null",
            f"http://localhost:{srv.port}",  # the same server under another name
            f"https://127.0.0.1:{srv.port}",  # another scheme
            "http://127.0.0.1:1",  # another port
        ):
            assert_error(send(http, "news.a", origin, {**cookie, "Origin": origin}), 403)

        r = send(http, "news.a", "same origin", {**cookie, "Origin": own_origin})
        assert r.status_code == 201, r.text
        r = send(http, "news.a", "cors origin", {**cookie, "Origin": "https://app.example"})
        assert r.status_code == 201, r.text
        # Bearer tokens are not sent by browsers on their own: no Origin needed.
        assert send(http, "news.a", "bearer", bearer(token)).status_code == 201

        assert_error(http.post("/v1/auth/logout", headers=cookie), 403)
        out = http.post("/v1/auth/logout", headers={**cookie, "Origin": own_origin})
        assert out.status_code == 200, out.text
        cleared = out.headers["set-cookie"].lower()
        assert cleared.startswith("tidings_session=;")
        assert "max-age=0" in cleared
        assert_error(http.get("/v1/auth/me", headers=cookie), 401)


# -- API tokens and user administration from the CLI ---------------------------------------


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


# -- 7. no auth beyond loopback --------------------------------------------------------------


@pytest.mark.timeout(30)
def test_serving_beyond_loopback_without_auth_exits_with_the_way_out() -> None:
    """`tidings serve --host 0.0.0.0` with no auth configured exits by itself, non-zero,
    naming --require-auth and --allow-anonymous, and never starts listening."""
    port = free_port()
    done = tidings_cli("serve", "--host", "0.0.0.0", "--port", str(port), "--store", "memory://")
    assert done.returncode != 0, done.stdout + done.stderr
    message = " ".join((done.stderr + done.stdout).split())
    assert "--require-auth" in message or "--allow-anonymous" in message, message
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)


# -- 8. CORS -------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_cors_names_allowed_origins_with_credentials_and_never_a_wildcard_with_them(
    tidings_server: ServerFactory, store: str
) -> None:
    """Listed origins get their own name back with credentials allowed; others get no
    CORS grant; a wildcard list allows any origin but never with credentials."""
    app = "http://app.test"
    srv = auth_server(tidings_server, store, "database", "--cors-origins", app)
    token = login(srv)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        pre = http.options(
            "/v1/channels/news.c/messages",
            headers={
                "Origin": app,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert pre.status_code == 200, pre.text
        assert pre.headers["access-control-allow-origin"] == app
        assert pre.headers["access-control-allow-credentials"] == "true"
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()

        evil = http.options(
            "/v1/channels/news.c/messages",
            headers={"Origin": "http://evil.test", "Access-Control-Request-Method": "POST"},
        )
        assert evil.status_code == 400
        assert "access-control-allow-origin" not in evil.headers

        r = send(http, "news.c", "x", {**bearer(token), "Origin": app})
        assert r.status_code == 201, r.text
        assert r.headers["access-control-allow-origin"] == app
        assert "origin" in r.headers["vary"].lower()
        other = http.get("/v1/auth/me", headers={**bearer(token), "Origin": "http://evil.test"})
        assert "access-control-allow-origin" not in other.headers
    srv.stop()

    wild = auth_server(tidings_server, store, "database", "--cors-origins", "*")
    with httpx.Client(base_url=wild.url, timeout=10) as http:
        pre = http.options(
            "/v1/auth/me",
            headers={"Origin": "http://any.test", "Access-Control-Request-Method": "GET"},
        )
        assert pre.status_code == 200
        assert pre.headers["access-control-allow-origin"] == "*"
        assert "access-control-allow-credentials" not in pre.headers


# -- 9. expiry and TLS -----------------------------------------------------------------------


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


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.timeout(40)
def test_over_tls_the_session_cookie_is_secure(store: str, tmp_path: Path) -> None:
    """Served with --ssl-certfile/--ssl-keyfile, login sets the cookie with Secure."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    log = (tmp_path / "tls.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tidings", "serve", "--port", str(port), "--store", store,
            "--require-auth", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
        ],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"https://127.0.0.1:{port}"
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=base, verify=trust, timeout=5) as https:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if https.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None, (tmp_path / "tls.log").read_text()
                assert time.monotonic() < deadline
                time.sleep(0.1)
            r = https.post("/v1/auth/login", json={"username": "alice", "password": ALICE_PASSWORD})
            assert r.status_code == 200, r.text
            cookie = r.headers["set-cookie"]
            assert "; Secure" in cookie
            assert "HttpOnly" in cookie
            me = https.get("/v1/auth/me", headers=bearer(r.json()["token"]))
            assert me.status_code == 200
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


# -- 10. the admin API -------------------------------------------------------------------


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


@pytest.mark.timeout(30)
def test_head_requests_are_authenticated_like_get(
    tidings_server: ServerFactory, store: str
) -> None:
    """HEAD is answered by the GET endpoint with the same checks (no handler is reachable
    around authentication), and without a body."""
    srv = auth_server(tidings_server, store, "database")
    token = login(srv)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.head("/v1/channels/news.h/messages").status_code == 401
        assert http.head("/metrics").status_code == 401
        assert http.head("/v1/channels/other.h/messages", headers=bearer(token)).status_code == 403
        ok = http.head("/v1/channels/news.h/messages?after=0", headers=bearer(token))
        assert ok.status_code == 200
        assert ok.content == b""
        assert http.head("/healthz").status_code == 200


# -- 11. regressions from the security review -----------------------------------------------


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
        started = time.monotonic()
        cli_ok("users", "remove", "alice", "--store", store)
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
def test_a_subscribe_grant_of_everything_does_not_read_other_peoples_jobs(
    tidings_server: ServerFactory, store: str
) -> None:
    """Job channels follow the job rule only: `--subscribe '*'` reads no job channel it did
    not submit or work, and lists none."""
    cli_ok("users", "grant", "bob", "--store", store, "--subscribe", "*")
    cli_ok("users", "grant", "alice", "--store", store, "--submit", "report")
    srv = auth_server(tidings_server, store, "database")
    alice, bob = bearer(login(srv)), bearer(login(srv, "bob", BOB_PASSWORD))
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job = http.post("/v1/jobs", json={"type": "report", "payload": 1}, headers=alice).json()
        channel = f"job.{job['id']}"
        assert (
            http.get(f"/v1/channels/{channel}/messages?after=0", headers=alice).status_code == 200
        )
        assert_error(http.get(f"/v1/channels/{channel}/messages?after=0", headers=bob), 403)
        assert_error(http.get(f"/v1/channels/{channel}", headers=bob), 403)
        assert_error(http.get(f"/v1/events?channel={channel}", headers=bob), 403)
        listed = http.get("/v1/channels?prefix=job.", headers=bob).json()["channels"]
        assert listed == []


@pytest.mark.timeout(30)
def test_user_names_hold_no_dot_so_sub_patterns_cannot_overlap() -> None:
    """`user.{sub}.*` for bob would cover `user.bob.evil.*`: dotted names are refused."""
    refused = tidings_cli(
        "users", "add", "bob.evil", "--store", "sqlite:////nonexistent/never.db",
        "--password-stdin", stdin="a long password\n",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "no '.'" in refused.stderr


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


@pytest.mark.timeout(30)
def test_an_anonymous_loopback_server_refuses_other_web_origins_and_rebound_hosts(
    tidings_server: ServerFactory,
) -> None:
    """Without auth on loopback, a request from another site's page (Origin) or through a
    rebound DNS name (Host) is 403; plain clients and same-origin pages work."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert send(http, "lo.x", 1, {}).status_code == 201
        own = {"Origin": f"http://127.0.0.1:{srv.port}"}
        assert send(http, "lo.x", 2, own).status_code == 201
        assert_error(send(http, "lo.x", 3, {"Origin": "https://evil.example"}), 403)
        rebound = {"Host": f"rebind.evil.example:{srv.port}"}
        assert_error(http.get("/v1/channels/lo.x/messages?after=0", headers=rebound), 403)
        assert http.get("/healthz", headers=rebound).status_code == 200
    evil_socket = ws_connect(f"{srv.ws_url}/v1/channels/lo.x/ws", origin="https://evil.example")
    with pytest.raises(ConnectionClosed) as closed, evil_socket as sock:
        sock.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    # A name a local reverse proxy forwards can be allowed by the operator.
    proxied = tidings_server(args=["--allowed-hosts", "app.internal"])
    named = {"Host": f"app.internal:{proxied.port}"}
    assert httpx.get(f"{proxied.url}/v1/channels", headers=named, timeout=10).status_code == 200
    other = {"Host": f"rebind.evil.example:{proxied.port}"}
    assert_error(httpx.get(f"{proxied.url}/v1/channels", headers=other, timeout=10), 403)
