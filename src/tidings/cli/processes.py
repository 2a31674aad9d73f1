"""`tidings serve` and `tidings worker`: the two long-running processes."""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.markup import escape

from tidings.cli.common import DEFAULT_URL, UrlOption, err
from tidings.server import constants as C
from tidings.server.settings import Settings

__all__ = ["serve", "worker"]


def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [env TIDINGS_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port [env TIDINGS_PORT].")] = None,
    store: Annotated[
        str | None,
        typer.Option(help="Store URL: sqlite:///path.db or memory:// [env TIDINGS_STORE]."),
    ] = None,
    max_messages: Annotated[
        int | None, typer.Option(help="Default retention by count per channel.")
    ] = None,
    max_age: Annotated[
        float | None, typer.Option(help="Default retention by age in seconds per channel.")
    ] = None,
    max_message_bytes: Annotated[
        int | None, typer.Option(help="Largest message body accepted (413 above).")
    ] = None,
    long_poll_cap: Annotated[float | None, typer.Option(help="Longest wait= honoured, s.")] = None,
    subscriber_buffer: Annotated[
        int | None, typer.Option(help="Unsent bytes a stream may hold before it is cut.")
    ] = None,
    heartbeat: Annotated[float | None, typer.Option(help="Seconds between SSE heartbeats.")] = None,
    handlers: Annotated[
        str | None,
        typer.Option(help="MODULE:OBJ of a tidings.Worker to run inside the server."),
    ] = None,
    retry_backoff: Annotated[
        float | None, typer.Option(help="Seconds before a failed job's first retry (doubles).")
    ] = None,
    job_ttl: Annotated[
        float | None, typer.Option(help="Seconds a finished job and its events are kept.")
    ] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (slower).")] = False,
    allow_anonymous: Annotated[
        bool,
        typer.Option(
            "--allow-anonymous",
            help="Serve anonymous clients on a non-loopback address [env TIDINGS_ALLOW_ANONYMOUS].",
        ),
    ] = False,
    require_auth: Annotated[
        bool,
        typer.Option(
            "--require-auth", help="Anonymous requests get 401 [env TIDINGS_REQUIRE_AUTH]."
        ),
    ] = False,
    sessions: Annotated[
        str | None,
        typer.Option(help="Where login sessions live: database, memory or jwt."),
    ] = None,
    session_ttl: Annotated[float | None, typer.Option(help="Seconds a login lasts.")] = None,
    jwt_key_file: Annotated[
        str | None,
        typer.Option(help="File with the HS256 secret of --sessions jwt [env TIDINGS_JWT_SECRET]."),
    ] = None,
    app_jwt_algorithm: Annotated[
        str | None,
        typer.Option(help="Accept your backend's JWTs signed with HS256, RS256 or ES256."),
    ] = None,
    app_jwt_key_file: Annotated[
        str | None,
        typer.Option(help="Their PEM public key (or HS256 secret) [env TIDINGS_APP_JWT_KEY]."),
    ] = None,
    app_jwt_issuer: Annotated[str | None, typer.Option(help="Their required iss.")] = None,
    app_jwt_audience: Annotated[str | None, typer.Option(help="Their required aud.")] = None,
    cors_origins: Annotated[
        str | None,
        typer.Option(help="Comma-separated browser origins allowed to call with credentials."),
    ] = None,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(help="Host names anonymous clients of a loopback server may use (proxy)."),
    ] = None,
    max_depth: Annotated[
        int | None, typer.Option(help="Deepest nesting of arrays/objects accepted (400 above).")
    ] = None,
    max_header_bytes: Annotated[
        int | None, typer.Option(help="Largest request header block in bytes (431 above).")
    ] = None,
    header_timeout: Annotated[
        float | None, typer.Option(help="Seconds a client may take to send its headers.")
    ] = None,
    body_timeout: Annotated[
        float | None, typer.Option(help="Seconds a client may pause while sending a body.")
    ] = None,
    keep_alive_timeout: Annotated[
        float | None, typer.Option(help="Seconds an idle keep-alive connection is kept.")
    ] = None,
    max_connections: Annotated[
        int | None, typer.Option(help="Connections at once (0: from the open-file limit).")
    ] = None,
    max_connections_per_address: Annotated[
        int | None, typer.Option(help="Connections at once from one client address (0: no cap).")
    ] = None,
    limit_loopback: Annotated[
        bool,
        typer.Option(
            "--limit-loopback",
            help="Apply per-address limits to loopback clients too [env TIDINGS_LIMIT_LOOPBACK].",
        ),
    ] = False,
    login_rate_per_address: Annotated[
        int | None, typer.Option(help="Login attempts per minute from one address (429).")
    ] = None,
    login_failures_per_account: Annotated[
        int | None, typer.Option(help="Failed logins per account in 5 minutes before 429.")
    ] = None,
    login_queue: Annotated[
        int | None, typer.Option(help="Password checks that may wait for a thread (503).")
    ] = None,
    max_stream_channels: Annotated[
        int | None, typer.Option(help="Channels one multiplexed stream may name (400 above).")
    ] = None,
    ssl_certfile: Annotated[str | None, typer.Option(help="TLS certificate (PEM).")] = None,
    ssl_keyfile: Annotated[str | None, typer.Option(help="TLS private key (PEM).")] = None,
    workers: Annotated[
        int,
        typer.Option(min=1, help="Server processes on this port (a shared store: redis://)."),
    ] = 1,
) -> None:
    """Serve the HTTP API (default: embedded SQLite on 127.0.0.1:8000)."""
    from tidings.server.app import create_app
    from tidings.server.runner import run, supervise

    try:
        settings = Settings.from_env(
            host=host,
            port=port,
            store=store,
            max_messages=max_messages,
            max_age=max_age,
            max_message_bytes=max_message_bytes,
            long_poll_cap=long_poll_cap,
            subscriber_buffer=subscriber_buffer,
            heartbeat=heartbeat,
            handlers=handlers,
            retry_backoff=retry_backoff,
            job_ttl=job_ttl,
            allow_anonymous=allow_anonymous or None,
            log_level=log_level,
            require_auth=require_auth or None,
            sessions=sessions,
            session_ttl=session_ttl,
            jwt_key_file=jwt_key_file,
            app_jwt_algorithm=app_jwt_algorithm,
            app_jwt_key_file=app_jwt_key_file,
            app_jwt_issuer=app_jwt_issuer,
            app_jwt_audience=app_jwt_audience,
            cors_origins=cors_origins,
            allowed_hosts=allowed_hosts,
            max_depth=max_depth,
            max_header_bytes=max_header_bytes,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            keep_alive_timeout=keep_alive_timeout,
            max_connections=max_connections,
            max_connections_per_address=max_connections_per_address,
            limit_loopback=limit_loopback or None,
            login_rate_per_address=login_rate_per_address,
            login_failures_per_account=login_failures_per_account,
            login_queue=login_queue,
            max_stream_channels=max_stream_channels,
        )
        if not settings.loopback and not (settings.allow_anonymous or settings.require_auth):
            err.print(
                f"[red]tidings serve:[/red] refusing to serve anonymous clients on "
                f"{settings.host}. Configure auth: add users with `tidings users add NAME "
                "--store URL --password-stdin --publish 'news.*' ...` and pass --require-auth "
                "(TIDINGS_REQUIRE_AUTH=true); or pass --allow-anonymous "
                "(TIDINGS_ALLOW_ANONYMOUS=true) if the network is trusted."
            )
            raise typer.Exit(2)
        if workers > 1 and not settings.store.startswith(("redis://", "rediss://")):
            err.print(
                f"[red]tidings serve:[/red] --workers {workers} needs a store the processes "
                f"can share (redis://host:port/0); {settings.store.split(':')[0]} belongs to "
                "one process: SQLite has one writer and each process's hub would only see its "
                "own publishes. Run one process, or use --store redis://…"
            )
            raise typer.Exit(2)
        # With several processes each child builds its own app; this one checks the settings.
        tidings_app = create_app(settings)
    except (ValueError, TypeError, OSError) as exc:
        # The message may quote a command line (a held SQLite lock): print it as text.
        err.print(f"[red]tidings serve:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    options = {"access_log": access_log, "ssl_certfile": ssl_certfile, "ssl_keyfile": ssl_keyfile}
    if workers > 1:
        raise typer.Exit(supervise(workers, settings, options))
    if not run(settings, options, app=tidings_app):
        raise typer.Exit(1)


def worker(
    target: Annotated[str, typer.Argument(help="MODULE:OBJ naming a tidings.Worker.")],
    url: UrlOption = DEFAULT_URL,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Jobs run at once (overrides the Worker's).")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="TIDINGS_TOKEN", help="API token [env TIDINGS_TOKEN].")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Run a worker: lease jobs from the server and run their handlers; SIGTERM drains."""
    from tidings.loader import load_object
    from tidings.sdk.worker import Worker

    try:
        obj = load_object(target, "worker")
    except ValueError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    if not isinstance(obj, Worker):
        err.print(f"[red]{escape(target)} is a {type(obj).__name__}, not a tidings.Worker[/red]")
        raise typer.Exit(2)
    if concurrency is not None:
        obj.concurrency = concurrency
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # The worker's own log lines are the point; httpx's per-request lines are noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # Sync handlers run in threads that hand results back to the loop: the default 5 ms
    # GIL hand-over would add up to that much to every job (docs/decisions/0007).
    sys.setswitchinterval(C.SWITCH_INTERVAL)
    try:
        obj.run(url, token=token)
    except ValueError as exc:
        err.print(f"[red]tidings worker:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
