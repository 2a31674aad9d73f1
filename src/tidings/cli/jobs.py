"""`tidings jobs …`: submit jobs, follow them, list them, their queues and dead letters."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.text import Text

from tidings.cli.common import (
    DEFAULT_URL,
    JsonOption,
    TokenOption,
    UrlOption,
    connect,
    err,
    fail,
    print_json,
    print_table,
    table_time,
    warn,
)
from tidings.protocol.codecs import encode_json
from tidings.protocol.jobs import JOB_TIME_FIELDS

__all__ = ["jobs_app"]

jobs_app = typer.Typer(
    name="jobs", help="Submit and follow jobs.", no_args_is_help=True, rich_markup_mode=None
)

# Characters of an error's message a table shows (its first line); --json has it whole.
_ERROR_CELL = 100

IdArg = Annotated[str, typer.Argument(metavar="ID", help="Job id.")]
TracebackOption = Annotated[
    bool,
    typer.Option(
        "--traceback",
        help="Print a failed job's traceback on stderr. Default: only when stdout is a terminal.",
    ),
]


def _job_obj(info: Any) -> dict[str, Any]:
    """A JobInfo as the server's JSON object (RFC 3339 times)."""
    import msgspec

    from tidings.protocol.codecs import format_time

    obj = msgspec.structs.asdict(info)
    for name in JOB_TIME_FIELDS:
        if obj.get(name) is not None:
            obj[name] = format_time(obj[name])
    return obj


def _error_cell(error: Any) -> str:
    """A job's error for a table: `Type: first line of the message`, kept short."""
    if error is None:
        return ""
    if isinstance(error, dict):
        kind = str(error.get("type") or "error")
        lines = str(error.get("message") or "").strip().splitlines()
        text = f"{kind}: {lines[0]}" if lines else kind
    else:
        text = encode_json(error).decode()
    return text if len(text) <= _ERROR_CELL else text[: _ERROR_CELL - 1] + "…"


def _traceback_of(info: Any) -> str | None:
    error = info.error
    if isinstance(error, dict) and isinstance(error.get("traceback"), str):
        return str(error["traceback"])
    return None


def _show_traceback(info: Any, forced: bool, *, on_terminal: bool = True) -> None:
    """A failed job's traceback on stderr, headed by which attempt raised it, when the
    job has one and it was asked for (or, with `on_terminal`, stdout is a terminal, where
    a person reads)."""
    tb = _traceback_of(info)
    if tb is None or not (forced or (on_terminal and sys.stdout.isatty())):
        return
    attempt = info.error.get("attempt", info.attempt)
    head = f"job {info.id} ({info.type}) {info.status}: attempt {attempt} raised\n"
    err.print(Text.assemble((head, "bold"), tb.rstrip("\n")))


def _json_arg(command: str, text: str | None, what: str) -> Any:
    import msgspec

    if text is None:
        return None
    if text == "-":
        text = sys.stdin.read()
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        fail(command, f"{what} is not JSON ({exc}); quote text as a JSON string: '\"text\"'", 2)


def _finish(command: str, info: Any) -> None:
    """Print a terminal job's result (stdout) or error (stderr); exit 0 only on success."""
    if info.status == "succeeded":
        typer.echo(encode_json(info.result).decode())
        return
    _show_traceback(info, False)
    detail = _error_cell(info.error)
    fail(
        command,
        f"job {info.id} {info.status} (attempt {info.attempt}/{info.max_attempts})"
        + (f": {detail}" if detail else ""),
    )


@jobs_app.command(
    "submit",
    epilog="""\b
Examples:
  tidings jobs submit transcode '{"video": "v1.mp4"}'
  tidings jobs submit transcode '{"video": "v1.mp4"}' --wait 60
  tidings jobs submit report - --priority 5 < payload.json
  tidings jobs submit reindex '{"shop": 42}' --unique-key shop-42
  tidings jobs submit export '{"tenant": 42}' --group tenant-42
  tidings jobs submit report --after 01J9Z3 --after 01J9Z4""",
)
def jobs_submit(
    type: Annotated[str, typer.Argument(help="Job type.")],
    payload: Annotated[
        str | None,
        typer.Argument(help="Payload as JSON; - reads standard input. Default: null."),
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            help="Wait up to S seconds for the job to end and print its result. "
            "Default: do not wait."
        ),
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(help="Attempts before it fails. Default: the server's (3).")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(help="Seconds one attempt may run. Default: the server's."),
    ] = None,
    delay: Annotated[
        float | None, typer.Option(help="Seconds before it may run. Default: none.")
    ] = None,
    priority: Annotated[
        int | None, typer.Option(help="Higher runs first. Default: the server's (0).")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Dedup key: submitting again returns the same job. Default: none."),
    ] = None,
    unique_key: Annotated[
        str | None,
        typer.Option(
            help="While a queued or running job of this type holds this key, print that "
            "job's id (and say so on stderr) instead of queuing another. Default: none."
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            help="What the type's group concurrency counts this job by (e.g. a tenant): "
            "at most that many jobs of a group run at once. Default: none."
        ),
    ] = None,
    after: Annotated[
        list[str] | None,
        typer.Option(
            "--after",
            metavar="ID",
            help="A parent job id (repeat for each, at most 100): the job waits until they "
            "all succeeded, and is cancelled if one fails or is cancelled. Default: none.",
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Submit a job and print its id; with --wait, print its result once it ends.

    Warns on stderr when no worker has asked for jobs of this type lately (a typo, or no
    worker running): the job is queued all the same and its id printed.

    With --wait, exits 1 if the job failed or was cancelled; if it is still running when
    the wait is over, prints its id (and says so on stderr) and exits 0.
    """
    value = _json_arg("jobs submit", payload, "PAYLOAD")
    with connect("jobs submit", url, token) as client:
        handle = client.submit(
            type,
            value,
            max_attempts=max_attempts,
            timeout=timeout,
            delay=delay,
            priority=priority,
            idempotency_key=idempotency_key,
            unique_key=unique_key,
            group=group,
            after=after or None,
            wait=wait,
        )
    if handle.deduplicated:
        warn(
            "jobs submit",
            f"job {handle.id} ({handle.job.status}) holds unique key {unique_key!r}: "
            "nothing new was queued",
        )
    if handle.served is False:
        warn(
            "jobs submit",
            f"no worker has asked for jobs of type {type!r} lately: is a worker running "
            "with a handler for it? (`tidings jobs queues` lists the types in use)",
        )
    if wait is not None and handle.job.terminal:
        _finish("jobs submit", handle.job)
        return
    if wait is not None:
        warn("jobs submit", f"job {handle.id} still {handle.job.status} after {wait:g}s")
    typer.echo(handle.id)


@jobs_app.command(
    "get",
    epilog="""\b
Examples:
  tidings jobs get 01J9Z3
  tidings jobs get 01J9Z3 | jq .error
  tidings jobs get 01J9Z3 --traceback > job.json""",
)
def jobs_get(
    job_id: IdArg,
    traceback: TracebackOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Print a job as JSON; a failed job's traceback also goes to stderr, readably."""
    with connect("jobs get", url, token) as client:
        info = client.get_job(job_id)
    print_json(_job_obj(info))
    _show_traceback(info, traceback)


@jobs_app.command(
    "wait",
    epilog="""\b
Examples:
  tidings jobs wait 01J9Z3
  tidings jobs wait 01J9Z3 > result.json""",
)
def jobs_wait(
    job_id: IdArg,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Show a job's progress until it ends, then print its result.

    Exits 0 if it succeeded, 1 if it failed or was cancelled.
    """
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

    try:
        with connect("jobs wait", url, token) as client:
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
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    _finish("jobs wait", handle.job)


@jobs_app.command("cancel", epilog="\b\nExamples:\n  tidings jobs cancel 01J9Z3")
def jobs_cancel(job_id: IdArg, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Cancel a job: a queued one at once, a running one at its next heartbeat."""
    with connect("jobs cancel", url, token) as client:
        info = client.cancel_job(job_id)
    typer.echo("cancel requested" if info.status == "running" else info.status)


@jobs_app.command(
    "retry",
    epilog="""\b
Examples:
  tidings jobs retry 01J9Z3
  tidings jobs dead --json | jq -r '.[].id' | xargs -n1 tidings jobs retry""",
)
def jobs_retry(job_id: IdArg, url: UrlOption = DEFAULT_URL, token: TokenOption = None) -> None:
    """Requeue a failed or cancelled job."""
    with connect("jobs retry", url, token) as client:
        info = client.retry_job(job_id)
    typer.echo(info.status)


LimitOption = Annotated[
    int | None,
    typer.Option(min=1, max=1000, help="At most this many. Default: the server's (100)."),
]
TypeFilter = Annotated[str | None, typer.Option(help="Only jobs of this type. Default: all.")]


@jobs_app.command(
    "list",
    epilog="""\b
Examples:
  tidings jobs list
  tidings jobs list --status running --type transcode
  tidings jobs list --json | jq -r '.[] | select(.status == "queued") | .id'""",
)
def jobs_list(
    status: Annotated[
        str | None,
        typer.Option(help="queued, running, succeeded, failed or cancelled. Default: all."),
    ] = None,
    type: TypeFilter = None,
    limit: LimitOption = None,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List jobs, newest first, as a table (times in UTC) or as JSON."""
    from rich.table import Table

    with connect("jobs list", url, token) as client:
        jobs = client.list_jobs(status=status, type=type, limit=limit)
    if json_out:
        print_json([_job_obj(j) for j in jobs])
        return
    table = Table("type", "status", "progress", "attempt", "created", "error", "message")
    table.add_column("id", no_wrap=True)  # whole, to be copied into `jobs get|wait|cancel`
    for job in jobs:
        table.add_row(
            job.type,
            job.status,
            "" if job.progress is None else f"{job.progress:g}%",
            f"{job.attempt}/{job.max_attempts}",
            table_time(job.created_at),
            _error_cell(job.error),
            job.message or "",
            job.id,
        )
    print_table(table)


@jobs_app.command(
    "dead",
    epilog="""\b
Examples:
  tidings jobs dead
  tidings jobs dead --type transcode --limit 10
  tidings jobs dead --limit 3 --traceback    # and where each one failed
  tidings jobs get ID --traceback            # the traceback of one of them""",
)
def jobs_dead(
    type: TypeFilter = None,
    limit: LimitOption = None,
    traceback: Annotated[
        bool,
        typer.Option(
            "--traceback",
            help="Also fetch each listed job (one request each, at most --limit) and print"
            " its traceback on stderr, in the list's order. Default: off.",
        ),
    ] = False,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Dead letters: the jobs that failed for good, with their error.

    The server picks the newest failed jobs by creation (at most --limit); they are shown
    by when they failed, the latest first. `tidings jobs retry ID` runs one again;
    --traceback (or `tidings jobs get ID --traceback`) shows where it failed.
    """
    from rich.table import Table

    from tidings.sdk.common import TidingsHTTPError

    with connect("jobs dead", url, token) as client:
        jobs = client.list_jobs(status="failed", type=type, limit=limit)
        # A listing leaves tracebacks out: each job's own answer has it.
        if traceback:
            full = []
            for job in jobs:
                try:
                    full.append(client.get_job(job.id))
                except TidingsHTTPError as exc:
                    if exc.status != 404:  # a job removed meanwhile is shown as listed
                        raise
                    full.append(job)
            jobs = full
    # Latest end first (the server lists by creation); a job without an end time last.
    jobs.sort(key=lambda j: j.finished_at or 0.0, reverse=True)
    if json_out:
        print_json([_job_obj(j) for j in jobs])
    else:
        table = Table("finished", "type", "attempts", "error")
        table.add_column("id", no_wrap=True)
        for job in jobs:
            table.add_row(
                table_time(job.finished_at),
                job.type,
                f"{job.attempt}/{job.max_attempts}",
                _error_cell(job.error),
                job.id,
            )
        print_table(table)
    for job in jobs:
        _show_traceback(job, traceback, on_terminal=False)


@jobs_app.command(
    "queues",
    epilog="""\b
Examples:
  tidings jobs queues
  tidings jobs queues --json | jq '.transcode.queued'""",
)
def jobs_queues(
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print one JSON object {"type": {"status": count}}. Default: a table.',
        ),
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Job counts per type and status."""
    from rich.table import Table

    from tidings.protocol.jobs import JOB_STATUSES

    with connect("jobs queues", url, token) as client:
        queues = client.queues()
    if json_out:
        print_json({t: {s: c.get(s, 0) for s in JOB_STATUSES} for t, c in sorted(queues.items())})
        return
    table = Table("type", *JOB_STATUSES)
    for name, counts in sorted(queues.items()):
        table.add_row(name, *(str(counts.get(s, 0)) for s in JOB_STATUSES))
    print_table(table)


@jobs_app.command(
    "limit",
    epilog="""\b
Examples:
  tidings jobs limit email
  tidings jobs limit email --rate 50 --concurrency 10
  tidings jobs limit report --rate 100 --per 60 --group-concurrency 2
  tidings jobs limit email --lift""",
)
def jobs_limit(
    type: Annotated[str, typer.Argument(help="Job type.")],
    rate: Annotated[
        int | None,
        typer.Option(help="At most N leases per --per seconds (a token bucket). Default: none."),
    ] = None,
    per: Annotated[float, typer.Option(help="The rate's time span, seconds. Default: 1.")] = 1.0,
    concurrency: Annotated[
        int | None,
        typer.Option(help="At most N jobs of the type running at once. Default: none."),
    ] = None,
    group_concurrency: Annotated[
        int | None,
        typer.Option(help="At most N running at once per `group` given on submit. Default: none."),
    ] = None,
    lift: Annotated[
        bool, typer.Option("--lift", help="Lift every limit of the type. Default: keep them.")
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option("--json", help="Print the queue as the server answers it. Default: text."),
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Show a job type's limits and what they hold back; with --rate, --concurrency or
    --group-concurrency, set them (admins; the ones not given are lifted); with --lift,
    lift them all."""
    setting = rate is not None or concurrency is not None or group_concurrency is not None
    if lift and setting:
        fail("jobs limit", "--lift sets no limit: give it alone, or set limits without it")
    with connect("jobs limit", url, token) as client:
        if lift:
            client.lift_queue_limits(type)
        elif setting:
            client.set_queue_limits(
                type,
                rate=rate,
                per=per,
                concurrency=concurrency,
                group_concurrency=group_concurrency,
            )
        queue = client.queue(type)
    if json_out:
        print_json(queue)
        return
    limits = queue.get("limits")
    if not isinstance(limits, dict):
        typer.echo(f"{type}: no limits")
        return
    said = []
    if limits.get("rate"):
        said.append(f"rate {limits['rate']['limit']} per {limits['rate']['per']:g} s")
    for name in ("concurrency", "group_concurrency"):
        if limits.get(name) is not None:
            said.append(f"{name.replace('_', ' ')} {limits[name]}")
    waiting = limits.get("waiting") or {}
    held = ", ".join(f"{n} by {name}" for name, n in waiting.items() if n) or "none"
    typer.echo(f"{type}: {'; '.join(said)}; held back now: {held}")
