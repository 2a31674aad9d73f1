"""`tidings workers`: the workers a server saw lately, their types and running jobs."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tidings.cli.common import (
    DEFAULT_URL,
    TokenOption,
    UrlOption,
    connect,
    print_json,
    print_table,
    table_time,
)

__all__ = ["EPILOG", "workers"]

# click rewraps help paragraphs; \b keeps the example lines as written.
EPILOG = """\b
Examples:
  tidings workers
  tidings workers --json | jq '.workers[] | {name, running: (.running | length)}'"""


def _job_cell(job: Any) -> str:
    """A running job for a table: `type id`, and its progress when it reported some."""
    progress = "" if job.progress is None else f" {job.progress:g}%"
    return f"{job.type} {job.id}{progress}"


def _types_cell(types: list[str] | None) -> str:
    return "(any)" if types is None else ", ".join(types)


def workers(
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print the server\'s answer, one JSON object {"workers": [...], '
            '"unidentified": [...]}. Default: a table.',
        ),
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """The workers that asked for jobs or heartbeat one within the last minute, with the
    jobs each is running; then the running jobs of workers that did not say who they are.

    An admin sees every worker; a user with a work grant sees the workers that
    authenticate as that user.
    """
    import msgspec
    from rich.table import Table

    from tidings.protocol.codecs import parse_time
    from tidings.protocol.jobs import WorkerListWire
    from tidings.sdk.common import decode

    with connect("workers", url, token) as client:
        response = client._request({"method": "GET", "url": "/v1/workers"})
        answer = decode(response, msgspec.json.Decoder(WorkerListWire))
    if json_out:
        print_json(answer)
        return
    table = Table("name", "id", "user", "types", "running", "jobs", "first seen", "last seen")
    for w in answer.workers:
        slots = "" if w.concurrency is None else f"/{w.concurrency}"
        table.add_row(
            w.name,
            w.id,
            w.user or "",
            _types_cell(w.types),
            f"{len(w.running)}{slots}",
            "\n".join(_job_cell(j) for j in w.running),
            table_time(parse_time(w.first_seen)),
            table_time(parse_time(w.last_seen)),
        )
    print_table(table)
    if answer.unidentified:
        others = Table(
            "job", "type", "attempt", "started", "progress",
            title="running jobs of workers that did not say who they are",
        )  # fmt: skip
        for j in answer.unidentified:
            others.add_row(
                j.id,
                j.type,
                str(j.attempt),
                "" if j.started_at is None else table_time(parse_time(j.started_at)),
                "" if j.progress is None else f"{j.progress:g}%",
            )
        print_table(others)
