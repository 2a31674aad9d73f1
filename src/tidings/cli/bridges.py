"""`tidings bridges`: a server's bridges to message buses (RabbitMQ, NATS JetStream, a
PostgreSQL outbox); `tidings bridges outbox-ddl`:
the PostgreSQL outbox table the postgres bridge drains."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from tidings.cli.common import (
    DEFAULT_URL,
    TokenOption,
    UrlOption,
    connect,
    fail,
    print_json,
    print_table,
)

__all__ = ["bridges_app"]

bridges_app = typer.Typer(
    name="bridges",
    invoke_without_command=True,
    rich_markup_mode=None,
)

EPILOG = """\b
Examples:
  tidings bridges
  tidings bridges --json | jq '.bridges[] | {name, state, published, lag}'
  tidings bridges outbox-ddl --table app_outbox | psql app"""


def _count(value: Any) -> str:
    return "" if value is None else str(value)


@bridges_app.callback(epilog=EPILOG)
def bridges(
    ctx: typer.Context,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help='Print the server\'s answer, one JSON object {"bridges": [...]}. '
            "Default: a table.",
        ),
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """The server's bridges: each one's state, messages acknowledged to its bus, published
    (or submitted as jobs), replies sent, duplicates (redeliveries not published or
    submitted again), dead-lettered, lag, channel messages forwarded to its bus (forward=:
    by this node), reconnects, where it sends them (its channel template, or `job TYPE`)
    and last error. Needs an admin."""
    if ctx.invoked_subcommand is not None:
        return
    from rich.table import Table

    from tidings.sdk.common import check

    with connect("bridges", url, token) as client:
        response = client._request({"method": "GET", "url": "/v1/admin/bridges"})
        check(response)
        answer = response.json()
    if json_out:
        print_json(answer)
        return
    table = Table(
        "name", "kind", "state", "acked", "published", "replied", "duplicates", "dead", "lag",
        "forwarded", "reconnects", "to", "last error",
    )  # fmt: skip
    for b in answer["bridges"]:
        error = b["last_error"] or ""
        if error and b.get("last_error_at"):
            error = f"{b['last_error_at'][:19]}Z {error}"
        job = b.get("job")
        table.add_row(
            b["name"],
            b["kind"],
            b["state"],
            _count(b["acknowledged"]),
            _count(b.get("submitted") if job else b["published"]),
            _count(b.get("replied") if job else None),
            _count(b["duplicates"]),
            _count(b["dead_lettered"]),
            _count(b["lag"]),
            _count((b.get("forward") or {}).get("forwarded")),
            _count(b["reconnects"]),
            f"job {job}" if job else b.get("channel") or "",
            error,
        )
    print_table(table)


@bridges_app.command(
    "outbox-ddl",
    epilog="""\b
Examples:
  tidings bridges outbox-ddl | psql app
  tidings bridges outbox-ddl --table events.outbox > outbox.sql""",
)
def outbox_ddl(
    table: Annotated[
        str,
        typer.Option(
            "--table", help="The outbox table's name (optionally schema.name).", metavar="NAME"
        ),
    ] = "tidings_outbox",
) -> None:
    """Print the SQL that creates an outbox table and the trigger that wakes tidings:
    run it in your database, then insert rows in the transactions that change your data.

    \b
    Example (Python, asyncpg), inside your own transaction:
      await conn.execute(
          "INSERT INTO tidings_outbox (channel, event, data) VALUES ($1, $2, $3)",
          "orders.42", "paid", json.dumps({"total": 12}))
    """
    from tidings.server.bridges.base import BridgeConfigError
    from tidings.server.bridges.postgres import outbox_ddl as ddl

    try:
        text = ddl(table)
    except BridgeConfigError as exc:
        fail("bridges outbox-ddl", str(exc), 2)
    print(text, end="")
