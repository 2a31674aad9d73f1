"""`tidings serve` and `tidings worker`: the two long-running processes.

Every `serve` option is a field of `Settings` and has its TIDINGS_<FIELD> twin, read by
`Settings.from_env` (settings.py knows every name); an option given on the command line
wins over its variable. Each option's help ends with its default and its variable:
`[default: 8000] [env TIDINGS_PORT]`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
from typing import Annotated, Any

import typer

from tidings.cli.common import DEFAULT_URL, fail
from tidings.server import constants as C
from tidings.server.settings import Settings, env_name, unknown_env

__all__ = ["serve", "worker"]

log = logging.getLogger("tidings.server")

_DEFAULTS = Settings()


def _shown(value: Any) -> str:
    """A default as help shows it: on/off, none for an empty string, 30 rather than 30.0."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value == "":
        return "none"
    return str(value)


def _option(field: str, text: str, *decls: str, default: str | None = None, **kw: Any) -> Any:
    """A `serve` option for Settings field `field`: its help ends with its default (the
    field's, or `default` when that says it better) and its environment variable."""
    shown = default if default is not None else _shown(getattr(_DEFAULTS, field))
    return typer.Option(
        *decls, help=f"{text} [default: {shown}] [env {env_name(field)}]", show_default=False, **kw
    )


def _flag(field: str, text: str) -> Any:
    """An on/off `serve` option: --FIELD / --no-FIELD, unset when neither is given."""
    name = field.replace("_", "-")
    return _option(field, text, f"--{name}/--no-{name}")


def serve(
    host: Annotated[str | None, _option("host", "Address to bind.")] = None,
    port: Annotated[int | None, _option("port", "TCP port.")] = None,
    store: Annotated[
        str | None,
        _option(
            "store",
            "Store URL: sqlite:///relative.db, sqlite:////absolute/path.db, memory:// or "
            "redis://host:port/0.",
        ),
    ] = None,
    max_messages: Annotated[
        int | None, _option("max_messages", "Default retention by count per channel.")
    ] = None,
    max_age: Annotated[
        float | None, _option("max_age", "Default retention by age per channel, seconds.")
    ] = None,
    max_message_bytes: Annotated[
        int | None, _option("max_message_bytes", "Largest message body accepted (413 above).")
    ] = None,
    long_poll_cap: Annotated[
        float | None, _option("long_poll_cap", "Longest wait= honoured, seconds.")
    ] = None,
    subscriber_buffer: Annotated[
        int | None,
        _option("subscriber_buffer", "Unsent bytes a stream may hold before it is cut."),
    ] = None,
    heartbeat: Annotated[
        float | None,
        _option("heartbeat", "Seconds between SSE heartbeats and WebSocket pings."),
    ] = None,
    handlers: Annotated[
        str | None,
        _option("handlers", "MODULE:OBJ of a tidings.Worker to run inside the server."),
    ] = None,
    retry_backoff: Annotated[
        float | None,
        _option("retry_backoff", "Seconds before a failed job's first retry (doubles)."),
    ] = None,
    job_ttl: Annotated[
        float | None, _option("job_ttl", "Seconds a finished job and its events are kept.")
    ] = None,
    log_level: Annotated[
        str | None, _option("log_level", "trace, debug, info, warning, error or critical.")
    ] = None,
    log_format: Annotated[
        str | None,
        _option("log_format", "text (timestamped lines) or json (one object per line)."),
    ] = None,
    access_log: Annotated[bool | None, _flag("access_log", "Log every request (slower).")] = None,
    allow_anonymous: Annotated[
        bool | None,
        _flag(
            "allow_anonymous",
            "Serve anonymous clients on a non-loopback address; on a loopback one, trust "
            "anonymous requests a reverse proxy forwarded.",
        ),
    ] = None,
    require_auth: Annotated[
        bool | None, _flag("require_auth", "Anonymous requests get 401.")
    ] = None,
    sessions: Annotated[
        str | None, _option("sessions", "Where login sessions live: database, memory or jwt.")
    ] = None,
    session_ttl: Annotated[float | None, _option("session_ttl", "Seconds a login lasts.")] = None,
    jwt_key_file: Annotated[
        str | None,
        _option(
            "jwt_key_file",
            "File with the HS256 secret of --sessions jwt (or the secret itself in "
            "TIDINGS_JWT_SECRET).",
        ),
    ] = None,
    app_jwt_algorithm: Annotated[
        str | None,
        _option(
            "app_jwt_algorithm",
            "Accept your backend's JWTs signed with HS256, RS256 or ES256.",
            default="none (no application JWTs)",
        ),
    ] = None,
    app_jwt_key_file: Annotated[
        str | None,
        _option(
            "app_jwt_key_file",
            "Their PEM public key or HS256 secret file (or the key itself in TIDINGS_APP_JWT_KEY).",
        ),
    ] = None,
    app_jwt_issuer: Annotated[
        str | None,
        _option("app_jwt_issuer", "Their required iss.", default="none (not checked)"),
    ] = None,
    app_jwt_audience: Annotated[
        str | None,
        _option("app_jwt_audience", "Their required aud.", default="none (not checked)"),
    ] = None,
    cors_origins: Annotated[
        str | None,
        _option(
            "cors_origins", "Comma-separated browser origins allowed to call with credentials."
        ),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        _option(
            "allowed_hosts",
            "Host names anonymous clients of a loopback server may use (a proxy's).",
            default="none (loopback names only)",
        ),
    ] = None,
    forwarded_allow_ips: Annotated[
        str | None,
        _option(
            "forwarded_allow_ips",
            "Addresses of trusted reverse proxies (comma-separated, CIDR or *): their "
            "X-Forwarded-For/-Proto give the client's address (for the login limiter and "
            "the access log; the per-address connection cap counts the proxy) and scheme.",
            default="none (the headers are ignored)",
        ),
    ] = None,
    static: Annotated[
        str | None,
        _option(
            "static",
            "A directory served under /static/ on the API's origin (your page's files).",
            default="none",
        ),
    ] = None,
    max_depth: Annotated[
        int | None,
        _option("max_depth", "Deepest nesting of arrays/objects accepted (400 above)."),
    ] = None,
    max_header_bytes: Annotated[
        int | None,
        _option("max_header_bytes", "Largest request header block in bytes (431 above)."),
    ] = None,
    header_timeout: Annotated[
        float | None,
        _option("header_timeout", "Seconds a client may take to send its headers."),
    ] = None,
    body_timeout: Annotated[
        float | None,
        _option("body_timeout", "Seconds a client may pause while sending a body."),
    ] = None,
    keep_alive_timeout: Annotated[
        float | None,
        _option("keep_alive_timeout", "Seconds an idle keep-alive connection is kept."),
    ] = None,
    max_connections: Annotated[
        int | None,
        _option(
            "max_connections",
            "Connections at once (0: from the open-file limit).",
            default="0 (from the open-file limit)",
        ),
    ] = None,
    max_connections_per_address: Annotated[
        int | None,
        _option("max_connections_per_address", "Connections at once from one address (0: no cap)."),
    ] = None,
    limit_loopback: Annotated[
        bool | None,
        _flag("limit_loopback", "Apply per-address limits to loopback clients too."),
    ] = None,
    login_rate_per_address: Annotated[
        int | None,
        _option("login_rate_per_address", "Login attempts per minute from one address (429)."),
    ] = None,
    login_failures_per_account: Annotated[
        int | None,
        _option("login_failures_per_account", "Failed logins per account in 5 minutes before 429."),
    ] = None,
    login_queue: Annotated[
        int | None,
        _option("login_queue", "Password checks that may wait for a thread (503 above)."),
    ] = None,
    max_stream_channels: Annotated[
        int | None,
        _option("max_stream_channels", "Channels one multiplexed stream may name (400 above)."),
    ] = None,
    ssl_certfile: Annotated[
        str | None,
        _option("ssl_certfile", "TLS certificate chain (PEM).", default="none (plain HTTP)"),
    ] = None,
    ssl_keyfile: Annotated[
        str | None,
        _option(
            "ssl_keyfile", "TLS private key (PEM).", default="none (the key is in the certfile)"
        ),
    ] = None,
    workers: Annotated[
        int | None,
        _option(
            "workers", "Server processes on this port (needs a shared store: redis://).", min=1
        ),
    ] = None,
    bridges: Annotated[
        list[str] | None,
        _option(
            "bridges",
            "A bridge from a message bus, by URL (repeatable), e.g. amqp://guest:guest@"
            "127.0.0.1:5672/?queue=orders&channel=orders.{routing_key}, nats://127.0.0.1:4222/"
            "?stream=ORDERS&channel={subject} or postgresql://app@127.0.0.1/app?table="
            "tidings_outbox; the variable takes URLs separated by spaces.",
            "--bridge",
            default="none",
            metavar="URL",
        ),
    ] = None,
) -> None:
    """Serve the HTTP API (default: embedded SQLite on 127.0.0.1:8000).

    Every option has a TIDINGS_* environment variable (named in its help); an option on
    the command line wins over its variable. An unknown TIDINGS_* variable is reported.

    \b
    Examples:
      tidings serve
      tidings serve --store sqlite:////var/lib/tidings/tidings.db --log-format json
      TIDINGS_PORT=9000 TIDINGS_ACCESS_LOG=true tidings serve
      tidings serve --host 0.0.0.0 --require-auth --store redis://127.0.0.1:6379/0 --workers 4
      tidings serve --bridge 'postgresql://app@127.0.0.1/app?table=tidings_outbox'
    """
    # The parameters are named after Settings' fields: each given one overrides its variable.
    overrides: dict[str, Any] = dict(locals())
    # Several --bridge options are one setting, as TIDINGS_BRIDGES holds them.
    overrides["bridges"] = " ".join(bridges) if bridges else None
    from tidings.server.app import create_app
    from tidings.server.logs import configure_logging
    from tidings.server.runner import PortUnavailable, check_tls, listen, run, supervise

    try:
        settings = Settings.from_env(**overrides)
    except (ValueError, TypeError) as exc:
        _warn_unknown(configure=True)
        fail("serve", str(exc), 2)
    configure_logging(settings.log_level, settings.log_format)
    _warn_unknown()
    if not settings.loopback and not (settings.allow_anonymous or settings.require_auth):
        fail(
            "serve",
            f"refusing to serve anonymous clients on {settings.host}. Configure auth: add "
            "users with `tidings users add NAME --store URL --password-stdin --publish "
            "'news.*' ...` and pass --require-auth (TIDINGS_REQUIRE_AUTH=true); or pass "
            "--allow-anonymous (TIDINGS_ALLOW_ANONYMOUS=true) if the network is trusted.",
            2,
        )
    if not settings.loopback and _trusts_any_peer(settings.forwarded_allow_ips):
        log.warning(
            "--forwarded-allow-ips %s on %s: every client's X-Forwarded-For is believed, so "
            "any client can choose the address the login limiter and the access log see; "
            "name your proxies' addresses instead",
            settings.forwarded_allow_ips,
            settings.host,
        )
    if settings.workers > 1 and not settings.store.startswith(("redis://", "rediss://")):
        fail(
            "serve",
            f"--workers {settings.workers} needs a store the processes can share "
            f"(redis://host:port/0); {settings.store.split(':')[0]} belongs to one process: "
            "SQLite has one writer and each process's hub would only see its own publishes. "
            "Run one process, or use --store redis://…",
            2,
        )
    try:
        check_tls(settings)
        # With several processes each child builds its own app; this one checks the
        # settings (and locks a SQLite file) before the port is bound.
        tidings_app = create_app(settings)
        socks = listen(settings)
    except PortUnavailable as exc:
        fail("serve", str(exc), 1)
    except (ValueError, TypeError, OSError) as exc:
        fail("serve", str(exc), 2)
    if settings.workers > 1:
        raise typer.Exit(supervise(settings, socks))
    if not run(settings, socks, app=tidings_app):
        raise typer.Exit(1)


def _trusts_any_peer(listed: str) -> bool:
    """True when --forwarded-allow-ips takes every peer for a proxy: `*`, or a network
    holding every address (0.0.0.0/0, ::/0)."""
    names = [name.strip() for name in listed.split(",") if name.strip()]
    if names == ["*"]:
        return True
    for name in names:
        try:
            if ipaddress.ip_network(name, strict=False).prefixlen == 0:
                return True
        except ValueError:
            continue
    return False


def _warn_unknown(*, configure: bool = False) -> None:
    """Log one warning per TIDINGS_* variable nothing reads (with the name it may mean)."""
    warnings = unknown_env(os.environ)
    if warnings and configure:
        from tidings.server.logs import configure_logging

        configure_logging("info", "text")
    for warning in warnings:
        logging.getLogger("tidings.settings").warning("%s", warning)


def worker(
    target: Annotated[str, typer.Argument(help="MODULE:OBJ naming a tidings.Worker.")],
    url: Annotated[
        str,
        typer.Option(
            "--url",
            envvar=env_name("url"),
            show_default=False,
            show_envvar=False,
            help=f"Base URL of the tidings server. [default: {DEFAULT_URL}] "
            f"[env {env_name('url')}]",
        ),
    ] = DEFAULT_URL,
    concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            envvar=env_name("concurrency"),
            show_default=False,
            show_envvar=False,
            help="Jobs run at once, overriding the Worker's. [default: the Worker's own: "
            "Worker(concurrency=N) if set, else 64 when every handler is async def, 32 "
            f"when any is a plain function (run in a thread)] [env {env_name('concurrency')}]",
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            envvar=env_name("worker_name"),
            show_default=False,
            show_envvar=False,
            help="What the worker list (tidings workers) calls this worker, overriding "
            "the Worker's. [default: the Worker's own, host:pid unless set] "
            f"[env {env_name('worker_name')}]",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar=env_name("token"),
            show_default=False,
            show_envvar=False,
            help="API token of a user allowed to work (--work PATTERN). [default: none, "
            f"anonymous] [env {env_name('token')}]",
        ),
    ] = None,
    log_level: Annotated[
        str,
        typer.Option(
            envvar=env_name("log_level"),
            show_default=False,
            show_envvar=False,
            help="trace, debug, info, warning, error or critical. "
            f"[default: {_DEFAULTS.log_level}] [env {env_name('log_level')}]",
        ),
    ] = _DEFAULTS.log_level,
    log_format: Annotated[
        str,
        typer.Option(
            envvar=env_name("log_format"),
            show_default=False,
            show_envvar=False,
            help="text (timestamped lines) or json (one object per line). "
            f"[default: {_DEFAULTS.log_format}] [env {env_name('log_format')}]",
        ),
    ] = _DEFAULTS.log_format,
) -> None:
    """Run a worker: lease jobs from the server and run their handlers; SIGTERM drains.

    \b
    Examples:
      tidings worker myapp.jobs:worker
      tidings worker myapp.jobs:worker --url https://push.example.com --token tdt_...
      tidings worker myapp.jobs:worker --name "encoder on gpu-3"
      TIDINGS_CONCURRENCY=16 TIDINGS_LOG_FORMAT=json tidings worker myapp.jobs:worker
    """
    from tidings.loader import load_object
    from tidings.sdk.worker import Worker, checked_name
    from tidings.server.logs import configure_logging

    try:
        configure_logging(log_level, log_format)
    except ValueError as exc:
        fail("worker", f"{exc} (--log-level / --log-format)", 2)
    _warn_unknown()
    try:
        obj = load_object(target, "target")
    except ValueError as exc:
        fail("worker", str(exc), 2)
    if not isinstance(obj, Worker):
        fail("worker", f"{target} is a {type(obj).__name__}, not a tidings.Worker", 2)
    if concurrency is not None:
        obj.concurrency = concurrency
    if name is not None:
        try:
            obj.name = checked_name(name)
        except ValueError as exc:
            fail("worker", f"--{exc}", 2)
    # The worker's own log lines are the point; httpx's per-request lines are noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Sync handlers run in threads that hand results back to the loop: a short GIL
    # switch interval lets the loop take them at once (docs/decisions/0007).
    sys.setswitchinterval(C.SWITCH_INTERVAL)
    try:
        obj.run(url, token=token)
    except ValueError as exc:
        fail("worker", str(exc), 2)
