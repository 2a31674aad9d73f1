"""One settings object, from flags and TIDINGS_* environment variables."""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from tidings.server import constants as C
from tidings.server.depth import DEPTH_CEILING
from tidings.server.logs import LOG_FORMATS, LOG_LEVELS

__all__ = ["ENV_PREFIX", "OTHER_ENV", "Settings", "env_name", "known_env", "unknown_env"]

ENV_PREFIX = "TIDINGS_"

# TIDINGS_* variables that are not Settings fields, and who reads them. Together with
# one TIDINGS_<FIELD> per field of Settings they are every name tidings knows; any
# other TIDINGS_* variable is reported by `tidings serve` and `tidings worker`.
OTHER_ENV: dict[str, str] = {
    "TIDINGS_URL": "the server's base URL, for every client command and the worker",
    "TIDINGS_TOKEN": "an API or session token, for every client command and the worker",
    "TIDINGS_CONCURRENCY": "jobs a `tidings worker` runs at once",
    "TIDINGS_WORKER_NAME": "what the worker list calls a `tidings worker`",
    "TIDINGS_DOCTOR_STATE_FILE": "where `tidings doctor` keeps its state",
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the app factory needs.

    Args:
        host: address to bind.
        port: TCP port.
        store: store URL (`sqlite:///path`, `memory://`).
        max_messages: default retention by count, per channel.
        max_age: default retention by age in seconds, per channel.
        max_message_bytes: largest accepted message body; larger gets 413.
        long_poll_cap: the longest `wait=` honoured, in seconds.
        subscriber_buffer: bytes of unsent frames a stream may hold before it is cut.
        heartbeat: seconds between SSE heartbeat comments / WebSocket pings.
        sqlite_synchronous: SQLite `synchronous` pragma (FULL: fsync at every group commit).
        retry_backoff: seconds before a failed job's first retry; doubles per attempt.
        job_ttl: seconds a finished job (and its channel) is kept.
        handlers: `MODULE:OBJ` naming a `tidings.Worker` to run inside the server.
        allow_anonymous: serve anonymous clients on a non-loopback address (without this
            or `require_auth`, binding beyond loopback is refused); and on a loopback
            server, trust anonymous requests a reverse proxy forwarded (X-Forwarded-For,
            Forwarded, X-Real-IP), which are otherwise refused (policy.py).
        log_level: uvicorn / tidings log level.
        require_auth: anonymous requests get 401.
        sessions: where login sessions live: `database` (the store), `memory` (this
            process only), `jwt` (signed tokens; logout revokes the jti in the store).
        session_ttl: seconds a login session lasts.
        jwt_secret: HS256 secret of `sessions=jwt` tokens (TIDINGS_JWT_SECRET).
        jwt_key_file: a file holding that secret instead.
        app_jwt_algorithm: accept JWTs from the application's backend signed with this
            algorithm (HS256, RS256 or ES256); empty: accept none.
        app_jwt_key: their HS256 secret (TIDINGS_APP_JWT_KEY).
        app_jwt_key_file: their PEM public key (RS256/ES256) or secret file.
        app_jwt_issuer: required `iss` of application JWTs (empty: not checked).
        app_jwt_audience: required `aud` of application JWTs (empty: not checked).
        cors_origins: comma-separated origins allowed to call with credentials; also the
            origins allowed to make cookie-authenticated state-changing requests.
        allowed_hosts: comma-separated Host names (besides loopback ones) that anonymous
            requests to a loopback server may name — e.g. the name a local reverse proxy
            forwards; `*` for any. Guards against DNS rebinding.
        max_depth: deepest nesting of arrays/objects accepted in a decoded value (bodies,
            WebSocket frames, job payloads, results and progress, JWT claims); deeper: 400.
        max_header_bytes: largest request header block (431 above it).
        header_timeout: seconds a client may take to send a request's headers (408).
        body_timeout: seconds a client may leave between two pieces of its body (408).
        keep_alive_timeout: seconds an idle keep-alive connection is kept open.
        max_connections: connections served at once by this process; 0: derived from
            the file limit (RLIMIT_NOFILE, raised to its hard limit at start).
        max_connections_per_address: connections at once from one client address; 0: no cap.
        limit_loopback: apply the per-address limits (connections, logins) to loopback
            clients too. Off by default: a loopback client is usually a local reverse
            proxy or a benchmark speaking for many users; per-account and global limits
            still apply.
        login_rate_per_address: login attempts per minute from one client address (429);
            0: no limit.
        login_failures_per_account: failed logins per account in 5 minutes before its
            logins answer 429 until the window passes; 0: no limit.
        login_queue: password checks that may wait for a hashing thread (503 above).
        max_stream_channels: channels one multiplexed stream may name (400 above).
        access_log: log every request (uvicorn's access log, in the server's log format).
        workers: server processes sharing the port; more than one needs a shared store.
        ssl_certfile: TLS certificate chain (PEM); empty: plain HTTP.
        ssl_keyfile: TLS private key (PEM); empty: the key is in `ssl_certfile`.
        log_format: `text` (a timestamped line) or `json` (one object per line).
        static: a directory whose files are served under /static/ (an application's page,
            on the API's origin); empty: none.
        forwarded_allow_ips: comma-separated addresses or networks of trusted reverse
            proxies (`*`: any peer); a request from one of them is taken to come from the
            client and scheme its X-Forwarded-For / X-Forwarded-Proto name: the address
            the login limiter and the access log use, https for cookies and origin checks.
            The per-address connection cap counts the TCP peer when it connects, before
            any header is read: behind a proxy, that is the proxy. Empty: those headers
            are ignored.
        bridges: bridges to message buses, as URLs separated by white space (`--bridge`,
            repeatable; TIDINGS_BRIDGES): see tidings.server.bridges.
    """

    host: str = C.DEFAULT_HOST
    port: int = C.DEFAULT_PORT
    store: str = C.DEFAULT_STORE
    max_messages: int = C.DEFAULT_MAX_MESSAGES
    max_age: float = C.DEFAULT_MAX_AGE
    max_message_bytes: int = C.DEFAULT_MAX_MESSAGE_BYTES
    long_poll_cap: float = C.DEFAULT_LONG_POLL_CAP
    subscriber_buffer: int = C.DEFAULT_SUBSCRIBER_BUFFER
    heartbeat: float = C.DEFAULT_HEARTBEAT
    sqlite_synchronous: str = "FULL"
    retry_backoff: float = C.DEFAULT_RETRY_BACKOFF
    job_ttl: float = C.DEFAULT_JOB_TTL
    handlers: str = ""
    allow_anonymous: bool = False
    log_level: str = "info"
    require_auth: bool = False
    sessions: str = "database"
    session_ttl: float = C.DEFAULT_SESSION_TTL
    jwt_secret: str = ""
    jwt_key_file: str = ""
    app_jwt_algorithm: str = ""
    app_jwt_key: str = ""
    app_jwt_key_file: str = ""
    app_jwt_issuer: str = ""
    app_jwt_audience: str = ""
    cors_origins: str = ""
    allowed_hosts: str = ""
    max_depth: int = C.DEFAULT_MAX_DEPTH
    max_header_bytes: int = C.DEFAULT_MAX_HEADER_BYTES
    header_timeout: float = C.DEFAULT_HEADER_TIMEOUT
    body_timeout: float = C.DEFAULT_BODY_TIMEOUT
    keep_alive_timeout: float = C.DEFAULT_KEEP_ALIVE_TIMEOUT
    max_connections: int = C.DEFAULT_MAX_CONNECTIONS
    max_connections_per_address: int = C.DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    limit_loopback: bool = False
    login_rate_per_address: int = C.DEFAULT_LOGIN_RATE_PER_ADDRESS
    login_failures_per_account: int = C.DEFAULT_LOGIN_FAILURES_PER_ACCOUNT
    login_queue: int = C.DEFAULT_LOGIN_QUEUE
    max_stream_channels: int = C.DEFAULT_MAX_STREAM_CHANNELS
    access_log: bool = False
    workers: int = 1
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    log_format: str = "text"
    forwarded_allow_ips: str = ""
    static: str = ""
    bridges: str = ""

    def __post_init__(self) -> None:
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level {self.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format {self.log_format!r}: use text or json")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("ssl_keyfile needs ssl_certfile: pass the certificate too")
        _check_proxies(self.forwarded_allow_ips)
        if self.max_depth > DEPTH_CEILING:
            raise ValueError(
                f"max_depth may be at most {DEPTH_CEILING} (deeper values exhaust the "
                f"decoders' recursion), got {self.max_depth}"
            )
        for name in ("max_depth", "max_header_bytes", "max_stream_channels", "login_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "max_connections",
            "max_connections_per_address",
            "login_rate_per_address",
            "login_failures_per_account",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be 0 (no cap) or more, got {getattr(self, name)}")
        for name in ("header_timeout", "body_timeout", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a positive number of seconds")

    @property
    def hosts(self) -> tuple[str, ...]:
        """`allowed_hosts` as a tuple of lower-case names."""
        return tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    @property
    def origins(self) -> tuple[str, ...]:
        """`cors_origins` as a tuple."""
        return tuple(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then TIDINGS_<FIELD> variables, then explicit non-None overrides."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = env_name(f.name)
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            kind = type(getattr(cls(), f.name))
            try:
                values[f.name] = _parse_bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)

    @property
    def loopback(self) -> bool:
        """True when bound to a loopback address only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def env_name(field: str) -> str:
    """The environment variable of a Settings field (or worker option): TIDINGS_<FIELD>."""
    return f"{ENV_PREFIX}{field.upper()}"


def known_env() -> frozenset[str]:
    """Every TIDINGS_* variable some part of tidings reads."""
    return frozenset(env_name(f.name) for f in fields(Settings)) | OTHER_ENV.keys()


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning per TIDINGS_* variable nothing reads, naming the likely intended one.

    The names are compared without their common prefix, so the suggestion reflects the
    part that differs: PROT suggests PORT.
    """
    env = os.environ if environ is None else environ
    known = known_env()
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in known}
    warnings = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or name in known:
            continue
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), suffixes, n=1)
        hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
        warnings.append(f"unknown environment variable {name} is ignored{hint}")
    return warnings


def _check_proxies(value: str) -> None:
    """ValueError unless `value` is empty, `*`, or comma-separated addresses and networks
    (uvicorn would take anything else as a name that never matches, trusting no one)."""
    entries = [e.strip() for e in value.split(",") if e.strip()]
    if entries == ["*"]:
        return
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"forwarded_allow_ips: {entry!r} is not an address or network; name the "
                "proxies as 127.0.0.1,10.0.0.0/8,… or give * alone for every peer"
            ) from None


def _parse_bool(raw: str) -> bool:
    """`1/true/yes/on` or `0/false/no/off`, any case; ValueError otherwise."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean (use true or false)")
