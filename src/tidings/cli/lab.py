"""`tidings lab`: the seed's patterns measured side by side on one workload (tidings.lab)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from tidings.cli.common import TokenOption, err, fail, print_json, print_table

if TYPE_CHECKING:
    from tidings.lab.workload import Workload

__all__ = ["EPILOG", "lab"]

EPILOG = (
    "Each pattern runs in turn against one server: the lab's own (tidings serve on a "
    "temporary SQLite file unless --store says otherwise) or a running one (--url). "
    "Requests and bytes are counted on the clients' sockets, headers included; server CPU "
    "is read from /proc (unknown with --url unless --server-pid)."
)


def lab(
    clients: Annotated[
        str,
        typer.Option(help="Clients per pattern; a comma-separated list sweeps (10,100,1000)."),
    ] = "20",
    rate: Annotated[
        str,
        typer.Option(help="Messages published a second; a comma-separated list sweeps."),
    ] = "5",
    seconds: Annotated[float, typer.Option(help="Seconds each pattern runs.")] = 5.0,
    interval: Annotated[
        float, typer.Option(help="Seconds between two short polls of one client.")
    ] = 0.1,
    job_seconds: Annotated[
        float, typer.Option(help="Seconds each job takes on the lab's worker.")
    ] = 0.2,
    patterns: Annotated[
        str,
        typer.Option(
            help="all, or some of: poll, longpoll, sse, ws, job-poll, job-longpoll, job-push, "
            "job-request (comma-separated)."
        ),
    ] = "all",
    store: Annotated[
        str | None,
        typer.Option(
            help="Store of the lab's server: memory://, sqlite:///path.db or "
            "redis://host:port/0. [default: a temporary SQLite file]",
            show_default=False,
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            help="Measure a running server (http://host:port) instead of starting one. "
            "[default: none, the lab starts its own]",
            show_default=False,
        ),
    ] = None,
    server_pid: Annotated[
        int | None,
        typer.Option(
            help="Pid of the --url server, to read its CPU time. [default: CPU unknown]",
            show_default=False,
        ),
    ] = None,
    token: TokenOption = None,
    processes: Annotated[
        int | None,
        typer.Option(
            help="Client processes per pattern. [default: the CPUs, at most 4]",
            show_default=False,
        ),
    ] = None,
    chart: Annotated[
        Path | None,
        typer.Option(
            help="Write the chart (SVG) here. [default: tidings-lab.svg]", show_default=False
        ),
    ] = None,
    no_chart: Annotated[
        bool, typer.Option("--no-chart", help="Write no chart. Default: a chart is written.")
    ] = False,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print the figures as one JSON object instead of tables. Default: tables.",
        ),
    ] = False,
) -> None:
    """Measure every pattern — short and long polling, SSE, WebSocket, and a job's result
    polled, long-polled, pushed or answered — on one workload: requests and bytes per
    delivered message, latency p50/p99, server CPU per delivered message, connections
    held, messages missed or duplicated; a sentence per seed claim, and a chart.

    \b
    Examples:
      tidings lab
      tidings lab --clients 10,100,1000 --patterns poll,longpoll,sse,ws
      tidings lab --rate 1,10,100 --seconds 3 --json > lab.json
      tidings lab --url http://127.0.0.1:8000 --server-pid 4242
    """
    from tidings.lab.measure import LabError, run_lab, started_server, target_at
    from tidings.lab.report import svg_chart
    from tidings.lab.workload import parse_patterns

    try:
        points = _points(clients, rate, seconds, interval, job_seconds)
        chosen = parse_patterns(patterns)
        _check_target(processes, url, store, server_pid, token)
    except ValueError as exc:
        fail("lab", str(exc), 2)
    command = _command_line(sys.argv[2:]) if len(sys.argv) > 1 else None

    def progress(what: str) -> None:
        if not json_out:
            err.print(f"tidings lab: {what}", style="dim")

    try:
        if url:
            result = run_lab(
                target_at(url, server_pid, token), points, chosen, processes, progress, command
            )
        else:
            with started_server(store) as target:
                result = run_lab(target, points, chosen, processes, progress, command)
    except LabError as exc:
        fail("lab", str(exc))
    if not no_chart:
        path = chart or Path("tidings-lab.svg")
        try:
            path.write_text(svg_chart(result))
        except OSError as exc:
            fail("lab", f"--chart {path}: {exc}")
        result["chart"] = str(path)
    if json_out:
        print_json(result)
        return
    _print(result)


def _command_line(args: list[str]) -> str:
    """The command as run, for the JSON and the chart's caption, its token left out."""
    shown: list[str] = []
    hide = False
    for arg in args:
        if hide:
            shown.append("TOKEN")
        elif arg.startswith("--token="):
            shown.append("--token=TOKEN")
        else:
            shown.append(arg)
        hide = not hide and arg == "--token"
    return shlex.join(["tidings", "lab", *shown])


def _points(
    clients: str, rate: str, seconds: float, interval: float, job_seconds: float
) -> list[Workload]:
    """The workload points of --clients x --rate, each checked (ValueError says which
    option to fix)."""
    from tidings.lab.workload import LIMITS, Workload, parse_list

    counts = parse_list("--clients", clients, int)
    rates = parse_list("--rate", rate, float)
    points = [Workload(int(c), r, seconds, interval, job_seconds) for c in counts for r in rates]
    if len(points) > LIMITS.max_points:
        raise ValueError(f"--clients x --rate: {len(points)} points; at most {LIMITS.max_points}")
    for point in points:
        point.check()
    return points


def _check_target(
    processes: int | None,
    url: str | None,
    store: str | None,
    server_pid: int | None,
    token: str | None,
) -> None:
    if processes is not None and not 1 <= processes <= 64:
        raise ValueError(f"--processes: {processes} is not between 1 and 64")
    if url and store:
        raise ValueError("--url and --store: give one (--store is for the lab's own server)")
    if token and not url:
        raise ValueError(
            "--token (or TIDINGS_TOKEN) goes with --url: the lab's own server serves "
            "anonymous loopback clients and knows no tokens"
        )
    if server_pid is not None and not url:
        raise ValueError("--server-pid goes with --url (the lab knows its own server's pid)")


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console

    out = Console(soft_wrap=True) if sys.stdout.isatty() else Console(width=200, soft_wrap=True)
    for point in result["points"]:
        work = result["workload"]
        table = Table(
            title=f"{point['clients']} clients, {point['rate']:g} msg/s, {work['seconds']:g} s "
            f"(short polls every {work['interval']:g} s, jobs of {work['job_seconds']:g} s)"
        )
        for name in ("pattern", "delivered", "missed", "dup", "requests", "req/deliv",
                     "bytes/deliv", "p50 ms", "p99 ms", "CPU ms/deliv", "conns held"):  # fmt: skip
            table.add_column(name, justify="left" if name == "pattern" else "right")
        for r in point["results"]:
            table.add_row(
                r["pattern"],
                str(r["delivered"]),
                str(r["missed"]),
                str(r["duplicated"]),
                str(r["requests"]),
                _num(r["requests_per_delivery"], 3),
                _num(r["bytes_per_delivery"], 0),
                _num(r["latency_p50_ms"], 1),
                _num(r["latency_p99_ms"], 1),
                _num(r["cpu_ms_per_delivery"], 3),
                _num(r["conns_held"], 2),
            )
        print_table(table)
        for sentence in point["claims"]:
            out.print(f"- {sentence}", highlight=False, markup=False)
        for r in point["results"]:
            for error in r["errors"]:
                err.print(f"tidings lab: {r['pattern']}: {error}", highlight=False, markup=False)
        out.print()
    if len(result["points"]) > 1:
        sweep = Table(title="Cost per delivered message across the sweep (requests / CPU ms)")
        sweep.add_column("pattern")
        for point in result["points"]:
            sweep.add_column(f"{point['clients']}c {point['rate']:g}/s", justify="right")
        names = [r["pattern"] for r in result["points"][0]["results"]]
        for name in names:
            cells = []
            for point in result["points"]:
                r = next(x for x in point["results"] if x["pattern"] == name)
                cells.append(
                    f"{_num(r['requests_per_delivery'], 3)} / {_num(r['cpu_ms_per_delivery'], 3)}"
                )
            sweep.add_row(name, *cells)
        print_table(sweep)
        for note in result["sweep_notes"]:
            out.print(f"- {note}", highlight=False, markup=False)
    if "chart" in result:
        out.print(f"chart: {result['chart']}", highlight=False, markup=False)
    if result["server"]["pid"] is None:
        out.print("server CPU: unknown (pass --server-pid with --url)", highlight=False)
