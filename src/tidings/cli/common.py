"""What the `tidings` commands share: the options every client command takes, the error console."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

__all__ = ["DEFAULT_URL", "TokenOption", "UrlOption", "err"]

err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8000"

TokenOption = Annotated[
    str | None,
    typer.Option(envvar="TIDINGS_TOKEN", help="API or session token [env TIDINGS_TOKEN]."),
]
UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="TIDINGS_URL", help="Base URL of the tidings server."),
]
