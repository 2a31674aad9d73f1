"""The host/origin gate: who may act through a request from where."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tidings.protocol.errors import Forbidden, Unauthorized
from tidings.server.policy import AccessPolicy, loopback_host
from tidings.server.principals import ANONYMOUS, Principal
from tidings.server.settings import Settings


def scope(
    host: str | None = "127.0.0.1:8000",
    origin: str | None = None,
    method: str = "GET",
    kind: str = "http",
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> dict[str, Any]:
    headers = list(extra)
    if host is not None:
        headers.append((b"host", host.encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    made: dict[str, Any] = {"type": kind, "headers": headers, "scheme": "http"}
    if kind == "http":
        made["method"] = method
    return made


def policy(**settings: Any) -> AccessPolicy:
    return AccessPolicy(Settings(store="memory://", **settings))


def cookie_user() -> Principal:
    return msgspec.structs.replace(ANONYMOUS, name="alice", session="s", via_cookie=True)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("127.0.0.1:8000", True),
        ("127.3.4.5", True),
        ("[::1]:8000", True),
        ("[::1]", True),
        ("example.com:8000", False),
        ("10.0.0.1", False),
        ("[2001:db8::1]:80", False),
    ],
)
def test_loopback_hosts_are_localhost_127_and_ipv6_loopback_with_any_port(
    host: str, loopback: bool
) -> None:
    assert loopback_host(host) is loopback


def test_an_anonymous_request_naming_loopback_passes() -> None:
    policy().admit(scope(), ANONYMOUS)


def test_an_anonymous_request_naming_another_host_on_a_loopback_server_is_refused() -> None:
    """A DNS name rebound to 127.0.0.1 must not reach a loopback server's anonymous API."""
    with pytest.raises(Forbidden, match="--allowed-hosts"):
        policy().admit(scope(host="evil.example:8000"), ANONYMOUS)


def test_an_allowed_host_passes_and_a_wildcard_allows_every_host() -> None:
    policy(allowed_hosts="proxy.local").admit(scope(host="proxy.local:8000"), ANONYMOUS)
    policy(allowed_hosts="*").admit(scope(host="anything.example"), ANONYMOUS)


def test_a_server_not_on_loopback_does_not_check_the_host() -> None:
    policy(host="0.0.0.0", allow_anonymous=True).admit(scope(host="evil.example"), ANONYMOUS)


def test_an_anonymous_request_from_another_origin_is_refused() -> None:
    with pytest.raises(Forbidden, match="may not use this session"):
        policy().admit(scope(origin="https://evil.example"), ANONYMOUS)


def test_an_anonymous_request_from_this_servers_own_origin_passes() -> None:
    policy().admit(scope(origin="http://127.0.0.1:8000"), ANONYMOUS)


def test_a_cookie_request_that_changes_state_needs_an_origin() -> None:
    with pytest.raises(Forbidden, match="must carry an Origin"):
        policy().admit(scope(method="POST"), cookie_user())


def test_a_cookie_request_that_changes_state_from_an_allowed_cors_origin_passes() -> None:
    gate = policy(cors_origins="https://app.example/")
    gate.admit(scope(method="DELETE", origin="https://app.example"), cookie_user())


def test_a_cookie_read_needs_no_origin_but_a_cookie_socket_does() -> None:
    gate = policy()
    gate.admit(scope(method="GET"), cookie_user())
    gate.admit(scope(method="HEAD"), cookie_user())
    with pytest.raises(Forbidden):
        gate.admit(scope(kind="websocket"), cookie_user())
    with pytest.raises(Forbidden):
        gate.admit(scope(kind="websocket", origin="https://evil.example"), cookie_user())


def test_a_bearer_principal_is_not_checked_for_host_or_origin() -> None:
    bearer = msgspec.structs.replace(ANONYMOUS, name="bob", session="token:x")
    policy().admit(scope(host="evil.example", origin="https://evil.example"), bearer)


@pytest.mark.parametrize(
    "header", [b"x-forwarded-for", b"forwarded", b"x-real-ip"], ids=lambda h: h.decode()
)
def test_an_anonymous_request_a_proxy_forwarded_to_a_loopback_server_is_refused(
    header: bytes,
) -> None:
    """nginx in front of a loopback server sends Host: 127.0.0.1 for every Internet client:
    the forwarding header is what tells them apart from this host's own clients."""
    proxied = scope(extra=((header, b"203.0.113.9"),))
    with pytest.raises(Unauthorized, match="--allow-anonymous"):
        policy().admit(proxied, ANONYMOUS)
    policy(allow_anonymous=True).admit(proxied, ANONYMOUS)
    bearer = msgspec.structs.replace(ANONYMOUS, name="bob", session="token:x")
    policy().admit(proxied, bearer)
