"""A server behind a TLS-terminating proxy: with `--forwarded-allow-ips` naming the proxy,
the client's scheme and address come from X-Forwarded-Proto / X-Forwarded-For (a session
cookie is Secure, the page's https origin passes the cookie check, the access log names
the client); without it those headers are ignored, so a client cannot forge them."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.auth.helpers import ALICE_PASSWORD, auth_server

pytestmark = pytest.mark.timeout(60)

# What a proxy at 127.0.0.1 adds to a request it took over https from 203.0.113.9.
FORWARDED = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
# Access lines are logged at info (the test servers log warnings only by default).
ACCESS_LINES = {"TIDINGS_LOG_LEVEL": "info"}


def login_cookie(srv: ServerProcess) -> str:
    r = httpx.post(
        f"{srv.url}/v1/auth/login",
        json={"username": "alice", "password": ALICE_PASSWORD},
        headers=FORWARDED,
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.headers["set-cookie"]


def publish_with_cookie(srv: ServerProcess, cookie: str, origin: str) -> httpx.Response:
    session = cookie.split(";", 1)[0]
    return httpx.post(
        f"{srv.url}/v1/channels/news.proxy/messages",
        content=b"hi",
        headers={**FORWARDED, "Cookie": session, "Origin": origin, "Host": "push.example"},
        timeout=10,
    )


def test_a_trusted_proxy_gives_the_scheme_and_the_client_address(
    tidings_server: ServerFactory, store: str
) -> None:
    srv = auth_server(
        tidings_server,
        store,
        "database",
        "--forwarded-allow-ips",
        "127.0.0.1",
        "--access-log",
        env=ACCESS_LINES,
    )
    cookie = login_cookie(srv)
    assert "; Secure" in cookie
    # The page at https://push.example posts with its session cookie: same origin.
    assert publish_with_cookie(srv, cookie, "https://push.example").status_code == 201
    deadline = time.monotonic() + 5
    while "203.0.113.9" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "203.0.113.9" in srv.log()


def test_without_a_trusted_proxy_the_forwarded_headers_are_ignored(
    tidings_server: ServerFactory, store: str
) -> None:
    srv = auth_server(tidings_server, store, "database", "--access-log", env=ACCESS_LINES)
    cookie = login_cookie(srv)
    assert "; Secure" not in cookie
    # The request says https, but nothing vouches for it: the origin is not this server's.
    refused = publish_with_cookie(srv, cookie, "https://push.example")
    assert refused.status_code == 403, refused.text
    deadline = time.monotonic() + 5
    while "news.proxy" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "news.proxy" in srv.log() and "203.0.113.9" not in srv.log()
