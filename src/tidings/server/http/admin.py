"""Administration endpoints (`/v1/admin/...`), for admins only.

Users and API tokens (the same as `tidings users …` / `tidings tokens …`, through the
server): `GET /v1/admin/users`, `PUT /v1/admin/users/{name}` `{"password"?, "permissions"}`,
`DELETE /v1/admin/users/{name}`, `POST /v1/admin/users/{name}/tokens` `{"name"?,
"expires"?}` (the secret is in this answer only), `DELETE /v1/admin/tokens/{key}`.

`GET /v1/admin/users/{name}/credentials` lists a user's API tokens and login sessions
(their keys, never their secrets); `DELETE /v1/admin/tokens/{key}` revokes either.

`GET /v1/admin/network` is `tidings doctor` run by the server, for its own store's host:
the route the kernel takes to it, TCP connect times, and the default gateway's MAC.

`GET /v1/admin/bridges` lists this server's bridges to message buses (tidings.server.bridges):
each one's state, counts acknowledged / published / duplicates / dead-lettered, lag and
last error.

`GET /v1/admin/server` describes this server process: version, Python, pid, start time,
store engine and URL, and every setting — with each secret replaced by `***`.
"""

from __future__ import annotations

import asyncio
import functools
import os
import platform
import time
from dataclasses import fields
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import msgspec
from prometheus_client import ProcessCollector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings._version import __version__
from tidings.protocol.codecs import format_time
from tidings.protocol.errors import InvalidBody, NotFound
from tidings.server import doctor
from tidings.server.auth import hash_password, new_api_token, token_key
from tidings.server.bridges import Bridges
from tidings.server.http.common import (
    decode_body,
    json_response,
    query_int,
    read_body,
    require_admin,
)
from tidings.server.principals import KIND_SESSION, KIND_TOKEN, Credential, Permissions, User
from tidings.server.settings import Settings
from tidings.server.stores.base import Store

__all__ = ["REDACTED", "redacted_settings", "redacted_url", "routes"]

# What a secret's value is replaced by in GET /v1/admin/server.
REDACTED = "***"
# A setting or URL query parameter whose name holds one of these is a secret.
_SECRET_WORDS = ("secret", "password", "passwd", "token", "key")


async def network(request: Request) -> Response:
    """The doctor's report for the server's store host (`?tries=N`, default 5)."""
    require_admin(request)
    settings: Settings = request.app.state.settings
    tries = query_int(request, "tries", doctor.DEFAULT_TRIES, 1, 20)
    # Netlink reads and blocking connects: off the event loop.
    report = await asyncio.to_thread(doctor.store_report, settings.store, tries)
    return json_response(report)


def _secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redacted_url(url: str) -> str:
    """`url` without its secrets: the password of its user part and the value of each
    query parameter named like a secret replaced by `***` (a URL that does not parse is
    replaced whole)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return REDACTED
    netloc, query = parts.netloc, parts.query
    if password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{REDACTED}@{host}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_secret_name(k) for k, _ in pairs):
        query = urlencode([(k, REDACTED if _secret_name(k) else v) for k, v in pairs], safe="*:/")
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # as given: a rebuilt `memory://` would lose its `//`
    return parts._replace(netloc=netloc, query=query).geturl()


def redacted_settings(settings: Settings) -> dict[str, Any]:
    """Every setting by name: a secret (a setting named like one: `jwt_secret`,
    `app_jwt_key`, `ssl_keyfile`, ...) as `***` when it is set, and every URL without its
    password (`redacted_url`)."""
    out: dict[str, Any] = {}
    for field in fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, str) and value:
            if _secret_name(field.name):
                value = REDACTED
            elif "://" in value or "@" in value:
                # Several URLs (bridges) are separated by white space: each redacted.
                value = " ".join(redacted_url(part) for part in value.split())
        out[field.name] = value
    return out


@functools.cache
def process_started() -> float:
    """When this process started (Unix time): the kernel's word where Prometheus' process
    collector reads it (Linux), else when this was first asked."""
    for metric in ProcessCollector(registry=None).collect():
        if metric.name == "process_start_time_seconds" and metric.samples:
            return float(metric.samples[0].value)
    return time.time()


def _engine(url: str) -> str:
    scheme = url.partition("://")[0].lower()
    return "redis" if scheme == "rediss" else scheme


async def server_info(request: Request) -> Response:
    """This server process and its settings, secrets replaced by `***`."""
    require_admin(request)
    settings: Settings = request.app.state.settings
    started = process_started()
    return json_response(
        {
            "version": __version__,
            "python": platform.python_version(),
            "pid": os.getpid(),
            "started_at": format_time(started),
            "uptime": max(0.0, time.time() - started),
            "store": {"engine": _engine(settings.store), "url": redacted_url(settings.store)},
            "settings": redacted_settings(settings),
        },
        headers={"cache-control": "no-store"},
    )


class UserBody(msgspec.Struct, forbid_unknown_fields=True):
    permissions: Permissions = Permissions()
    password: str | None = None


class TokenBody(msgspec.Struct, forbid_unknown_fields=True):
    name: str = ""
    expires: float | None = None  # seconds from now; None: never


def _store(request: Request) -> Store:
    store: Store = request.app.state.channels.store
    return store


def _user_to_wire(user: User) -> dict[str, object]:
    return {
        "name": user.name,
        "password": user.password_hash is not None,
        "permissions": user.permissions.to_wire(),
        "created": user.created,
    }


async def list_users(request: Request) -> Response:
    require_admin(request)
    return json_response(
        {"users": [_user_to_wire(u) for u in await _store(request).auth.list_users()]}
    )


async def put_user(request: Request) -> Response:
    """Create or replace a user; without "password", a user made earlier keeps theirs."""
    require_admin(request)
    name = request.path_params["name"]
    try:
        User.check_name(name)
    except ValueError as exc:
        raise InvalidBody(str(exc)) from None
    body: UserBody = decode_body(UserBody, await read_body(request, 64 * 1024))
    store = _store(request)
    known = await store.auth.get_user(name)
    if body.password is not None:
        if len(body.password) < 8:
            raise InvalidBody("the password must be at least 8 characters")
        # argon2 is deliberately slow: off the event loop.
        password_hash: str | None = await asyncio.to_thread(hash_password, body.password)
    else:
        password_hash = known.password_hash if known else None
    # A new password starts a new epoch: sessions and tokens made before it end (they
    # are bound to `created`, see tidings.server.auth).
    epoch = known.created if known and body.password is None else time.time()
    user = User(name, password_hash, body.permissions, epoch)
    await store.auth.put_user(user)
    return json_response(_user_to_wire(user), 200 if known else 201)


async def delete_user(request: Request) -> Response:
    require_admin(request)
    if not await _store(request).auth.delete_user(request.path_params["name"]):
        raise NotFound(f"no user {request.path_params['name']!r}")
    return Response(status_code=204)


async def create_token(request: Request) -> Response:
    require_admin(request)
    name = request.path_params["name"]
    body: TokenBody = decode_body(TokenBody, await read_body(request, 16 * 1024))
    if body.expires is not None and not body.expires > 0:
        raise InvalidBody('"expires" is a number of seconds > 0, or null for never')
    store = _store(request)
    if await store.auth.get_user(name) is None:
        raise NotFound(f"no user {name!r}")
    secret = new_api_token()
    now = time.time()
    expires = None if body.expires is None else now + body.expires
    cred = Credential(token_key(secret), KIND_TOKEN, name, now, expires, body.name)
    await store.auth.put_credential(cred)
    return json_response(
        {"token": secret, "key": cred.key, "user": name, "name": body.name, "expires": expires},
        201,
        {"cache-control": "no-store"},
    )


async def list_credentials(request: Request) -> Response:
    """A user's live API tokens and login sessions, oldest first: each one's key (what
    `DELETE /v1/admin/tokens/{key}` takes), never its secret."""
    require_admin(request)
    name = request.path_params["name"]
    store = _store(request)
    if await store.auth.get_user(name) is None:
        raise NotFound(f"no user {name!r}")
    credentials = [
        {
            "key": c.key,
            "kind": c.kind,
            "name": c.name,
            "created": format_time(c.created),
            "expires": None if c.expires is None else format_time(c.expires),
        }
        for c in await store.auth.list_credentials(name)
        if c.kind in (KIND_TOKEN, KIND_SESSION)
    ]
    return json_response({"credentials": credentials}, headers={"cache-control": "no-store"})


async def revoke_token(request: Request) -> Response:
    require_admin(request)
    if not await _store(request).auth.delete_credential(request.path_params["key"]):
        raise NotFound("no such token or session: give the full key from the token's creation")
    return Response(status_code=204)


async def list_bridges(request: Request) -> Response:
    """The server's bridges: each one's state, counts, lag and last error."""
    require_admin(request)
    bridges: Bridges = request.app.state.bridges
    return json_response({"bridges": bridges.snapshot()}, headers={"cache-control": "no-store"})


routes = [
    Route("/v1/admin/bridges", list_bridges, methods=["GET"]),
    Route("/v1/admin/network", network, methods=["GET"]),
    Route("/v1/admin/server", server_info, methods=["GET"]),
    Route("/v1/admin/users", list_users, methods=["GET"]),
    Route("/v1/admin/users/{name}", put_user, methods=["PUT"]),
    Route("/v1/admin/users/{name}", delete_user, methods=["DELETE"]),
    Route("/v1/admin/users/{name}/tokens", create_token, methods=["POST"]),
    Route("/v1/admin/users/{name}/credentials", list_credentials, methods=["GET"]),
    Route("/v1/admin/tokens/{key}", revoke_token, methods=["DELETE"]),
]
