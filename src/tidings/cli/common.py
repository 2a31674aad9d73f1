"""What the `tidings` commands share: the options every client command takes, the consoles,
one way to fail, and the SDK's errors said as what to do about them."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from tidings.sdk.client import Client
    from tidings.sdk.common import ClientError

__all__ = [
    "DEFAULT_URL",
    "JsonOption",
    "TokenOption",
    "UrlOption",
    "connect",
    "err",
    "explain",
    "fail",
    "print_json",
    "print_table",
    "table_time",
    "warn",
]

# Errors and warnings: one paragraph each, never broken into lines by rich (a terminal
# wraps them itself, and a command quoted in them stays whole when copied).
err = Console(stderr=True, soft_wrap=True, highlight=False)

DEFAULT_URL = "http://127.0.0.1:8000"

# Width of stdout's console when it is not a terminal: no table read by a script or a
# pager is cut or ellipsized to fit a width nobody chose.
PIPE_WIDTH = 100_000

TokenOption = Annotated[
    str | None,
    typer.Option(
        envvar="TIDINGS_TOKEN",
        help="API or session token. Default: none (requests are anonymous).",
    ),
]
UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="TIDINGS_URL", help="Base URL of the tidings server."),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print one JSON array instead of a table (times in RFC 3339). Default: a table.",
    ),
]


def print_table(table: Table) -> None:
    """A table on stdout: as wide as the terminal on one; whole in a pipe or a file."""
    console = Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH, soft_wrap=True)
    _to_stdout(lambda: console.print(table))


def print_json(value: Any) -> None:
    """`value` as one line of JSON on stdout."""
    from tidings.protocol.codecs import encode_json

    text = encode_json(value).decode() + "\n"
    _to_stdout(lambda: sys.stdout.write(text))


def _to_stdout(write: Callable[[], object]) -> None:
    """Run `write` and flush; a reader that has gone (`| head`) ends the command quietly
    with the status of a process killed by SIGPIPE, as other shell tools do."""
    try:
        write()
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would flush stdout again at exit and print the error: point it at
        # /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(128 + signal.SIGPIPE) from None


def table_time(ts: float | None) -> str:
    """A time for a table: RFC 3339 in UTC to the second (`2026-12-05T06:49:24Z`)."""
    if ts is None:
        return ""
    from tidings.protocol.codecs import format_time

    return format_time(ts)[:19] + "Z"


def fail(command: str, message: str, code: int = 1) -> NoReturn:
    """Print `tidings COMMAND: MESSAGE` on stderr and exit with `code`."""
    err.print(Text.assemble((f"tidings {command}: ", "bold red"), message))
    raise typer.Exit(code)


def warn(command: str, message: str) -> None:
    """Print `tidings COMMAND: warning: MESSAGE` on stderr."""
    err.print(Text.assemble((f"tidings {command}: warning: ", "bold yellow"), message))


def explain(exc: ClientError, url: str, token: str | None) -> str:
    """What went wrong, said with what to do about it: the server's own message for an
    error answer, how to pass a token for 401, whom to ask for 403, how to start or name a
    server when none answers."""
    import httpx

    from tidings.sdk.common import TidingsConnectionError, TidingsHTTPError

    if isinstance(exc, TidingsConnectionError):
        if isinstance(exc.__cause__, httpx.ConnectError):
            return (
                f"no tidings server at {url}: start one with `tidings serve` "
                "or pass --url / TIDINGS_URL"
            )
        cause = exc.__cause__ or exc
        return f"the server at {url} did not answer ({type(cause).__name__}: {cause})"
    if isinstance(exc, TidingsHTTPError):
        said = f"{exc.message} (HTTP {exc.status} {exc.code})"
        if exc.status == 401 and token:
            return (
                f"{said}. The token was refused (revoked, expired or mistyped): make a new "
                "one with `tidings tokens create USER --store STORE` and pass it with "
                "--token or TIDINGS_TOKEN."
            )
        if exc.status == 401:
            return (
                f"{said}. Pass a token with --token or TIDINGS_TOKEN; an admin makes one "
                "with `tidings tokens create USER --store STORE`."
            )
        if exc.status == 403 and not token:
            return (
                f"{said}. Anonymous requests may not do this: pass a token with --token or "
                "TIDINGS_TOKEN (`tidings tokens create USER --store STORE`)."
            )
        if exc.status == 403:
            return (
                f"{said}. An admin grants the permission with `tidings users grant USER "
                "--store STORE --publish|--subscribe|--submit|--work PATTERN` (or --admin)."
            )
        return said
    return str(exc)


@contextmanager
def connect(command: str, url: str, token: str | None) -> Iterator[Client]:
    """A `Client` for `url`; any `ClientError` raised inside ends the command with the
    error explained (exit 1); a URL that is not http(s) ends it with exit 2."""
    from tidings.sdk.client import Client
    from tidings.sdk.common import ClientError

    try:
        client = Client(url, token=token)
    except ValueError as exc:
        fail(command, f"--url / TIDINGS_URL: {exc}", 2)
    try:
        with client:
            yield client
    except ClientError as exc:
        fail(command, explain(exc, url, token))
