"""The `tidings` command: its root, and where each group of commands lives."""

from __future__ import annotations

from typing import Annotated

import typer

from tidings.cli.admin import tokens_app, users_app
from tidings.cli.bridges import bridges_app
from tidings.cli.channels import channels_app
from tidings.cli.doctor import EPILOG as DOCTOR_EPILOG
from tidings.cli.doctor import doctor
from tidings.cli.jobs import jobs_app
from tidings.cli.lab import EPILOG as LAB_EPILOG
from tidings.cli.lab import lab
from tidings.cli.messages import publish, subscribe
from tidings.cli.processes import serve, worker
from tidings.cli.schedules import schedules_app
from tidings.cli.workers import EPILOG as WORKERS_EPILOG
from tidings.cli.workers import workers

__all__ = ["main"]

app = typer.Typer(
    name="tidings",
    help="One server for every way a backend answers its clients.",
    no_args_is_help=True,
    add_completion=True,
    # Help is plain text: "[env TIDINGS_PORT]" and "tidings[redis]" must not read as markup.
    rich_markup_mode=None,
)


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


for command in (serve, publish, subscribe, worker):
    app.command()(command)
app.add_typer(jobs_app)
app.add_typer(channels_app)
app.add_typer(schedules_app)
app.add_typer(users_app)
app.add_typer(tokens_app)
app.add_typer(bridges_app)
app.command(epilog=WORKERS_EPILOG)(workers)
app.command(epilog=DOCTOR_EPILOG)(doctor)
app.command(epilog=LAB_EPILOG)(lab)


def main() -> None:
    """Console entry point (also `python -m tidings`, under the same name, so that shell
    completion and usage lines say `tidings`)."""
    app(prog_name="tidings")
