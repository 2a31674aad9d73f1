"""Channel resources: publish, short and long poll, stats, list, retention, delete.

Bodies and answers are JSON, or MessagePack by content negotiation (`Content-Type` /
`Accept: application/msgpack`; see tidings.server.http.common). The streaming transports (SSE,
WebSocket) are raw ASGI and live in tidings.server.transports.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.protocol.codecs import format_time
from tidings.protocol.errors import BadRequest, InvalidBody
from tidings.protocol.jobs import JOB_CHANNEL_PREFIX
from tidings.protocol.messages import Message
from tidings.server.channels import ChannelService, check_channel, check_event
from tidings.server.constants import DEFAULT_POLL_LIMIT, MAX_POLL_LIMIT
from tidings.server.http.common import (
    SENT,
    check_json_value,
    decode_body,
    is_msgpack,
    principal_of,
    query_float,
    query_int,
    read_body,
    require,
    require_admin,
    respond,
    unless_revoked,
    wants_msgpack,
)
from tidings.server.http.errors import negotiated
from tidings.server.http.protocol import whole_answer
from tidings.server.hub import DirectPoll
from tidings.server.jobs import JobService
from tidings.server.stores.base import ChannelInfo, ReadResult, Retention

__all__ = ["info_to_wire", "page_to_wire", "routes"]


class PublishBody(msgspec.Struct, forbid_unknown_fields=True):
    """`application/json` (or `application/msgpack`) publish body."""

    data: Any = msgspec.UNSET
    event: str | None = None


class RetentionBody(msgspec.Struct, forbid_unknown_fields=True):
    """`PUT /v1/channels/{c}` body: the channel's own retention, or null for the default."""

    retention: Retention | None


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def page_to_wire(res: ReadResult, after: str) -> dict[str, Any]:
    """A poll answer; `next` is the cursor to send next time."""
    if res.messages:
        nxt = res.messages[-1].id
    elif res.reset:
        nxt = res.last_id or "0"
    else:
        nxt = after
    return {"messages": [m.to_wire() for m in res.messages], "next": nxt, "reset": res.reset}


def _direct_poll(request: Request, after: str, limit: int) -> DirectPoll | None:
    """How the hub may write this long poll's answer itself (see DirectPoll); None when a
    login session could end the poll meanwhile, since its 401 must not follow an answer."""
    send = request.scope.get("tidings.send")
    if send is None or principal_of(request).session is not None:
        return None

    def build(msgs: list[Message]) -> Response:
        res = ReadResult(msgs, reset=False, first_id=None, last_id=msgs[-1].id)
        return respond(request, page_to_wire(res, after))

    key = "msgpack" if wants_msgpack(request.headers.get("accept")) else "json"
    return DirectPoll(after, limit, key, build, request.scope, send, whole_answer(send))


def info_to_wire(info: ChannelInfo, subscribers: dict[str, int]) -> dict[str, Any]:
    """A channel's stats as served."""
    return {
        "name": info.name,
        "first_id": info.first_id,
        "last_id": info.last_id,
        "messages": info.messages,
        "created": format_time(info.created),
        "retention": {
            "max_messages": info.retention.max_messages,
            "max_age": info.retention.max_age,
            "custom": info.custom_retention,
        },
        "subscribers": subscribers,
    }


def _svc(request: Request) -> ChannelService:
    svc: ChannelService = request.app.state.channels
    return svc


async def publish(request: Request) -> Response:
    svc = _svc(request)
    channel = check_channel(request.path_params["channel"])
    require(request, "publish", channel)
    # `?event=` names the event of any body; a JSON or MessagePack body's own wins.
    query_event = check_event(request.query_params.get("event"))
    body = await read_body(request, request.app.state.settings.max_message_bytes)
    content_type = request.headers.get("content-type", "")
    if is_msgpack(content_type):
        parsed = decode_body(PublishBody, body, content_type)
        if parsed.data is msgspec.UNSET:
            raise InvalidBody(
                'a MessagePack publish body is a map {"data": <any JSON-like value>, '
                '"event": "name"?}'
            )
        check_json_value(parsed.data)
        data, event = parsed.data, (query_event if parsed.event is None else parsed.event)
    elif _is_json(content_type):
        parsed = decode_body(PublishBody, body)
        if parsed.data is msgspec.UNSET:
            raise InvalidBody('a JSON publish body is {"data": <any JSON>, "event": "name"?}')
        data, event = parsed.data, (query_event if parsed.event is None else parsed.event)
    else:
        try:
            data = body.decode()
        except UnicodeDecodeError:
            raise BadRequest(
                "body is not UTF-8 text: send text, or JSON with Content-Type: application/json"
                " (or MessagePack with Content-Type: application/msgpack)"
            ) from None
        event = query_event
    ack = await svc.publish(channel, data, event, request.headers.get("idempotency-key"))
    return respond(request, ack.to_wire(), 201)


async def poll(request: Request) -> Response:
    svc = _svc(request)
    channel = check_channel(request.path_params["channel"])
    ended = False
    if channel.startswith(JOB_CHANNEL_PREFIX):
        # A job's channel lives as long as its job: 404 once the job is gone (as its
        # streams answer), and no waiting once it has ended, since nothing follows its
        # terminal event.
        jobs: JobService = request.app.state.jobs
        ended = (await jobs.get(channel[len(JOB_CHANNEL_PREFIX) :])).terminal
    await svc.check_subscribe(principal_of(request), channel)
    given = request.query_params.get("after")
    if given:
        svc.store.channels.cursor_key(given)  # InvalidCursor (400) for a malformed cursor
    limit = query_int(request, "limit", DEFAULT_POLL_LIMIT, 1, MAX_POLL_LIMIT)
    wait = query_float(request, "wait")
    # No cursor means "from now", as on every stream: the channel's newest id, so a short
    # poll answers nothing and that id as `next`, and a long poll waits for the next
    # message. `after=0` reads from the oldest kept.
    if given:
        after = given
    elif ended:
        # The store's newest id: the hub may not have seen the job's terminal event yet.
        after = (await svc.read(channel, "0", 0, fresh=True)).last_id or "0"
    else:
        after = await svc.last_id(channel)
    if ended:
        # From the store, which wrote the job's last event with its end: the hub may not
        # have seen that event yet, and this answer is not followed by a wait.
        res = await svc.read(channel, after, limit, fresh=True)
    elif wait:
        direct = _direct_poll(request, after, limit)
        res = await unless_revoked(request, svc.wait(channel, after, limit, wait, direct))
        if direct is not None and direct.answered:
            return SENT
    else:
        res = await svc.read(channel, after, limit)
    return respond(request, page_to_wire(res, after))


async def channel_info(request: Request) -> Response:
    svc = _svc(request)
    await svc.check_subscribe(principal_of(request), request.path_params["channel"])
    info = await svc.info(request.path_params["channel"])
    return respond(request, info_to_wire(info, svc.hub.subscribers(info.name)))


async def set_retention(request: Request) -> Response:
    svc = _svc(request)
    require_admin(request)
    body = await read_body(request, 64 * 1024)
    parsed = decode_body(RetentionBody, body, request.headers.get("content-type"))
    info = await svc.set_retention(request.path_params["channel"], parsed.retention)
    return respond(request, info_to_wire(info, svc.hub.subscribers(info.name)))


async def delete_channel(request: Request) -> Response:
    require_admin(request)
    await _svc(request).delete(request.path_params["channel"])
    return Response(status_code=204)


# Above the name of every job channel (names hold no character after '~'): a non-admin's
# listing, which never shows job channels, goes on from here past them.
_PAST_JOB_CHANNELS = JOB_CHANNEL_PREFIX + "~"


async def list_channels(request: Request) -> Response:
    """A page of channels by name; `?after=` is the `next` of the page before. A
    non-admin's page holds only the channels they may read, so it may be short: `next`
    null alone says it is the last."""
    svc = _svc(request)
    store = svc.store.channels
    prefix = request.query_params.get("prefix", "")
    after = request.query_params.get("after", "")
    limit = query_int(request, "limit", 1000, 1, 10_000)
    principal = principal_of(request)
    admin = principal.admin
    if not admin:
        if prefix.startswith(JOB_CHANNEL_PREFIX):
            return respond(request, {"channels": [], "next": None})
        if JOB_CHANNEL_PREFIX <= after < _PAST_JOB_CHANNELS:
            after = _PAST_JOB_CHANNELS
    # One channel past the page says whether another page follows.
    want = limit + 1
    if admin:
        infos = await store.list_channels(prefix, want, after)
    else:
        # No job channels (one per job: there may be many). Reads go on until the page is
        # full or the store has no more; a read that reaches the job channels goes on past
        # them all, so this takes at most two reads.
        infos = []
        while len(infos) < want:
            asked = want - len(infos)
            read = await store.list_channels(prefix, asked, after)
            infos += [i for i in read if not i.name.startswith(JOB_CHANNEL_PREFIX)]
            if len(read) < asked:
                break
            after = read[-1].name
            if after.startswith(JOB_CHANNEL_PREFIX):
                after = _PAST_JOB_CHANNELS
    nxt = infos[limit - 1].name if len(infos) > limit else None
    infos = infos[:limit]
    if not admin:  # only the channels this principal may read
        infos = [i for i in infos if principal.may("subscribe", i.name)]
    return respond(
        request,
        {"channels": [info_to_wire(i, svc.hub.subscribers(i.name)) for i in infos], "next": nxt},
    )


# The hot routes first: tidings.server.http.router tries a method's path patterns in this order.
routes = [
    Route("/v1/channels/{channel}/messages", negotiated(publish), methods=["POST"]),
    Route("/v1/channels/{channel}/messages", negotiated(poll), methods=["GET"]),
    Route("/v1/channels", negotiated(list_channels), methods=["GET"]),
    Route("/v1/channels/{channel}", negotiated(channel_info), methods=["GET"]),
    Route("/v1/channels/{channel}", negotiated(set_retention), methods=["PUT"]),
    Route("/v1/channels/{channel}", negotiated(delete_channel), methods=["DELETE"]),
]
