"""Authentication and sessions: who a request is, and logging in and out.

Three session modes (`tidings serve --sessions`), a documented contrast:

* `database` (default): a session is a random token whose SHA-256 is stored in the store;
  it survives restarts and every node sharing the store knows it.
* `memory`: the same tokens kept in this process only — a restart logs everyone out and a
  second node knows nobody. The stateful counterexample; the server warns at start.
* `jwt`: login returns a signed JWT (HS256, the algorithm pinned; `exp`, `iat`, `jti`);
  nothing is stored until logout, which stores the `jti` as revoked until it expires.

Whatever the mode, API tokens made by `tidings tokens create` (stored hashed) and JWTs
signed by the application's own backend (`--app-jwt-*`: a pinned HS256/RS256/ES256 key,
issuer and audience; permissions in a `tidings` claim) are accepted too.

A principal found for a credential is cached for CACHE_SECONDS; logout through this node
drops it at once, and the stream sweep re-checks every session with open streams each
second, ending them when it was revoked or expired.

Logins are limited per client address and per account, and their password checks wait in
a bounded queue (tidings.server.ratelimit): past a limit a login answers 429 or 503 at once. A
JWT's header and claims are refused (401) before they are parsed when nested deeper than
`max_depth`, and its `exp`/`nbf`/`iat` must be numbers of seconds up to the year 9999.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import os
import secrets
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import argon2
import jwt
import msgspec

from tidings.protocol.codecs import JSON_DECODER
from tidings.protocol.errors import BadRequest, Unauthorized
from tidings.server import constants as C
from tidings.server.depth import NestedTooDeep, decode_limited
from tidings.server.principals import (
    ANONYMOUS,
    KIND_REVOKED,
    KIND_SESSION,
    KIND_TOKEN,
    Credential,
    Permissions,
    Principal,
    User,
)
from tidings.server.ratelimit import (
    AccountLimiter,
    AddressLimiter,
    HashingQueue,
    TooManyLogins,
    address_key,
)
from tidings.server.settings import Settings
from tidings.server.stores.base import AuthStore

__all__ = [
    "COOKIE",
    "SESSION_MODES",
    "AuthService",
    "hash_password",
    "new_api_token",
    "token_key",
]

log = logging.getLogger("tidings.auth")

COOKIE = "tidings_session"
SESSION_MODES = ("database", "memory", "jwt")
CACHE_SECONDS = 1.0
# Password checks at once: each argon2 check runs its 4 lanes in parallel threads, so half
# the cores' worth of checks keeps them busy and leaves the event loop room.
HASH_THREADS = max(2, (os.cpu_count() or 2) // 2)
_CACHE_MAX = 10_000
JWT_ISSUER = "tidings"
APP_ALGORITHMS = ("HS256", "RS256", "ES256")
# An application JWT's permission lists: patterns per list, and characters per pattern.
APP_MAX_PATTERNS = 100
APP_MAX_PATTERN_CHARS = 256
# The largest NumericDate accepted (9999-12-31T23:59:59Z, the last second RFC 3339 writes).
MAX_NUMERIC_DATE = 253_402_300_799
_hasher = argon2.PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """A hash of a random password: verifying against it keeps a login for an unknown user
    as slow as for a known one. Made once per process, when the first AuthService is built
    (not at import: the `tidings` command imports this module and must start fast)."""
    return _hasher.hash(secrets.token_hex(16))


def token_key(secret: str) -> str:
    """The stored key of a token: SHA-256 hex (tokens are 256 random bits: no salt needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


def hash_password(password: str) -> str:
    """An argon2id hash of `password`."""
    return _hasher.hash(password)


def new_api_token() -> str:
    """A fresh API token secret (shown once; only its key is stored)."""
    return "tdt_" + secrets.token_urlsafe(32)


_Pattern = Annotated[str, msgspec.Meta(max_length=APP_MAX_PATTERN_CHARS)]
_Patterns = Annotated[list[_Pattern], msgspec.Meta(max_length=APP_MAX_PATTERNS)]


class AppClaims(msgspec.Struct, forbid_unknown_fields=False):
    """The `tidings` claim of an application-issued JWT."""

    publish: _Patterns = []
    subscribe: _Patterns = []
    submit: _Patterns = []
    work: _Patterns = []


class AuthService:
    """Finds the principal of each request; logs in and out."""

    def __init__(self, store: AuthStore, settings: Settings) -> None:
        if settings.sessions not in SESSION_MODES:
            raise ValueError(
                f"--sessions {settings.sessions!r}: use one of {', '.join(SESSION_MODES)}"
            )
        self.store = store
        self.mode = settings.sessions
        self.required = settings.require_auth
        self.session_ttl = settings.session_ttl
        self._memory: dict[str, Credential] = {}
        self.max_depth = settings.max_depth
        self.limit_loopback = settings.limit_loopback
        self._addresses = AddressLimiter(settings.login_rate_per_address)
        self._accounts = AccountLimiter(settings.login_failures_per_account, C.LOGIN_ACCOUNT_WINDOW)
        self._hashing = HashingQueue(HASH_THREADS, settings.login_queue)
        # Logins refused before a password check, by the limit that refused them.
        self.logins_refused: dict[str, int] = {}
        # session -> (user name, the user's `created`), to end the streams of a removed user
        self._owners: dict[str, tuple[str, float]] = {}
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._expiries: dict[str, float] = {}  # session -> when it ends (the stream sweep)
        self.jwt_secret = _jwt_secret(settings) if self.mode == "jwt" else b""
        self.app_algorithm = settings.app_jwt_algorithm.upper()
        self.app_key: Any = None
        if self.app_algorithm:
            if self.app_algorithm not in APP_ALGORITHMS:
                raise ValueError(
                    f"--app-jwt-algorithm {settings.app_jwt_algorithm!r}: use "
                    + ", ".join(APP_ALGORITHMS)
                )
            if settings.app_jwt_key_file:
                self.app_key = Path(settings.app_jwt_key_file).read_bytes()
            elif settings.app_jwt_key:
                self.app_key = settings.app_jwt_key
            else:
                raise ValueError(
                    "--app-jwt-algorithm needs a key: TIDINGS_APP_JWT_KEY (HS256 secret) or"
                    " --app-jwt-key-file (a PEM public key for RS256/ES256)"
                )
            if self.app_algorithm == "HS256" and len(self.app_key) < 32:
                raise ValueError("the HS256 application JWT key must be at least 32 bytes")
        self.app_issuer = settings.app_jwt_issuer or None
        self.app_audience = settings.app_jwt_audience or None
        # Before the first login: making it then would make that login slower than others.
        self._dummy_hash = _dummy_hash()

    # -- finding the principal ------------------------------------------------------------

    async def principal(self, headers: list[tuple[bytes, bytes]]) -> Principal:
        """The request's principal: from `Authorization: Bearer`, else the session cookie.

        No credentials: anonymous (all permissions) unless auth is required (401).
        Credentials that do not check out are always 401, never anonymous.
        """
        token, via_cookie = _credentials_of(headers)
        if token is None:
            if self.required:
                raise Unauthorized(
                    "this server requires authentication: POST /v1/auth/login, then send "
                    "Authorization: Bearer <token> (or the session cookie)"
                )
            return ANONYMOUS
        now = time.time()
        cached = self._cache.get(token)
        if cached is not None and cached[0] > now:
            found = cached[1]
        else:
            found = await self._resolve(token, now)
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            self._cache[token] = (now + CACHE_SECONDS, found)
            if found.session is not None and found.expires is not None:
                if len(self._expiries) >= _CACHE_MAX:
                    self._expiries.clear()
                self._expiries[found.session] = found.expires
        if found.expires is not None and found.expires <= now:
            raise Unauthorized("the session has expired: log in again")
        if via_cookie:
            found = msgspec.structs.replace(found, via_cookie=True)
        return found

    async def _resolve(self, token: str, now: float) -> Principal:
        if token.count(".") == 2:
            return await self._from_jwt(token, now)
        key = token_key(token)
        if token.startswith("tdt_"):
            cred = await self.store.get_credential(key)
            kind = KIND_TOKEN
        elif self.mode == "memory":
            cred = self._memory.get(key)
            kind = KIND_SESSION
        else:
            cred = await self.store.get_credential(key) if self.mode == "database" else None
            kind = KIND_SESSION
        if cred is None or cred.kind != kind or not cred.live(now):
            raise Unauthorized("the token is unknown, revoked or expired: log in again")
        user = await self.store.get_user(cred.user)
        if user is None or cred.created < user.created:
            # Gone, or removed and made again: the new user does not inherit old sessions.
            raise Unauthorized(f"user {cred.user!r} no longer exists")
        prefix = "token" if kind == KIND_TOKEN else "session"
        session = f"{prefix}:{key}"
        self._own(session, user)
        return Principal(user.name, user.permissions, session, cred.expires)

    def _own(self, session: str, user: User) -> None:
        if len(self._owners) >= _CACHE_MAX:
            self._owners.clear()
        self._owners[session] = (user.name, user.created)

    async def _from_jwt(self, token: str, now: float) -> Principal:
        _check_nesting(token, self.max_depth)
        if self.mode == "jwt":
            try:
                claims = jwt.decode(
                    token,
                    self.jwt_secret,
                    algorithms=["HS256"],
                    audience=JWT_ISSUER,
                    issuer=JWT_ISSUER,
                    options={"require": ["exp", "iat", "jti", "sub"]},
                )
            except jwt.PyJWTError as exc:
                if self.app_key is None:
                    raise Unauthorized(f"invalid token: {exc}") from None
                claims = None  # perhaps the application's own: try that key next
            if claims is not None:
                _check_dates(claims)
                jti = str(claims["jti"])
                if await self.store.get_credential(f"jti:{jti}") is not None:
                    raise Unauthorized("the token was revoked (logged out): log in again")
                user = await self.store.get_user(str(claims["sub"]))
                if user is None or claims.get("ucr") != user.created:
                    # Gone, or removed and made again (the token names the user's creation).
                    raise Unauthorized(f"user {claims['sub']!r} no longer exists")
                self._own(f"jwt:{jti}", user)
                return Principal(user.name, user.permissions, f"jwt:{jti}", float(claims["exp"]))
        if self.app_key is None:
            raise Unauthorized("invalid token: not signed by a key this server trusts")
        try:
            claims = jwt.decode(
                token,
                self.app_key,
                algorithms=[self.app_algorithm],
                audience=self.app_audience,
                issuer=self.app_issuer,
                options={"require": ["exp", "sub"], "verify_aud": self.app_audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        _check_dates(claims)
        try:
            name = User.check_name(str(claims["sub"]))
            grants = msgspec.convert(claims.get("tidings", {}), AppClaims)
        except (ValueError, msgspec.ValidationError) as exc:
            raise Unauthorized(f"invalid token claims: {exc}") from None
        # Never admin: administration (users, retention, deletion) stays with local users.
        perms = Permissions(
            tuple(grants.publish), tuple(grants.subscribe), tuple(grants.submit), tuple(grants.work)
        )
        session = f"app:{token_key(token)[:32]}"  # one per token, jti or not
        return Principal(name, perms, session, float(claims["exp"]))

    # -- logging in and out ------------------------------------------------------------------

    async def login(
        self, username: str, password: str, client: str | None = None
    ) -> tuple[str, float, Principal]:
        """A fresh session for a user with this password: (token, expires_at, principal).

        `client` is the client's address. Refused before any password is checked, with
        TooManyLogins (429) when the address or the account is over its limit, or LoginBusy
        (503) when the password-hashing queue is full.
        """
        try:
            return await self._login(username, password, client)
        except TooManyLogins as exc:
            self.logins_refused[exc.reason] = self.logins_refused.get(exc.reason, 0) + 1
            raise

    async def _login(
        self, username: str, password: str, client: str | None
    ) -> tuple[str, float, Principal]:
        address = address_key(client, self.limit_loopback)
        if address is not None:
            self._addresses.take(address, time.monotonic())
        self._accounts.check(username, time.monotonic())
        if address is not None:
            self._addresses.enter(address)
        try:
            user = await self.store.get_user(username)
            # Unknown users and users without a password cost one check too: the answer's
            # timing does not tell who exists.
            stored = user.password_hash if user and user.password_hash else self._dummy_hash
            # argon2 costs tens of ms of CPU by design: in a thread, a few at a time, so a
            # flood of logins cannot stall the event loop (streams, heartbeats, the sweep).
            right = await self._hashing.run(
                functools.partial(_password_matches, stored, password, username)
            )
        finally:
            if address is not None:
                self._addresses.leave(address)
        # Locked meanwhile by other guesses: this answer says nothing about the password.
        self._accounts.check(username, time.monotonic())
        if not right or user is None or user.password_hash is None:
            self._accounts.failed(username, time.monotonic())
            raise Unauthorized("wrong user name or password")
        self._accounts.succeeded(username)
        now = time.time()
        expires = now + self.session_ttl
        if self.mode == "jwt":
            jti = uuid.uuid4().hex
            claims = {
                "sub": user.name,
                "iat": int(now),
                "exp": int(expires),
                "jti": jti,
                "iss": JWT_ISSUER,
                "aud": JWT_ISSUER,
                "ucr": user.created,  # the user's creation: a namesake made later is not them
            }
            token = jwt.encode(claims, self.jwt_secret, algorithm="HS256")
            return token, float(int(expires)), Principal(user.name, user.permissions, f"jwt:{jti}")
        token = "tds_" + secrets.token_urlsafe(32)
        cred = Credential(token_key(token), KIND_SESSION, user.name, now, expires)
        if self.mode == "memory":
            self._memory[cred.key] = cred
        else:
            await self.store.put_credential(cred)
        return token, expires, Principal(user.name, user.permissions, f"session:{cred.key}")

    async def logout(self, principal: Principal) -> None:
        """End the session that authenticated this request, everywhere, at once.

        BadRequest for an API token (revoked only by `tidings tokens revoke` or the admin
        API) and for a JWT the application issued (it ends when it expires).
        """
        session = principal.session
        if session is None:
            raise Unauthorized("not logged in")
        kind, _, ident = session.partition(":")
        if kind == "session":
            self._memory.pop(ident, None)
            if self.mode == "database":
                await self.store.delete_credential(ident)
        elif kind == "jwt":
            expires = principal.expires or time.time() + self.session_ttl
            await self.store.put_credential(
                Credential(f"jti:{ident}", KIND_REVOKED, principal.name, time.time(), expires)
            )
        elif kind == "token":
            # Logout ends a session; an API token is a standing credential that its
            # holder's processes share, so it stays valid and only an admin revokes it.
            raise BadRequest(
                "this request used an API token, not a session: logout leaves the token "
                f"working; revoke it with `tidings tokens revoke {ident[:12]}` or "
                f"DELETE /v1/admin/tokens/{ident}"
            )
        else:
            raise BadRequest(
                "a token issued by the application cannot be logged out here: let it expire"
            )
        self._cache.clear()

    async def ended(self, sessions: list[str], now: float) -> list[str]:
        """Those of `sessions` (of open streams) that were revoked or have expired.

        One store query for all of them: the sweep runs every second.
        """
        stored: dict[str, str] = {}  # credential key -> session
        gone = []
        for session in sessions:
            expires = self._expiries.get(session)
            if expires is not None and expires <= now:
                gone.append(session)
                continue
            kind, _, ident = session.partition(":")
            if kind == "session" and self.mode == "memory":
                cred = self._memory.get(ident)
                if cred is None or not cred.live(now):
                    gone.append(session)
            elif kind in ("session", "token"):
                stored[ident] = session
            elif kind == "jwt":
                stored[f"jti:{ident}"] = session
            # app tokens: only their expiry ends them (checked above)
        if stored:
            live = await self.store.live_credentials(list(stored), now)
            for key, session in stored.items():
                revoked_jwt = key.startswith("jti:")
                if (key in live) == revoked_jwt:  # a live session gone, or a jti revoked
                    gone.append(session)
        # Sessions of users removed (or removed and made again) since they logged in.
        owners = {self._owners[s] for s in sessions if s in self._owners and s not in gone}
        if owners:
            users = {name: await self.store.get_user(name) for name in {n for n, _ in owners}}
            dead = set()
            for name, created in owners:
                user = users[name]
                if user is None or user.created != created:
                    dead.add((name, created))
            gone.extend(s for s in sessions if self._owners.get(s) in dead and s not in gone)
        return gone

    def sweep_memory(self, now: float) -> None:
        """Forget expired in-memory sessions and cache entries."""
        for key in [k for k, c in self._memory.items() if not c.live(now)]:
            del self._memory[key]
        for token in [t for t, (until, _) in self._cache.items() if until <= now]:
            del self._cache[token]
        for session in [s for s, until in self._expiries.items() if until <= now - 60]:
            del self._expiries[session]
            self._owners.pop(session, None)


def _password_matches(stored: str, password: str, username: str) -> bool:
    """True when `password` matches the argon2 hash `stored` (run in a hashing thread)."""
    try:
        return _hasher.verify(stored, password)
    except argon2.exceptions.VerificationError:
        return False
    except argon2.exceptions.InvalidHashError:
        log.exception("user %r has a malformed password hash", username)
        return False


# JSON strings (whose brackets do not nest), and the bytes that open or close a level. An
# unterminated string runs to the end, and nothing backtracks: one linear pass.
def _check_nesting(token: str, max_depth: int) -> None:
    """401 when the JWT's header or claims nest arrays/objects deeper than `max_depth`.

    Checked before PyJWT parses them (the header is read before the signature is
    checked), with the depth rule every other input follows (tidings.server.depth).
    """
    for segment in token.split(".")[:2]:
        try:
            raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
            decode_limited(JSON_DECODER.decode, raw, max_depth, "the token's claims")
        except NestedTooDeep as exc:
            raise Unauthorized(f"token claims nested too deep: {exc.message}") from None
        except (ValueError, binascii.Error, msgspec.DecodeError):
            raise Unauthorized("invalid token: a segment is not base64url JSON") from None


def _check_dates(claims: dict[str, Any]) -> None:
    """401 unless `exp`, `nbf` and `iat`, where present, are NumericDates up to year 9999.

    PyJWT compares them as integers only; a string, a boolean or an absurd number must not
    become a session's expiry.
    """
    for name in ("exp", "nbf", "iat"):
        if name not in claims:
            continue
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Unauthorized(
                f"invalid token: the {name} claim must be a number of seconds since 1970,"
                f" not {type(value).__name__}"
            )
        if not 0 <= value <= MAX_NUMERIC_DATE:
            raise Unauthorized(
                f"invalid token: the {name} claim must be between 0 and {MAX_NUMERIC_DATE}"
                " (9999-12-31T23:59:59Z)"
            )


def _credentials_of(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
    """(token, came from the cookie) from the request headers."""
    cookie = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip(), False
            raise Unauthorized("use Authorization: Bearer <token>")
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                k, _, v = part.strip().partition("=")
                if k == COOKIE and v:
                    cookie = v
    return cookie, cookie is not None


def _jwt_secret(settings: Settings) -> bytes:
    if settings.jwt_key_file:
        secret = Path(settings.jwt_key_file).read_bytes().strip()
    else:
        secret = settings.jwt_secret.encode()
    if len(secret) < 32:
        raise ValueError(
            "--sessions jwt needs a secret of at least 32 bytes: set TIDINGS_JWT_SECRET or "
            "--jwt-key-file (e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return secret
