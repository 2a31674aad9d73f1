"""Login, logout and "who am I" (`/v1/auth/...`).

Login answers with a bearer token and sets the same token as an HttpOnly, SameSite
session cookie (Secure when served over TLS). Every login makes a fresh session id.

A login over the limits (tidings.server.ratelimit) answers 429, or 503 when the password-hashing
queue is full, with `Retry-After` in seconds and the same number as `retry_after` in the
JSON error.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.protocol.codecs import format_time
from tidings.protocol.errors import Unauthorized, UnsupportedMediaType
from tidings.server.auth import COOKIE, AuthService
from tidings.server.http.common import decode_body, json_response, principal_of, read_body

__all__ = ["routes"]


class LoginBody(msgspec.Struct, forbid_unknown_fields=True):
    username: str
    password: str


def _svc(request: Request) -> AuthService:
    svc: AuthService = request.app.state.auth
    return svc


def _cookie(request: Request, value: str, max_age: int) -> str:
    secure = "; Secure" if request.url.scheme in ("https", "wss") else ""
    return f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}"


async def login(request: Request) -> Response:
    # JSON only: a cross-site HTML form can post text/plain or form data without asking
    # (login CSRF: the victim's browser logged in as the attacker), not application/json.
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaType(
            'send the login as JSON: Content-Type: application/json, {"username", "password"}'
        )
    body: LoginBody = decode_body(LoginBody, await read_body(request, 16 * 1024))
    svc = _svc(request)
    client = request.scope.get("client")
    token, expires, principal = await svc.login(
        body.username, body.password, client[0] if client else None
    )
    response = json_response(
        {
            "token": token,
            "expires_at": format_time(expires),
            "user": principal.name,
            "permissions": principal.permissions.to_wire(),
        }
    )
    response.headers["set-cookie"] = _cookie(request, token, int(svc.session_ttl))
    response.headers["cache-control"] = "no-store"
    return response


async def logout(request: Request) -> Response:
    principal = principal_of(request)
    if principal.session is None:
        raise Unauthorized("not logged in: send the session's token or cookie")
    await _svc(request).logout(principal)
    response = json_response({"status": "logged out"})
    response.headers["set-cookie"] = _cookie(request, "", 0)
    return response


async def me(request: Request) -> Response:
    principal = principal_of(request)
    return json_response(
        {
            "user": principal.name,
            "anonymous": principal.session is None,
            "permissions": principal.permissions.to_wire(),
            "expires_at": format_time(principal.expires) if principal.expires else None,
        }
    )


routes = [
    Route("/v1/auth/login", login, methods=["POST"]),
    Route("/v1/auth/logout", logout, methods=["POST"]),
    Route("/v1/auth/me", me, methods=["GET"]),
]
