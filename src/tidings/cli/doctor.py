"""`tidings doctor`: the network path from this host to its store and other dependencies.

The work is in tidings.server.doctor (imported when the command runs, so the CLI starts fast);
this module parses the arguments and prints the report as a table or as one JSON object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from tidings.cli.common import fail, print_json, print_table
from tidings.server import constants as C

__all__ = ["EPILOG", "doctor"]

# click rewraps help paragraphs; \b keeps the example lines as written.
EPILOG = """\b
Examples:
  tidings doctor                                  # the host of --store / TIDINGS_STORE
  tidings doctor redis://db.internal:6379/0 pg.internal:5432 --tries 10
  tidings doctor 10.0.0.5:6379 --json | jq .targets
"""


def doctor(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="HOST:PORT or a URL (redis://…, postgresql://…, http://…); "
            "none: the store's host.",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object instead of a table.")
    ] = False,
    tries: Annotated[int, typer.Option(min=1, max=100, help="TCP connects timed per target.")] = 5,
    timeout: Annotated[float, typer.Option(min=0.001, help="Seconds one connect may take.")] = 2.0,
    store: Annotated[
        str,
        typer.Option(
            envvar="TIDINGS_STORE", help="Store URL whose host is checked when no TARGET is given."
        ),
    ] = C.DEFAULT_STORE,
    state_file: Annotated[
        Path | None,
        typer.Option(
            envvar="TIDINGS_DOCTOR_STATE_FILE",
            help="Where the gateway's MAC is remembered between runs "
            "[default: $XDG_STATE_HOME/tidings/doctor.json or ~/.local/state/tidings/doctor.json].",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Check the IP path to each TARGET: route (local, on-link, via a gateway), TCP connect
    time, and the default gateway's MAC in the neighbour table (read only; nothing is sent
    but connects to the targets). Exits 1 when a target is not reachable."""
    from tidings.server import doctor as doc

    try:
        if targets:
            parsed = [doc.parse_target(t) for t in targets]
            notes: list[str] = []
        else:
            parsed, notes = doc.store_targets(store)
    except ValueError as exc:
        fail("doctor", str(exc), 2)
    report = doc.run(parsed, tries, timeout, state_file, notes)
    if json_out:
        print_json(report)
    else:
        _print_report(report)
    if any(not t["reachable"] for t in report["targets"]):
        raise typer.Exit(1)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def _print_report(report: dict[str, Any]) -> None:
    """The report for people: the targets' table, then the gateway, warnings and notes
    as plain lines (coloured on a terminal only, never wrapped)."""
    table = Table(title="tidings doctor", title_justify="left")
    for column in ("target", "address", "route", "interface", "gateway", "reachable"):
        table.add_column(column)
    table.add_column("p50 ms", justify="right")
    table.add_column("p95 ms", justify="right")
    for t in report["targets"]:
        table.add_row(
            escape(t["target"]),
            t["address"] or "-",
            t["route"] or "no route",
            t["interface"] or "-",
            t["gateway"] or "-",
            "[green]yes[/green]" if t["reachable"] else "[red]no[/red]",
            _num(t["rtt_ms"]["p50"]),
            _num(t["rtt_ms"]["p95"]),
        )
    if report["targets"]:
        print_table(table)
    gw = report["gateway"]
    if gw["address"] is None:
        typer.echo("gateway: none (no default route)")
    else:
        mac = gw["mac"] or "not in the neighbour table"
        typer.echo(f"gateway: {gw['address']} on {gw['interface']}, MAC {mac}")
    warning = typer.style("warning", fg="yellow")
    for t in report["targets"]:
        for said in t["warnings"]:
            typer.echo(f"{warning} {t['target']}: {said}")
    for said in report["warnings"]:
        typer.echo(f"{warning} {said}")
    for note in report["notes"]:
        typer.echo(typer.style(note, dim=True))
