"""`tidings publish` and `tidings subscribe`: a channel's messages from the shell."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import msgspec
import typer

from tidings.cli.common import (
    DEFAULT_URL,
    TokenOption,
    UrlOption,
    connect,
    fail,
    print_json,
    warn,
)
from tidings.protocol.messages import Reset

__all__ = ["parse_data", "publish", "subscribe"]


def parse_data(text: str, *, as_json: bool, as_text: bool) -> Any:
    """What `tidings publish` sends for DATA: the JSON value it spells, else the text.

    `as_text` keeps the text whatever it spells; `as_json` refuses text that is not JSON.
    """
    if as_text:
        return text
    try:
        # Strict JSON: NaN or Infinity are text, as no JSON parser elsewhere reads them.
        return msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        if as_json:
            fail(
                "publish",
                f"--json given but DATA is not JSON ({exc}); drop --json to publish it as text",
                2,
            )
        return text


def publish(
    channel: Annotated[str, typer.Argument(help="Channel name.")],
    data: Annotated[
        str,
        typer.Argument(
            help="The message: JSON is published as its value, anything else as text; "
            "- reads standard input."
        ),
    ],
    event: Annotated[str | None, typer.Option(help="Event name. Default: none.")] = None,
    json_data: Annotated[
        bool,
        typer.Option("--json", help="DATA must be JSON: fail if it is not. Default: off."),
    ] = False,
    text: Annotated[
        bool,
        typer.Option("--text", help="Publish DATA as text even if it is JSON. Default: off."),
    ] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="Dedup key: publishing again with it returns the first id. Default: none."
        ),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Publish one message and print its id.

    DATA that parses as JSON is published as that JSON value: '{"a": 1}' an object, 42 a
    number, true a boolean, '"hi"' the string hi. Anything else, such as a bare word
    (hello) or a sentence, is published as text. --text always publishes the text as
    given; --json fails unless DATA is JSON.

    \b
    Examples:
      tidings publish news hello
      tidings publish news '{"title": "v2 is out"}' --event release
      tidings publish counters 42 --text        # the text "42", not the number
      echo '[1, 2, 3]' | tidings publish news -
    """
    if json_data and text:
        fail("publish", "--json and --text contradict each other: give one of them", 2)
    raw = sys.stdin.read() if data == "-" else data
    value = parse_data(raw, as_json=json_data, as_text=text)
    with connect("publish", url, token) as client:
        ack = client.publish(channel, value, event=event, idempotency_key=idempotency_key)
    typer.echo(ack.id)


def subscribe(
    channel: Annotated[str, typer.Argument(help="Channel name.")],
    via: Annotated[str, typer.Option(help="Transport: sse, ws, longpoll or poll.")] = "sse",
    after: Annotated[
        str | None,
        typer.Option(
            help="Resume after this id (0: from the oldest kept). Default: only messages "
            "published from now on."
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(min=1, help="Stop after this many messages. Default: run until Ctrl-C."),
    ] = None,
    url: UrlOption = DEFAULT_URL,
    token: TokenOption = None,
) -> None:
    """Print a channel's messages as JSON lines, resuming by itself; resets go to stderr.

    \b
    Examples:
      tidings subscribe news
      tidings subscribe news --after 0 --count 10 --via poll
      tidings subscribe news | jq -r .data
    """
    if via not in ("sse", "ws", "longpoll", "poll"):
        fail("subscribe", f"--via {via!r}: use sse, ws, longpoll or poll", 2)
    from tidings.sdk.common import TidingsHTTPError

    seen = 0
    try:
        with connect("subscribe", url, token) as client:
            # One plain request first: the subscription itself retries a server that does
            # not answer, forever and silently, which is right for a blip but not for a
            # wrong --url or a server never started.
            try:
                client.channel_info(channel)
            except TidingsHTTPError as exc:
                if exc.status != 404:  # a channel not yet published to is fine
                    raise
            for item in client.subscribe(channel, via=via, after=after):  # type: ignore[arg-type]
                if isinstance(item, Reset):
                    warn("subscribe", f"reset: {item.reason} (oldest kept: {item.first})")
                    continue
                print_json(msgspec.structs.asdict(item.to_wire()))
                seen += 1
                if count is not None and seen >= count:
                    return
    except KeyboardInterrupt:
        return
