"""A client told to slow down is slowed down.

The breakage: 300 connections sending wrong-password logins back to back, each answered
429 at once, kept the event loop answering them; every other client waited behind them
(a new connection's /healthz took over a second). Now the next request on a connection
answered 429 or 503 is read no sooner than a second later.
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import ServerFactory
from tidings.server.http.protocol import TARPIT


@pytest.mark.timeout(60)
def test_a_keep_alive_client_ignoring_429_gets_one_answer_a_second(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server(args=["--limit-loopback", "--login-rate-per-address", "1"])
    body = {"username": "nobody", "password": "wrong"}
    with httpx.Client(base_url=srv.url, timeout=10) as flood:
        assert flood.post("/v1/auth/login", json=body).status_code == 401
        started = time.monotonic()
        statuses = [flood.post("/v1/auth/login", json=body).status_code for _ in range(4)]
        took = time.monotonic() - started
        # The same connection throughout (keep-alive), slowed down after each 429.
        assert statuses == [429] * 4
        assert took >= 3 * TARPIT * 0.9, f"4 refused logins took {took:.2f} s"
    # Another client is not slowed: a new connection answers at once.
    started = time.monotonic()
    assert httpx.get(f"{srv.url}/healthz", timeout=10).status_code == 200
    assert time.monotonic() - started < TARPIT
