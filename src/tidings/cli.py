"""The `tidings` command: serve, publish, subscribe."""

from __future__ import annotations

import gc
import logging
import socket
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from tidings import constants as C
from tidings.settings import Settings
from tidings.wire import Reset, encode_json

__all__ = ["main"]

app = typer.Typer(
    name="tidings",
    help="One server for every way a backend answers its clients.",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)

UrlOption = Annotated[
    str,
    typer.Option("--url", envvar="TIDINGS_URL", help="Base URL of the tidings server."),
]


def _server_class() -> Any:
    import uvicorn

    from tidings.app import TidingsApp

    class Server(uvicorn.Server):
        """uvicorn's server, told to end tidings' streams before it waits for connections."""

        tidings: TidingsApp

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            for server in self.servers:
                server.close()  # stop accepting first, so no new stream slips in
            self.tidings.drain("server shutting down")
            await self.tidings.wait_streams_closed(C.SHUTDOWN_GRACE / 2)
            await super().shutdown(sockets)

    return Server


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind [env TIDINGS_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port [env TIDINGS_PORT].")] = None,
    store: Annotated[
        str | None,
        typer.Option(help="Store URL: sqlite:///path.db or memory:// [env TIDINGS_STORE]."),
    ] = None,
    max_messages: Annotated[
        int | None, typer.Option(help="Default retention by count per channel.")
    ] = None,
    max_age: Annotated[
        float | None, typer.Option(help="Default retention by age in seconds per channel.")
    ] = None,
    max_message_bytes: Annotated[
        int | None, typer.Option(help="Largest message body accepted (413 above).")
    ] = None,
    long_poll_cap: Annotated[float | None, typer.Option(help="Longest wait= honoured, s.")] = None,
    subscriber_buffer: Annotated[
        int | None, typer.Option(help="Unsent bytes a stream may hold before it is cut.")
    ] = None,
    heartbeat: Annotated[float | None, typer.Option(help="Seconds between SSE heartbeats.")] = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    access_log: Annotated[bool, typer.Option(help="Log every request (slower).")] = False,
) -> None:
    """Serve the HTTP API (default: embedded SQLite on 127.0.0.1:8000)."""
    import uvicorn

    from tidings.app import create_app

    try:
        settings = Settings.from_env(
            host=host,
            port=port,
            store=store,
            max_messages=max_messages,
            max_age=max_age,
            max_message_bytes=max_message_bytes,
            long_poll_cap=long_poll_cap,
            subscriber_buffer=subscriber_buffer,
            heartbeat=heartbeat,
            log_level=log_level,
        )
        tidings_app = create_app(settings)
    except (ValueError, TypeError) as exc:
        err.print(f"[red]tidings serve:[/red] {exc}")
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    config = uvicorn.Config(
        tidings_app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="auto",
        lifespan="on",
        log_level=settings.log_level,
        access_log=access_log,
        timeout_graceful_shutdown=int(C.SHUTDOWN_GRACE),
        ws_max_size=settings.max_message_bytes + 4096,
        backlog=8192,
    )
    # Thousands of long-lived streams make each full collection walk every connection's
    # objects; collect young objects less often (see docs/decisions/0003-gc-thresholds.md).
    gc.set_threshold(*C.GC_THRESHOLDS)
    server = _server_class()(config)
    server.tidings = tidings_app
    server.run()
    if not server.started:
        raise typer.Exit(1)


@app.command()
def publish(
    channel: Annotated[str, typer.Argument(help="Channel name.")],
    data: Annotated[str, typer.Argument(help="Message text; - reads standard input.")],
    event: Annotated[str | None, typer.Option(help="Event name.")] = None,
    json_data: Annotated[
        bool, typer.Option("--json", help="DATA is JSON: publish the value, not the text.")
    ] = False,
    idempotency_key: Annotated[str | None, typer.Option(help="Dedup key.")] = None,
    url: UrlOption = "http://127.0.0.1:8000",
) -> None:
    """Publish one message and print its id."""
    from tidings.client import Client, ClientError

    text = sys.stdin.read() if data == "-" else data
    value: Any = text
    if json_data:
        try:
            import json

            value = json.loads(text)
        except ValueError as exc:
            err.print(f"[red]--json given but DATA is not JSON:[/red] {exc}")
            raise typer.Exit(2) from None
    try:
        with Client(url) as client:
            ack = client.publish(channel, value, event=event, idempotency_key=idempotency_key)
    except ClientError as exc:
        err.print(f"[red]publish failed:[/red] {exc}")
        raise typer.Exit(1) from None
    typer.echo(ack.id)


@app.command()
def subscribe(
    channel: Annotated[str, typer.Argument(help="Channel name.")],
    via: Annotated[str, typer.Option(help="sse, ws, longpoll or poll.")] = "sse",
    after: Annotated[
        str | None, typer.Option(help="Resume after this id (0: from the oldest kept).")
    ] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    url: UrlOption = "http://127.0.0.1:8000",
) -> None:
    """Print a channel's messages as JSON lines, resuming by itself; resets go to stderr."""
    from tidings.client import Client, ClientError

    if via not in ("sse", "ws", "longpoll", "poll"):
        err.print(f"[red]--via {via!r}:[/red] use sse, ws, longpoll or poll")
        raise typer.Exit(2)
    seen = 0
    try:
        with Client(url) as client:
            for item in client.subscribe(channel, via=via, after=after):  # type: ignore[arg-type]
                if isinstance(item, Reset):
                    err.print(f"[yellow]reset:[/yellow] {item.reason} (oldest kept: {item.first})")
                    continue
                sys.stdout.write(encode_json(item.to_wire()).decode() + "\n")
                sys.stdout.flush()
                seen += 1
                if count is not None and seen >= count:
                    return
    except ClientError as exc:
        err.print(f"[red]subscribe failed:[/red] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        return


def main() -> None:
    """Console entry point."""
    app()
