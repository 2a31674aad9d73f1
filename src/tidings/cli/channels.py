"""`tidings channels …`: list channels, show one, set its retention, delete it."""

from __future__ import annotations

import sys
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

__all__ = ["channels_app"]

channels_app = typer.Typer(
    name="channels",
    help="Channels: their history, retention and subscribers.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

ChannelArg = Annotated[str, typer.Argument(metavar="CHANNEL", help="Channel name.")]


def _channel_obj(info: Any) -> dict[str, Any]:
    """A ChannelInfo as the server's JSON object (`created` in RFC 3339)."""
    import msgspec

    from tidings.protocol.codecs import format_time

    obj: dict[str, Any] = msgspec.to_builtins(info)
    if info.created is not None:
        obj["created"] = format_time(info.created)
    return obj


def _duration(seconds: float) -> str:
    """Seconds as the largest whole unit that divides them: 86400 is 1d, 90 is 90s."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _retention_text(info: Any) -> str:
    r = info.retention
    if r is None:
        return ""
    own = " (own)" if r.custom else ""
    return f"{r.max_messages} messages, {_duration(r.max_age)}{own}"


@channels_app.command(
    "list",
    epilog="""\b
Examples:
  tidings channels list
  tidings channels list --prefix orders. --json | jq -r '.[].name'""",
)
def channels_list(
    prefix: Annotated[
        str, typer.Option(help="Only channels whose name starts with this. Default: all.")
    ] = "",
    limit: Annotated[
        int | None,
        typer.Option(min=1, max=10_000, help="At most this many. Default: the server's (1000)."),
    ] = None,
    json_out: JsonOption = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """List the channels you may read, by name, as a table (times in UTC) or as JSON.

    A retention marked (own) is the channel's, set with `tidings channels retention`;
    the others follow the server's default.
    """
    from rich.table import Table

    with connect("channels list", url, token) as client:
        channels = client.list_channels(prefix=prefix, limit=limit)
    if json_out:
        print_json([_channel_obj(c) for c in channels])
        return
    table = Table("name", "messages", "first", "last", "created", "retention")
    for c in channels:
        table.add_row(
            c.name,
            str(c.messages),
            c.first_id or "",
            c.last_id or "",
            table_time(c.created),
            _retention_text(c),
        )
    print_table(table)


@channels_app.command(
    "get",
    epilog="""\b
Examples:
  tidings channels get news
  tidings channels get news | jq .subscribers""",
)
def channels_get(
    channel: ChannelArg, url: UrlOption = DEFAULT_URL, token: TokenOption = None
) -> None:
    """Print a channel as JSON: ids, message count, creation, retention, subscribers."""
    with connect("channels get", url, token) as client:
        info = client.channel_info(channel)
    print_json(_channel_obj(info))


@channels_app.command(
    "retention",
    epilog="""\b
Examples:
  tidings channels retention news --max-messages 500 --max-age 86400
  tidings channels retention news --max-age 3600     # keeps its message cap
  tidings channels retention news --default""",
)
def channels_retention(
    channel: ChannelArg,
    max_messages: Annotated[
        int | None,
        typer.Option(min=1, help="Keep at most this many messages. Default: unchanged."),
    ] = None,
    max_age: Annotated[
        float | None,
        typer.Option(
            min=0.001, help="Keep no message older than this many seconds. Default: unchanged."
        ),
    ] = None,
    default: Annotated[
        bool,
        typer.Option("--default", help="Return to the server's retention. Default: off."),
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Set how much history a channel keeps (admin), and print what it keeps now.

    Give --max-messages, --max-age or both: what is not given stays as it is. --default
    returns the channel to the server's retention (the --max-messages and --max-age
    of `tidings serve`).
    """
    if default and (max_messages is not None or max_age is not None):
        fail("channels retention", "--default drops the channel's own limits: give it alone", 2)
    if not default and max_messages is None and max_age is None:
        fail("channels retention", "give --max-messages, --max-age, or --default", 2)
    with connect("channels retention", url, token) as client:
        if default:
            info = client.set_retention(channel)
        else:
            if max_messages is None or max_age is None:
                now = client.channel_info(channel).retention
                if now is None:
                    fail(
                        "channels retention",
                        "the server did not say the channel's retention: give both "
                        "--max-messages and --max-age",
                        2,
                    )
                max_messages = now.max_messages if max_messages is None else max_messages
                max_age = now.max_age if max_age is None else max_age
            info = client.set_retention(channel, max_messages=max_messages, max_age=max_age)
    typer.echo(f"{info.name}: keeps {_retention_text(info)}")


@channels_app.command(
    "delete",
    epilog="""\b
Examples:
  tidings channels delete news
  tidings channels delete news --yes     # no question (scripts)""",
)
def channels_delete(
    channel: ChannelArg,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask for confirmation. Default: ask.")
    ] = False,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Delete a channel (admin): its history goes and its open streams end."""
    if not yes:
        if not sys.stdin.isatty():
            fail(
                "channels delete",
                f"not deleting {channel!r} without confirmation: pass --yes (no terminal "
                "to ask on)",
                2,
            )
        if not typer.confirm(f"Delete channel {channel!r} and all its messages?"):
            fail("channels delete", "not deleted", 1)
    with connect("channels delete", url, token) as client:
        client.delete_channel(channel)
    typer.echo(f"deleted {channel}")
