"""Turning a stream request into a stream: check it, then hand it to its transport.

The streams are `GET /v1/channels/{c}/events` and `GET /v1/jobs/{id}/events` (SSE),
`GET /v1/events?channel=a&channel=b` (one SSE stream over several channels) and the
WebSockets `/v1/channels/{c}/ws` and `/v1/jobs/{id}/ws`. The dispatcher hands them here
with the server's own `send`, so the hub's fan-out writes through no middleware wrapper.

A single channel's or job's SSE stream sends each message's data as itself by default
(text as text, any other JSON value as its JSON: what a plain EventSource shows);
`?format=json` makes each event's data the whole message as JSON, typed and timed, as
WebSocket frames and multiplexed streams carry it (docs/decisions/0019).

A stream resumes from the `Last-Event-ID` header (what an EventSource sends when it
reconnects) or, failing that, the `after` query parameter; an `after` that is malformed
is refused even when `Last-Event-ID` wins. The parsing is pure (`stream_query`,
`multiplexed_channels`, `multiplexed_positions`); `Streams` adds the checks that need the
principal, the store and the services.
"""

from __future__ import annotations

import re
from collections.abc import Coroutine
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

from tidings.protocol.cursors import decode_composite_cursor
from tidings.protocol.errors import BadRequest, Forbidden, InvalidCursor, StoreError, TidingsError
from tidings.protocol.jobs import TERMINAL_STATUSES, job_channel
from tidings.server.auth import AuthService
from tidings.server.channels import ChannelService, check_channel
from tidings.server.http.errors import close_code, close_socket, send_error
from tidings.server.jobs import JobService
from tidings.server.lifecycle import OpenStreams
from tidings.server.policy import AccessPolicy
from tidings.server.settings import Settings
from tidings.server.stores.base import Store
from tidings.server.transports.sse import serve_sse
from tidings.server.transports.stream import end_at_once
from tidings.server.transports.websocket import serve_ws

__all__ = [
    "STREAM_PATH",
    "StreamQuery",
    "Streams",
    "multiplexed_channels",
    "multiplexed_positions",
    "stream_query",
    "whole_messages",
]

# A stream of one channel or one job: (channels|jobs, the name or id, events|ws).
STREAM_PATH = re.compile(r"/v1/(channels|jobs)/([^/]+)/(events|ws)")


class StreamQuery(NamedTuple):
    """What a stream request's query string and headers ask for."""

    query: list[tuple[str, str]]  # the query string's parameters, in order
    cursor: str | None  # where to resume: Last-Event-ID, else `after`; None: from now
    after: str | None  # the `after` parameter, checked even when Last-Event-ID wins


def stream_query(scope: Scope) -> StreamQuery:
    """The query parameters and the resume point of a stream request."""
    query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
    last_event_id = None
    for name, value in scope["headers"]:
        if name == b"last-event-id":
            last_event_id = value.decode("latin-1").strip() or None
    after = next((v for k, v in query if k == "after"), None) or None
    return StreamQuery(query, last_event_id or after, after)


FORMATS = ("text", "json")


def whole_messages(query: list[tuple[str, str]]) -> bool:
    """Whether an SSE stream's events carry whole messages as JSON (`format=json`);
    BadRequest for a format that is neither."""
    given = next((v for k, v in query if k == "format"), "text")
    if given not in FORMATS:
        raise BadRequest(
            f"format is {given!r}: use format=text (each event's data as itself, the "
            "default) or format=json (each event's data the whole message as JSON)"
        )
    return given == "json"


def multiplexed_channels(query: list[tuple[str, str]], cap: int) -> list[str]:
    """The channels a multiplexed stream names (`channel=` parameters), each once in the
    order it first appears: the stream's cursor holds a position per channel of this list.

    BadRequest when none is named, one is not a valid name, or more than `cap` are.
    """
    names = list(dict.fromkeys(check_channel(v) for k, v in query if k == "channel"))
    if not names:
        raise BadRequest("name the channels: /v1/events?channel=a&channel=b")
    if len(names) > cap:
        raise BadRequest(
            f"a stream follows at most {cap} channels and this one names "
            f"{len(names)}: open several streams, or raise the limit with "
            "--max-stream-channels (TIDINGS_MAX_STREAM_CHANNELS)"
        )
    return names


def multiplexed_positions(
    cursor: str | None, after: str | None, names: list[str]
) -> dict[str, str]:
    """Each channel's position in a multiplexed stream's cursor ({} when it has none).

    InvalidCursor when `cursor`, or `after` even if another cursor is used, is not a
    composite cursor of `names`.
    """
    try:
        positions = decode_composite_cursor(cursor, names) if cursor else {}
        if after is not None and cursor is not after:
            decode_composite_cursor(after, names)  # refused even when not used
    except ValueError as exc:
        raise InvalidCursor(str(exc)) from None
    return positions


class Streams:
    """Opens and serves the streams of one server.

    Args:
        settings: the stream limits (buffer, message size, nesting, channels per stream).
        store: the store, whose order of ids checks and compares cursors.
        channels: the channel service (subscribe checks, reads, the hub).
        jobs: the job service (a job's stream follows its channel).
        auth: who a request acts as.
        policy: the host/origin gate.
        open_streams: the count shutdown waits on.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        channels: ChannelService,
        jobs: JobService,
        auth: AuthService,
        policy: AccessPolicy,
        open_streams: OpenStreams,
    ) -> None:
        self.settings = settings
        self.channels = channels
        self.jobs = jobs
        self.auth = auth
        self.policy = policy
        self.open_streams = open_streams
        self.cursor_key = store.channels.cursor_key

    async def serve(
        self, scope: Scope, receive: Receive, send: Send, channel: str | None, job: bool
    ) -> None:
        """Serve one stream until it ends: a multiplexed one (`channel` None), a channel's,
        or (`job`) a job's, whose id `channel` is. A stream refused before it starts is
        answered with its error: JSON, or a socket accepted and then closed."""
        websocket = scope["type"] == "websocket"
        if websocket and (await receive())["type"] != "websocket.connect":
            return
        self.open_streams.opened()
        try:
            # Validate and build the stream first, then serve it from this frame: the
            # frames that built it are gone while it lives (memory per idle stream).
            stream = await self._open(scope, receive, send, channel, job, websocket)
            if websocket:
                # Checked: nothing reads the request's headers again, and the server keeps
                # the scope for the socket's life (~0.85 KB of headers per idle socket).
                scope["headers"] = ()
            await stream
        except TidingsError as exc:
            if websocket:
                await close_socket(send, close_code(exc), exc.message)
            else:
                await send_error(send, exc)
        finally:
            self.open_streams.closed()

    async def _open(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        channel: str | None,
        job: bool,
        websocket: bool,
    ) -> Coroutine[Any, Any, None]:
        """Check a stream request; the coroutine that serves it, or a TidingsError."""
        settings = self.settings
        channels = self.channels
        if channels.hub.closing:
            raise StoreError("server is shutting down: reconnect to another node or retry")
        principal = await self.auth.principal(scope["headers"])
        self.policy.admit(scope, principal)
        session = principal.session
        query, cursor, after = stream_query(scope)
        whole = websocket or whole_messages(query)
        if channel is None:
            names = multiplexed_channels(query, settings.max_stream_channels)
            positions = multiplexed_positions(cursor, after, names)
            for pos in positions.values():
                self.cursor_key(pos)
            for name in names:
                await channels.check_subscribe(principal, name)
            requested = {n: positions.get(n) for n in names}
            return serve_sse(
                channels, send, receive, requested, True, settings.subscriber_buffer, None, session
            )
        until: frozenset[str] | None = None
        if job:
            # A job's stream: from its first event unless resumed, ending after its last.
            found = await self.jobs.get(channel)
            if not principal.may_follow_job(found.submitted_by, found.type):
                raise Forbidden(f"job {found.id} is not yours to follow")
            channel, until = job_channel(channel), TERMINAL_STATUSES
            cursor = cursor or "0"
            if found.terminal:
                # Resumed at or past the terminal event (an EventSource reconnects by itself
                # after `close`), or nothing left to replay: nothing will follow, so say so
                # instead of pinging forever. The last id comes from the store, read after
                # the job: the job and its event are written together, so it is at least
                # the terminal event's (the hub may not have seen it yet); had the job been
                # retried since, it is past the cursor, and the stream replays the rest.
                last = (await channels.read(channel, "0", 0, fresh=True)).last_id or "0"
                if self.cursor_key(cursor) >= self.cursor_key(last):
                    reason = f"job {found.id} {found.status}: the stream is complete"
                    return end_at_once(send, websocket, reason)
        else:
            check_channel(channel)
            await channels.check_subscribe(principal, channel)
        for given in (cursor, after):  # `after` is refused when bad even beside Last-Event-ID
            if given is not None:
                self.cursor_key(given)
        if websocket:
            return serve_ws(
                channels,
                send,
                receive,
                channel,
                cursor,
                settings.subscriber_buffer,
                settings.max_message_bytes,
                until,
                session,
                principal.may("publish", channel),
                settings.max_depth,
            )
        return serve_sse(
            channels,
            send,
            receive,
            {channel: cursor},
            False,
            settings.subscriber_buffer,
            until,
            session,
            whole,
        )
