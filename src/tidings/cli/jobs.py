"""`tidings jobs …`: submit jobs, follow them, list them and their queues."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from tidings.cli.common import DEFAULT_URL, TokenOption, UrlOption, err
from tidings.protocol.codecs import encode_json

__all__ = ["jobs_app"]

jobs_app = typer.Typer(
    name="jobs", help="Submit and follow jobs.", no_args_is_help=True, rich_markup_mode=None
)

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
    url: UrlOption = DEFAULT_URL,
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
    url: UrlOption = DEFAULT_URL,
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
    url: UrlOption = DEFAULT_URL,
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
    url: UrlOption = DEFAULT_URL,
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
    url: UrlOption = DEFAULT_URL,
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
    url: UrlOption = DEFAULT_URL,
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
def jobs_queues(url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
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
