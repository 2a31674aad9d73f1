"""What every handler needs: JSON answers, query parsing, bounded body reading."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Mapping
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tidings.errors import BadRequest, InvalidBody, PayloadTooLarge
from tidings.wire import encode_json

__all__ = [
    "decode_body",
    "json_response",
    "query_float",
    "query_int",
    "read_body",
    "unless_disconnected",
]

T = TypeVar("T")


def json_response(
    obj: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON answer encoded by msgspec."""
    return Response(encode_json(obj), status, headers, media_type="application/json")


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


async def read_body(request: Request, limit: int) -> bytes:
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
    return b"".join(chunks)


def decode_body(kind: type[Any], body: bytes) -> Any:
    """Decode a JSON body into `kind`: 400 when it is not JSON, 422 when it does not fit."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidBody(f"body does not fit: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON (UTF-8): {exc}") from None


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work` (a long poll) but cancel it if the client goes away first; None then.

    Call only after the body was read: the next ASGI message is then the disconnect.
    """
    job = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(request.receive())
    try:
        await asyncio.wait((job, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if job.done():
        return job.result()
    job.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await job
    return None
