"""`tidings schedules …`: add (or replace) a schedule, list them, remove one."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tidings.cli.common import (
    DEFAULT_URL,
    JsonOption,
    TokenOption,
    UrlOption,
    connect,
    fail,
    print_json,
    print_table,
    table_time,
)
from tidings.cli.jobs import _json_arg

__all__ = ["schedules_app"]

schedules_app = typer.Typer(
    name="schedules",
    help="Schedules: jobs submitted at the times a cron expression or an interval names.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

NameArg = Annotated[
    str, typer.Argument(metavar="NAME", help="Schedule name (1-128 of A-Z a-z 0-9 . _ : -).")
]


def _schedule_obj(info: Any) -> dict[str, Any]:
    """A ScheduleInfo as the server's JSON object (times in RFC 3339)."""
    import msgspec

    from tidings.protocol.codecs import format_time

    obj: dict[str, Any] = msgspec.to_builtins(info)
    for name in ("next_run_at", "last_run_at", "created_at", "updated_at"):
        if obj.get(name) is not None:
            obj[name] = format_time(obj[name])
    return obj


def _when(info: Any) -> str:
    if info.cron is not None:
        return f"cron {info.cron} ({info.timezone or 'UTC'})"
    return f"every {info.every}s"


@schedules_app.command(
    "add",
    epilog="""\b
Examples:
  tidings schedules add nightly --type report --cron '0 3 * * *' --timezone Europe/Paris
  tidings schedules add heartbeat --type ping --every 60 --payload '{"from": "cron"}'""",
)
def schedules_add(
    name: NameArg,
    type: Annotated[str, typer.Option("--type", help="Job type each firing submits.")],
    cron: Annotated[
        str | None,
        typer.Option(
            help="Five cron fields (minute hour day-of-month month day-of-week), e.g. "
            "'*/5 * * * *'. Required unless --every."
        ),
    ] = None,
    every: Annotated[
        int | None,
        typer.Option(min=1, help="Seconds between firings. Required unless --cron."),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option(help="IANA time zone --cron is read in. Default: UTC."),
    ] = None,
    payload: Annotated[
        str | None,
        typer.Option(help="Each job's payload as JSON; - reads standard input. Default: null."),
    ] = None,
    max_attempts: Annotated[
        int,
        typer.Option(
            show_default=False, help="Attempts each job gets before it fails. Default: 3."
        ),
    ] = 3,
    timeout: Annotated[
        float | None,
        typer.Option(help="Seconds one attempt may run. Default: the server's."),
    ] = None,
    priority: Annotated[
        int, typer.Option(show_default=False, help="Higher runs first. Default: 0.")
    ] = 0,
    catch_up: Annotated[
        str,
        typer.Option(
            show_default=False,
            help="Slots up to 10 s late are all fired, in order; after downtime (older "
            "slots) latest fires the most recent slot once, skip none of the older ones. "
            "Default: latest.",
        ),
    ] = "latest",
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Add a schedule, or replace the one of that name, and print it as JSON.

    Each firing is a job whose id names the schedule and the slot
    (sched:NAME:YYYYmmddTHHMMSSZ, in UTC), submitted once however many servers share
    the store.
    """
    if (cron is None) == (every is None):
        fail("schedules add", "give exactly one of --cron EXPR or --every SECONDS", 2)
    if catch_up not in ("latest", "skip"):
        fail("schedules add", f"--catch-up {catch_up!r}: use latest or skip", 2)
    value = _json_arg("schedules add", payload, "--payload")
    with connect("schedules add", url, token) as client:
        info = client.put_schedule(
            name,
            type,
            value,
            cron=cron,
            every=every,
            timezone=timezone,
            max_attempts=max_attempts,
            timeout=timeout,
            priority=priority,
            catch_up="skip" if catch_up == "skip" else "latest",
        )
    print_json(_schedule_obj(info))


@schedules_app.command(
    "list",
    epilog="""\b
Examples:
  tidings schedules list
  tidings schedules list --json | jq -r '.[] | "\\(.name) \\(.next_run_at)"'""",
)
def schedules_list(
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="At most this many. Default: 1000."),
    ] = None,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List the schedules you may see, by name, as a table (times in UTC) or as JSON."""
    from rich.table import Table

    with connect("schedules list", url, token) as client:
        schedules = client.list_schedules(limit=limit)
    if json_out:
        print_json([_schedule_obj(s) for s in schedules])
        return
    table = Table("name", "type", "when", "next run", "last run", "last job", "owner")
    for s in schedules:
        table.add_row(
            s.name,
            s.type,
            _when(s),
            table_time(s.next_run_at),
            table_time(s.last_run_at),
            s.last_job_id or "",
            s.owner or "",
        )
    print_table(table)


@schedules_app.command("remove", epilog="\b\nExamples:\n  tidings schedules remove nightly")
def schedules_remove(
    name: NameArg, url: UrlOption = DEFAULT_URL, token: TokenOption = None
) -> None:
    """Remove a schedule; the jobs it already submitted stay."""
    with connect("schedules remove", url, token) as client:
        client.delete_schedule(name)
    typer.echo(f"removed schedule {name}")
