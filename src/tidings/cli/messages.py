"""`tidings publish` and `tidings subscribe`: a channel's messages from the shell."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from tidings.cli.common import DEFAULT_URL, TokenOption, UrlOption, err
from tidings.protocol.codecs import encode_json
from tidings.protocol.messages import Reset

__all__ = ["publish", "subscribe"]


def publish(
    channel: Annotated[str, typer.Argument(help="Channel name.")],
    data: Annotated[str, typer.Argument(help="Message text; - reads standard input.")],
    event: Annotated[str | None, typer.Option(help="Event name.")] = None,
    json_data: Annotated[
        bool, typer.Option("--json", help="DATA is JSON: publish the value, not the text.")
    ] = False,
    idempotency_key: Annotated[str | None, typer.Option(help="Dedup key.")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Publish one message and print its id."""
    from tidings.sdk.client import Client, ClientError

    text = sys.stdin.read() if data == "-" else data
    value: Any = text
    if json_data:
        try:
            import json

            value = json.loads(text)
        except ValueError as exc:
            err.print(f"[red]--json given but DATA is not JSON:[/red] {escape(str(exc))}")
            raise typer.Exit(2) from None
    try:
        with Client(url, token=token) as client:
            ack = client.publish(channel, value, event=event, idempotency_key=idempotency_key)
    except ClientError as exc:
        err.print(f"[red]publish failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    typer.echo(ack.id)


def subscribe(
    channel: Annotated[str, typer.Argument(help="Channel name.")],
    via: Annotated[str, typer.Option(help="sse, ws, longpoll or poll.")] = "sse",
    after: Annotated[
        str | None, typer.Option(help="Resume after this id (0: from the oldest kept).")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Print a channel's messages as JSON lines, resuming by itself; resets go to stderr."""
    from tidings.sdk.client import Client, ClientError

    if via not in ("sse", "ws", "longpoll", "poll"):
        err.print(f"[red]--via {escape(repr(via))}:[/red] use sse, ws, longpoll or poll")
        raise typer.Exit(2)
    seen = 0
    try:
        with Client(url, token=token) as client:
            for item in client.subscribe(channel, via=via, after=after):  # type: ignore[arg-type]
                if isinstance(item, Reset):
                    err.print(
                        f"[yellow]reset:[/yellow] {escape(item.reason)} (oldest kept: {item.first})"
                    )
                    continue
                sys.stdout.write(encode_json(item.to_wire()).decode() + "\n")
                sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    return
    except ClientError as exc:
        err.print(f"[red]subscribe failed:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        return
