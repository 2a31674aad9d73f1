"""Errors as answers: the one place an error becomes what a client receives.

* A `TidingsError` from a request/response endpoint: a JSON response with its status,
  its `Retry-After` when it has one, and `{"error": {"code", "message"}}`
  (`error_response`); in the negotiated codec for the endpoints that speak MessagePack
  too (`negotiated`).
* Anything else an endpoint raises: 500 `internal_error`, logged (`unexpected_response`).
* A path the API does not serve (Starlette's 404) or a method a path does not serve
  (405, 426 on a WebSocket path asked with a plain GET, 204 for OPTIONS).
* A stream refused before it started: the same JSON error written as raw ASGI
  (`send_error`), or a WebSocket accepted and then closed with the error's code and
  message (`close_socket`): a refused handshake would only say 403.
* A WebSocket frame the server cannot act on: an error frame (`error_frame`).
* A request over a connection limit, answered by the HTTP protocol before any app runs:
  a whole HTTP/1.1 answer as bytes (`error_answer`).
* A JSON-RPC call that fails: a JSON-RPC error object (`rpc_error`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Send

from tidings.protocol.codecs import encode_json
from tidings.protocol.errors import TidingsError
from tidings.server.http.common import json_response, respond

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_NORMAL",
    "CLOSE_POLICY",
    "CLOSE_REASON_MAX",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "JOB_CANCELLED",
    "JOB_FAILED",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "TIMED_OUT",
    "close_code",
    "close_socket",
    "error_answer",
    "error_body",
    "error_frame",
    "error_response",
    "exception_handlers",
    "negotiated",
    "not_found_message",
    "rpc_error",
    "send_error",
    "starlette_error_response",
    "unexpected_response",
    "unserved_method",
]

log = logging.getLogger("tidings")

# WebSocket close codes (RFC 6455 §7.4.1).
CLOSE_NORMAL = 1000  # the stream is complete (a job's socket after its last event)
CLOSE_GOING_AWAY = 1001  # the server ends the stream: shutdown, a revoked session, a cut
CLOSE_POLICY = 1008  # refused for what the client asked or did (a 4xx error, a flood)
CLOSE_INTERNAL = 1011  # refused because the server cannot serve it now (a 5xx error)
# Characters of a close reason kept: a close frame's reason is at most 123 bytes.
CLOSE_REASON_MAX = 120

# JSON-RPC 2.0 error codes: the protocol's own, then tidings' (-32000 to -32099).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
JOB_FAILED = -32000
JOB_CANCELLED = -32001
TIMED_OUT = -32002

# What a client is told of an error the server did not expect (the log has the rest).
INTERNAL_ERROR = "unexpected server error; see the server log"


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON error body for an error that is no TidingsError."""
    return {"error": {"code": code, "message": message}}


# -- request/response endpoints -----------------------------------------------------------


def error_response(exc: TidingsError) -> Response:
    """A TidingsError as a JSON response: its status, `Retry-After` if any, its body."""
    return json_response(exc.to_wire(), exc.status, exc.headers)


def negotiated(
    handler: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler so the errors it raises are answered in the negotiated codec
    (JSON, or MessagePack when the request's Accept prefers it)."""

    @functools.wraps(handler)
    async def wrapper(request: Request) -> Response:
        try:
            return await handler(request)
        except TidingsError as exc:
            return respond(request, exc.to_wire(), exc.status, exc.headers)

    return wrapper


def unexpected_response(method: str, path: str, exc: BaseException) -> Response:
    """500 for an exception no handler expected; logs it with its traceback."""
    log.error("unexpected error on %s %s", method, path, exc_info=exc)
    return json_response(error_body("internal_error", INTERNAL_ERROR), 500)


def not_found_message(path: str) -> str:
    """What a 404 says: the path has no endpoint."""
    return f"no endpoint {path}: see /openapi.json for the API"


def starlette_error_response(
    status: int,
    detail: str,
    headers: Mapping[str, str] | None,
    method: str,
    path: str,
    allow: str | None,
) -> Response:
    """Starlette's HTTPException (404 for an unknown path, 405) as a JSON error.

    `allow` (the path's whole `Allow`, when the path is known) replaces the one Starlette
    gives a 405, which names one route's methods only.
    """
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
    message = detail
    if status == 404:
        message = not_found_message(path)
    elif status == 405:
        if allow is not None:
            headers = {**(headers or {}), "allow": allow}
        message = f"{method} is not allowed on {path}"
    return json_response(error_body(code, message), status, headers)


def exception_handlers(
    allow_of: Callable[[str], str | None],
) -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    """Starlette's exception handlers, for what reaches Starlette (404s, and whatever it
    raises itself): TidingsError, HTTPException and any other exception, answered as
    above. `allow_of(path)` is the `Allow` a known path's 405 carries."""

    async def tidings_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TidingsError)  # noqa: S101 - registered for TidingsError only
        return error_response(exc)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # noqa: S101 - registered for HTTPException only
        path = request.url.path
        allow = allow_of(path) if exc.status_code == 405 else None
        return starlette_error_response(
            exc.status_code, exc.detail, exc.headers, request.method, path, allow
        )

    async def unexpected(request: Request, exc: Exception) -> Response:
        return unexpected_response(request.method, request.url.path, exc)

    return {TidingsError: tidings_error, HTTPException: http_error, Exception: unexpected}


def unserved_method(
    method: str, path: str, allow: str, websocket: bool
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """(status, headers, body) for a known path asked with a method no endpoint serves.

    OPTIONS: 204 with the path's `Allow` (a CORS preflight never gets here: the CORS
    layer answers it). A GET without the upgrade on a WebSocket path: 426 naming the
    upgrade (RFC 9110 §15.5.22). Anything else: 405 with the same `Allow` (§15.5.6).
    """
    headers = [(b"allow", allow.encode())]
    if method == "OPTIONS":
        return 204, headers, b""
    if websocket and method == "GET":
        status, code = 426, "upgrade_required"
        message = f"{path} is a WebSocket: connect with a WebSocket client"
        headers += [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
    else:
        status, code = 405, "method_not_allowed"
        message = f"{method} is not allowed on {path}: use {allow}"
    body = encode_json(error_body(code, message))
    headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    return status, headers, body


# -- streams (raw ASGI) -------------------------------------------------------------------


async def send_error(send: Send, exc: TidingsError) -> None:
    """Answer a refused SSE stream with the error, as `error_response` would."""
    body = encode_json(exc.to_wire())
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *((k.encode(), v.encode()) for k, v in (exc.headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def close_code(exc: TidingsError) -> int:
    """The close code of a socket refused with `exc`: 1011 for a server-side (5xx)
    error, which a client may retry; 1008 for anything the client asked."""
    return CLOSE_INTERNAL if exc.status >= 500 else CLOSE_POLICY


async def close_socket(send: Send, code: int, reason: str) -> None:
    """Accept a WebSocket (its connect already received) and close it at once with
    `code` and `reason`. A refused stream is answered so rather than by refusing the
    handshake: a browser sees neither the status nor the body of a refused handshake,
    but it does see a close frame's reason."""
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": code, "reason": reason[:CLOSE_REASON_MAX]})


def error_frame(ref: Any, exc: TidingsError) -> dict[str, Any]:
    """A WebSocket error frame answering the client frame `ref` named."""
    return {"type": "error", "ref": ref, **exc.to_wire()}


# -- connection limits (raw HTTP/1.1) -----------------------------------------------------


def error_answer(
    status: int, phrase: str, code: str, message: str, retry_after: int | None = None
) -> bytes:
    """A complete `Connection: close` HTTP/1.1 answer with a JSON error body; with
    `retry_after`, a `Retry-After` header and the same number in the body."""
    error: dict[str, Any] = {"code": code, "message": message}
    if retry_after is not None:
        error["retry_after"] = retry_after
    body = encode_json({"error": error})
    head = [
        f"HTTP/1.1 {status} {phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after is not None:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


# -- JSON-RPC -----------------------------------------------------------------------------


def rpc_error(id_: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC 2.0 error response object (`data` left out when None)."""
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": id_}
