"""What a browser sees end to end: the session cookie (HttpOnly, SameSite=Lax, Secure
over TLS) whose writes need an allowed Origin, and CORS that names allowed origins and never
pairs a wildcard with credentials."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory, free_port
from tests.e2e.auth.helpers import (
    ALICE_PASSWORD,
    assert_error,
    auth_server,
    bearer,
    login,
    login_response,
    send,
)


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
