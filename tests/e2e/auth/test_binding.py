"""Who may reach a server without auth: it refuses to listen beyond loopback, and on
loopback it refuses other sites' pages (Origin) and rebound DNS names (Host)."""

from __future__ import annotations

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerFactory, free_port
from tests.e2e.auth.helpers import (
    assert_error,
    send,
)
from tests.e2e.helpers import tidings_cli


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


@pytest.mark.timeout(30)
def test_a_proxied_request_to_an_anonymous_loopback_server_is_401_unless_allowed(
    tidings_server: ServerFactory,
) -> None:
    """A reverse proxy on this host makes every Internet client look local (Host names
    loopback, the peer is 127.0.0.1): its forwarding header marks the request as not from
    this host, so it must authenticate, unless --allow-anonymous trusts the proxy's clients."""
    proxied = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"}
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        refused = http.get("/v1/channels/lo.p/messages?after=0", headers=proxied)
        assert_error(refused, 401)
        assert "--allow-anonymous" in refused.json()["error"]["message"]
        assert http.get("/v1/channels/lo.p/messages?after=0").status_code == 200
    trusting = tidings_server(args=["--allow-anonymous"])
    with httpx.Client(base_url=trusting.url, timeout=10) as http:
        assert http.get("/v1/channels/lo.p/messages?after=0", headers=proxied).status_code == 200
