"""The `tidings` command: serve, publish, subscribe, worker, jobs."""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from tidings.cli.admin import tokens_app, users_app
from tidings.cli.doctor import doctor
from tidings.protocol.codecs import encode_json
from tidings.protocol.messages import Reset
from tidings.server import constants as C
from tidings.server.settings import Settings

__all__ = ["main"]

app = typer.Typer(
    name="tidings",
    help="One server for every way a backend answers its clients.",
    no_args_is_help=True,
    add_completion=False,
    # Help is plain text: "[env TIDINGS_PORT]" and "tidings[redis]" must not read as markup.
    rich_markup_mode=None,
)
err = Console(stderr=True)


def _print_version(value: bool) -> None:
    if value:
        from tidings._version import __version__

        print(f"tidings {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """One server for every way a backend answers its clients."""


TokenOption = Annotated[
    str | None,
    typer.Option(envvar="TIDINGS_TOKEN", help="API or session token [env TIDINGS_TOKEN]."),
]
UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="TIDINGS_URL", help="Base URL of the tidings server."),
]


@app.command()
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


@app.command()
def publish(
    channel: Annotated[str, typer.Argument(help="Channel name.")],
    data: Annotated[str, typer.Argument(help="Message text; - reads standard input.")],
    event: Annotated[str | None, typer.Option(help="Event name.")] = None,
    json_data: Annotated[
        bool, typer.Option("--json", help="DATA is JSON: publish the value, not the text.")
    ] = False,
    idempotency_key: Annotated[str | None, typer.Option(help="Dedup key.")] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
) -> None:
    """Publish one message and print its id."""
    from tidings.sdk.client import Client, ClientError

    text = sys.stdin.read() if data == "-" else data
    value: Any = text
    if json_data:
        try:
            import json

            value = json.loads(text)
        except ValueError as exc:
            err.print(f"[red]--json given but DATA is not JSON:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
    try:
        with Client(url, token=token) as client:
            ack = client.publish(channel, value, event=event, idempotency_key=idempotency_key)
    except ClientError as exc:
        err.print(f"[red]publish failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    typer.echo(ack.id)


@app.command()
def subscribe(
    channel: Annotated[str, typer.Argument(help="Channel name.")],
    via: Annotated[str, typer.Option(help="sse, ws, longpoll or poll.")] = "sse",
    after: Annotated[
        str | None, typer.Option(help="Resume after this id (0: from the oldest kept).")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
) -> None:
    """Print a channel's messages as JSON lines, resuming by itself; resets go to stderr."""
    from tidings.sdk.client import Client, ClientError

    if via not in ("sse", "ws", "longpoll", "poll"):
        err.print(f"[red]--via {escape(repr(via))}:[/red] use sse, ws, longpoll or poll")
        raise typer.Exit(2)
    seen = 0
    try:
        with Client(url, token=token) as client:
            for item in client.subscribe(channel, via=via, after=after):  # type: ignore[arg-type]
                if isinstance(item, Reset):
                    err.print(
                        f"[yellow]reset:[/yellow] {escape(item.reason)} (oldest kept: {item.first})"
                    )
                    continue
                sys.stdout.write(encode_json(item.to_wire()).decode() + "\n")
                sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    return
    except ClientError as exc:
        err.print(f"[red]subscribe failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        return


# ---------------------------------------------------------------------------------------
# Workers and jobs


@app.command()
def worker(
    target: Annotated[str, typer.Argument(help="MODULE:OBJ naming a tidings.Worker.")],
    url: UrlOption = "http://127.0.0.1:8000",
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


jobs_app = typer.Typer(
    name="jobs", help="Submit and follow jobs.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(jobs_app)
app.add_typer(users_app)
app.add_typer(tokens_app)
app.command()(doctor)

_TIME_FIELDS = (
    "created_at",
    "updated_at",
    "run_at",
    "started_at",
    "finished_at",
    "lease_expires_at",
)


def _job_json(info: Any) -> str:
    """A JobInfo as the server's JSON (RFC 3339 times), for printing."""
    import msgspec

    from tidings.protocol.codecs import format_time

    obj = msgspec.structs.asdict(info)
    for name in _TIME_FIELDS:
        if obj.get(name) is not None:
            obj[name] = format_time(obj[name])
    return encode_json(obj).decode()


def _json_arg(text: str | None, what: str) -> Any:
    import json

    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as exc:
        err.print(f"[red]{what} is not JSON:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


def _finish(info: Any) -> None:
    """Print a terminal job's result (stdout) or error (stderr); exit 0 only on success."""
    if info.status == "succeeded":
        typer.echo(encode_json(info.result).decode())
        return
    detail = "" if info.error is None else " " + encode_json(info.error).decode()
    err.print(f"[red]job {info.id} {info.status}[/red] (attempt {info.attempt}){escape(detail)}")
    raise typer.Exit(1)


@jobs_app.command("submit")
def jobs_submit(
    type: Annotated[str, typer.Argument(help="Job type.")],
    payload: Annotated[
        str | None, typer.Argument(help="Payload as JSON; - reads standard input.")
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(help="Wait up to S seconds for the job to end and print its result."),
    ] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Attempts before it fails.")] = None,
    timeout: Annotated[float | None, typer.Option(help="Seconds one attempt may run.")] = None,
    delay: Annotated[float | None, typer.Option(help="Seconds before it may run.")] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Dedup key.")] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
) -> None:
    """Submit a job and print its id; with --wait, print its result once it ends.

    With --wait, exits 1 if the job failed or was cancelled; if it is still running when
    the wait is over, prints its id (and says so on stderr) and exits 0.
    """
    from tidings.sdk.client import Client, ClientError

    value = _json_arg(payload, "PAYLOAD")
    try:
        with Client(url, token=token) as client:
            handle = client.submit(
                type,
                value,
                max_attempts=max_attempts,
                timeout=timeout,
                delay=delay,
                priority=priority,
                idempotency_key=idempotency_key,
                wait=wait,
            )
    except ClientError as exc:
        err.print(f"[red]submit failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    if wait is not None and handle.job.terminal:
        _finish(handle.job)
        return
    if wait is not None:
        err.print(f"[yellow]job {handle.id} still {handle.job.status} after {wait:g}s[/yellow]")
    typer.echo(handle.id)


@jobs_app.command("get")
def jobs_get(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    url: UrlOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
) -> None:
    """Print a job as JSON."""
    from tidings.sdk.client import Client, ClientError

    try:
        with Client(url, token=token) as client:
            info = client.get_job(job_id)
    except ClientError as exc:
        err.print(f"[red]get failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    typer.echo(_job_json(info))


@jobs_app.command("wait")
def jobs_wait(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    url: UrlOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
) -> None:
    """Show a job's progress until it ends, then print its result.

    Exits 0 if it succeeded, 1 if it failed or was cancelled.
    """
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    from tidings.sdk.client import Client, ClientError

    try:
        with Client(url, token=token) as client:
            handle = client.job(job_id)
            if not handle.job.terminal:
                with Progress(
                    TextColumn("[bold]{task.fields[status]:<9}"),
                    BarColumn(),
                    TaskProgressColumn(),
                    TextColumn("{task.description}"),
                    console=err,
                    transient=False,
                ) as bar:
                    task = bar.add_task("", total=100.0, completed=0, status=handle.job.status)
                    for _event, info in handle.events():
                        bar.update(
                            task,
                            completed=100.0 if info.status == "succeeded" else info.progress or 0,
                            description=info.message or "",
                            status=info.status,
                        )
    except ClientError as exc:
        err.print(f"[red]wait failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    _finish(handle.job)


@jobs_app.command("cancel")
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    url: UrlOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
) -> None:
    """Cancel a job: a queued one at once, a running one at its next heartbeat."""
    from tidings.sdk.client import Client, ClientError

    try:
        with Client(url, token=token) as client:
            info = client.cancel_job(job_id)
    except ClientError as exc:
        err.print(f"[red]cancel failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    typer.echo("cancel requested" if info.status == "running" else info.status)


@jobs_app.command("retry")
def jobs_retry(
    job_id: Annotated[str, typer.Argument(metavar="ID", help="Job id.")],
    url: UrlOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
) -> None:
    """Requeue a failed or cancelled job."""
    from tidings.sdk.client import Client, ClientError

    try:
        with Client(url, token=token) as client:
            info = client.retry_job(job_id)
    except ClientError as exc:
        err.print(f"[red]retry failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    typer.echo(info.status)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None, typer.Option(help="queued, running, succeeded, failed or cancelled.")
    ] = None,
    type: Annotated[str | None, typer.Option(help="Only jobs of this type.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many.")] = None,
    url: UrlOption = "http://127.0.0.1:8000",
    token: TokenOption = None,
) -> None:
    """List jobs as a table."""
    from datetime import datetime

    from rich.table import Table

    from tidings.sdk.client import Client, ClientError

    try:
        with Client(url, token=token) as client:
            jobs = client.list_jobs(status=status, type=type, limit=limit)
    except ClientError as exc:
        err.print(f"[red]list failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    table = Table("type", "status", "progress", "attempt", "created", "message")
    table.add_column("id", no_wrap=True)  # whole, to be copied into `jobs get|wait|cancel`
    for job in jobs:
        created = (
            datetime.fromtimestamp(job.created_at).strftime("%m-%d %H:%M:%S")
            if job.created_at
            else ""
        )
        table.add_row(
            job.type,
            job.status,
            "" if job.progress is None else f"{job.progress:g}%",
            f"{job.attempt}/{job.max_attempts}",
            created,
            job.message or "",
            job.id,
        )
    Console().print(table)


@jobs_app.command("queues")
def jobs_queues(url: UrlOption = "http://127.0.0.1:8000", token: TokenOption = None) -> None:
    """Job counts per type and status."""
    from rich.table import Table

    from tidings.protocol.jobs import JOB_STATUSES
    from tidings.sdk.client import Client, ClientError

    try:
        with Client(url, token=token) as client:
            queues = client.queues()
    except ClientError as exc:
        err.print(f"[red]queues failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    table = Table("type", *JOB_STATUSES)
    for name, counts in sorted(queues.items()):
        table.add_row(name, *(str(counts.get(s, 0)) for s in JOB_STATUSES))
    Console().print(table)


def main() -> None:
    """Console entry point."""
    app()
