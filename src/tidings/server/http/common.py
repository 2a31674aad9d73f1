"""What every handler needs: negotiated answers, query parsing, bounded body reading.

Content negotiation (JSON by default, MessagePack on request): `decode_body` reads a body
in the codec its `Content-Type` names, `respond` answers in the codec the `Accept` header
prefers (http/errors.py's `negotiated` makes a handler's own errors follow it too).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tidings.protocol.codecs import JSON_DECODER, encode_json
from tidings.protocol.errors import (
    BadRequest,
    Forbidden,
    InvalidBody,
    PayloadTooLarge,
    Unauthorized,
)
from tidings.server.constants import DEFAULT_MAX_DEPTH
from tidings.server.depth import decode_limited
from tidings.server.principals import ANONYMOUS, Principal

__all__ = [
    "MSGPACK",
    "SENT",
    "Body",
    "check_json_value",
    "decode_body",
    "is_msgpack",
    "json_response",
    "principal_of",
    "query_float",
    "query_int",
    "read_body",
    "require",
    "require_admin",
    "respond",
    "unless_disconnected",
    "unless_revoked",
    "wants_msgpack",
]

T = TypeVar("T")

MSGPACK = "application/msgpack"
_MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack"})
encode_msgpack = msgspec.msgpack.Encoder().encode
_MSGPACK_DECODERS: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
_JSON_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


class Body(bytes):
    """A request body as `read_body` returns it: its bytes, and the nesting limit of the
    server that read it (`decode_body` applies it; plain bytes get the default)."""

    max_depth: int = DEFAULT_MAX_DEPTH


class _Sent(Response):
    """What a handler returns when its answer is already on the wire (a long poll the hub
    answered): a 200 for the metrics, and nothing more to send."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        return None


SENT = _Sent()


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer encoded by msgspec."""
    return Response(encode_json(obj), status, headers, media_type="application/json")


def principal_of(request: Request) -> Principal:
    """Who this request acts as (the dispatcher sets it before the handler runs).

    A request that reached a handler without one (not through tidings.server.dispatch) is
    anonymous — and refused when the server requires authentication.
    """
    principal: Principal | None = request.scope.get("tidings.principal")
    if principal is None:
        if request.app.state.auth.required:
            raise Unauthorized("this server requires authentication")
        return ANONYMOUS
    return principal


def require(request: Request, action: str, target: str) -> Principal:
    """The request's principal, or Forbidden unless it may `action` `target`."""
    principal = principal_of(request)
    if not principal.may(action, target):
        raise Forbidden(f"{principal.name} may not {action} {target!r}: ask for a grant")
    return principal


def require_admin(request: Request) -> Principal:
    """The request's principal, or Forbidden unless it is an admin."""
    principal = principal_of(request)
    if not principal.admin:
        raise Forbidden(f"{principal.name} is not an admin: this needs an admin")
    return principal


def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def is_msgpack(content_type: str) -> bool:
    """True when a Content-Type names MessagePack (`application/msgpack` or `x-msgpack`)."""
    return _media(content_type) in _MSGPACK_TYPES


def wants_msgpack(accept: str | None) -> bool:
    """True when an Accept header prefers MessagePack to JSON.

    MessagePack must be named (`application/msgpack` or `application/x-msgpack`) with q > 0,
    and JSON, by its most specific match (`application/json`, else `application/*`, else
    `*/*`), must not have a higher q. A tie goes to MessagePack: naming it is asking for it.
    """
    if not accept or "msgpack" not in accept:
        return False
    mp_q = 0.0
    json_q: dict[str, float] = {}
    for part in accept.split(","):
        media, *params = part.split(";")
        media = media.strip().lower()
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:  # also NaN
                    q = 0.0
        if media in _MSGPACK_TYPES:
            mp_q = max(mp_q, q)
        elif media in ("application/json", "application/*", "*/*"):
            json_q[media] = max(json_q.get(media, 0.0), q)
    if mp_q <= 0.0:
        return False
    for media in ("application/json", "application/*", "*/*"):
        if media in json_q:
            return json_q[media] <= mp_q
    return True


def respond(
    request: Request, obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """`obj` in the codec the request's Accept prefers: JSON, or MessagePack when asked.

    Carries `Vary: Accept` either way, since the same URL answers in two codecs. What
    MessagePack cannot carry (a JSON integer beyond 64 bits in a message) is answered in
    JSON instead, as RFC 9110 §12.1 allows, rather than failing every such read.
    """
    extra = {"Vary": "Accept", **(headers or {})}
    if wants_msgpack(request.headers.get("accept")):
        try:
            return Response(encode_msgpack(obj), status, extra, media_type=MSGPACK)
        except OverflowError:
            pass
    return Response(encode_json(obj), status, extra, media_type="application/json")


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high], or BadRequest saying so."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, got {value}")
    return value


def query_float(request: Request, name: str) -> float | None:
    """A non-negative number query parameter, or None when absent."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise BadRequest(f"{name} must be a finite number of seconds >= 0, got {raw!r}")
    return value


async def read_body(request: Request, limit: int) -> Body:
    """The request body, refused with 413 as soon as it exceeds `limit` bytes.

    A declared Content-Length over the limit is refused before any byte is read; a
    chunked body is read only up to the limit.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest(f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise PayloadTooLarge(
                f"body of {size} bytes is over the {limit}-byte limit: send smaller messages"
                " or raise --max-message-bytes"
            )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(
                f"body is over the {limit}-byte limit: send smaller messages"
                " or raise --max-message-bytes"
            )
        chunks.append(chunk)
    body = Body(b"".join(chunks))
    body.max_depth = request.app.state.settings.max_depth
    return body


def decode_body(kind: type[Any], body: bytes, content_type: str | None = None) -> Any:
    """Decode a body into `kind`: 400 when it is malformed or nested too deep (over the
    `max_depth` a `Body` carries), 422 when it does not fit.

    MessagePack when `content_type` names it, JSON otherwise (also when it is absent).
    """
    limit = body.max_depth if isinstance(body, Body) else DEFAULT_MAX_DEPTH
    if content_type is not None and is_msgpack(content_type):
        decoder = _MSGPACK_DECODERS.get(kind)
        if decoder is None:
            decoder = _MSGPACK_DECODERS[kind] = msgspec.msgpack.Decoder(kind)
        try:
            return decode_limited(decoder.decode, body, limit, msgpack=True)
        except msgspec.ValidationError as exc:
            raise InvalidBody(f"body does not fit: {exc}") from None
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # a str that is not UTF-8
            raise BadRequest(f"body is not valid MessagePack: {exc}") from None
    json_decoder = _JSON_DECODERS.get(kind)
    if json_decoder is None:
        json_decoder = _JSON_DECODERS[kind] = msgspec.json.Decoder(kind)
    try:
        return decode_limited(json_decoder.decode, body, limit)
    except msgspec.ValidationError as exc:
        if _FLOAT_FOR_INT.search(str(exc)):
            return _with_whole_floats_as_ints(kind, body, str(exc), limit)
        raise InvalidBody(f"body does not fit: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON (UTF-8): {exc}") from None


# msgspec's word for a float where an integer (or an optional one) was expected.
_FLOAT_FOR_INT = re.compile(r"Expected `int(?: \| null)?`, got `float` - at `\$")
_PATH_STEP = re.compile(r"\.([^.\[`]+)|\[(\d+)\]")


def _with_whole_floats_as_ints(kind: type[Any], body: bytes, error: str, limit: int) -> Any:
    """`body` as `kind` when its only misfits are whole numbers spelled as floats where
    `kind` wants integers (JSON has one number type: `2.0` is the integer 2); else 422.

    Only the fields msgspec names are changed, so a float elsewhere (a message's data)
    stays as sent. Runs only after a strict decode failed: the common path pays nothing.
    """
    value = decode_limited(JSON_DECODER.decode, body, limit)
    for _ in range(32):  # one field per round; a body with more misfits is refused
        holder, key = None, None
        node = value
        path = error.partition(" - at `$")[2].rstrip("`")
        for name, index in _PATH_STEP.findall(path):
            holder, key = node, (int(index) if index else name)
            try:
                node = holder[key]
            except (KeyError, IndexError, TypeError):
                break
        if holder is None or not (isinstance(node, float) and node.is_integer()):
            break
        holder[key] = int(node)
        try:
            return msgspec.convert(value, kind)
        except msgspec.ValidationError as exc:
            error = str(exc)
            if not _FLOAT_FOR_INT.search(error):
                break
    raise InvalidBody(f"body does not fit: {error}")


def check_json_value(value: Any, where: str = "data") -> None:
    """InvalidBody unless `value` (decoded from MessagePack) is also a JSON value.

    Messages are stored and streamed (SSE, WebSocket) as JSON, so what MessagePack can say
    and JSON cannot is refused rather than silently changed: `bin` (bytes), ext types,
    map keys that are not strings, NaN and infinities. Iterative: no depth exhausts the
    stack (`decode_body` has already refused values nested too deep).
    """
    # (value, where its container is, its index or key there): a path is built only
    # for a container or an error, not for every scalar.
    todo: list[tuple[Any, str, int | str | None]] = [(value, where, None)]
    while todo:
        value, base, key = todo.pop()
        if value is None or isinstance(value, (str, bool, int)):
            continue
        where = (
            base if key is None else f"{base}[{key}]" if isinstance(key, int) else f"{base}.{key}"
        )
        if isinstance(value, float):
            if not math.isfinite(value):
                raise InvalidBody(
                    f"{where} is {value}: JSON has no NaN or infinity; send null or a string"
                )
            continue
        if isinstance(value, list):
            todo.extend((item, where, i) for i, item in enumerate(value))
            continue
        if isinstance(value, dict):
            for k, item in value.items():
                if not isinstance(k, str):
                    raise InvalidBody(
                        f"{where} has a map key {k!r} that is not a string: JSON keys are strings"
                    )
                todo.append((item, where, k))
            continue
        if isinstance(value, (bytes, bytearray, memoryview)):
            raise InvalidBody(
                f"{where} is MessagePack bin ({len(value)} bytes): messages are JSON values, "
                "so send text as str (e.g. base64 for binary)"
            )
        raise InvalidBody(
            f"{where} is a MessagePack {type(value).__name__}, which JSON cannot carry"
        )


async def unless_revoked(request: Request, work: Awaitable[T]) -> T:
    """Run `work` (a long poll) but answer 401 if the request's session ends meanwhile."""
    session = principal_of(request).session
    if session is None:
        return await work
    hub = request.app.state.channels.hub
    ended = hub.session_poll(session)
    job = asyncio.ensure_future(work)
    try:
        await asyncio.wait((job, ended), return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.drop_session_poll(session, ended)
    if job.done():
        return job.result()
    job.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await job
    raise Unauthorized("session revoked or expired while waiting: log in again")


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work` (a long poll) but cancel it if the client goes away first; None then.

    Call only after the body was read: the next ASGI message is then the disconnect.
    """
    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait((job, watcher), return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        job.cancel()  # cancelled itself (e.g. its session was revoked): so is the work
        with contextlib.suppress(asyncio.CancelledError):
            await job
        raise
    finally:
        watcher.cancel()
    if job.done():
        return job.result()
    job.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await job
    return None
