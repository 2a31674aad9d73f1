"""The exception tree, and how each maps to an HTTP answer.

    TidingsError                 (500 internal_error)
    ├── BadRequest               (400 bad_request)
    │   ├── InvalidChannel       (400 invalid_channel)
    │   ├── InvalidCursor        (400 invalid_cursor)
    │   ├── NestedTooDeep        (400 nested_too_deep; tidings.server.depth)
    │   └── InvalidBody          (422 invalid_body)
    ├── Unauthorized             (401 unauthorized)
    ├── Forbidden                (403 forbidden)
    ├── NotFound                 (404 not_found)
    ├── Conflict                 (409 conflict)
    ├── PayloadTooLarge          (413 payload_too_large)
    ├── UnsupportedMediaType     (415 unsupported_media_type)
    ├── TooManyLogins            (429 too_many_requests; tidings.server.ratelimit)
    │   └── LoginBusy            (503 login_busy)
    ├── AssetsMissing            (503 assets_missing: the /docs page's files are not built)
    └── StoreError               (503 store_unavailable)
        ├── StoreClosed          (503 store_closed)
        └── StoreLocked          (503 store_locked, also an OSError; stores/lockfile.py)

Every error carries a message that says what to do; handlers render it as `ErrorBody`,
`{"error": {"code", "message"}}`, plus `retry_after` (and a `Retry-After` header) when
the error says when to come back. `ErrorCode` names every code the server sends, for
clients that match on them.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import msgspec
from msgspec import UNSET, UnsetType

__all__ = [
    "AssetsMissing",
    "BadRequest",
    "Conflict",
    "ErrorBody",
    "ErrorCode",
    "ErrorDetail",
    "Forbidden",
    "InvalidBody",
    "InvalidChannel",
    "InvalidCursor",
    "NotFound",
    "PayloadTooLarge",
    "StoreClosed",
    "StoreError",
    "TidingsError",
    "Unauthorized",
    "UnsupportedMediaType",
]


class ErrorCode(StrEnum):
    """The `code` of every TidingsError (see the tree above): what the SDK matches on."""

    INTERNAL_ERROR = "internal_error"
    BAD_REQUEST = "bad_request"
    INVALID_CHANNEL = "invalid_channel"
    INVALID_CURSOR = "invalid_cursor"
    NESTED_TOO_DEEP = "nested_too_deep"
    INVALID_BODY = "invalid_body"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    TOO_MANY_REQUESTS = "too_many_requests"
    LOGIN_BUSY = "login_busy"
    STORE_UNAVAILABLE = "store_unavailable"
    STORE_CLOSED = "store_closed"
    STORE_LOCKED = "store_locked"
    ASSETS_MISSING = "assets_missing"


class ErrorDetail(msgspec.Struct, frozen=True):
    """What went wrong: a stable code, a message that says what to do, and on 429/503 the
    seconds to wait (as the `Retry-After` header)."""

    code: Annotated[str, msgspec.Meta(description="stable, machine-readable")]
    message: Annotated[str, msgspec.Meta(description="what went wrong, what to do")]
    retry_after: Annotated[int, msgspec.Meta(ge=1)] | UnsetType = UNSET


class ErrorBody(msgspec.Struct, frozen=True):
    """The body of every error answer."""

    error: ErrorDetail


class TidingsError(Exception):
    """Root of every error tidings raises on purpose."""

    status = 500
    code: str = ErrorCode.INTERNAL_ERROR
    # Seconds after which a retry may succeed (429, 503), when the error knows.
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def detail(self) -> ErrorDetail:
        """The `error` member of the body."""
        retry_after = UNSET if self.retry_after is None else self.retry_after
        return ErrorDetail(str(self.code), self.message, retry_after)

    def to_wire(self) -> dict[str, dict[str, str | int]]:
        """The JSON error body (`ErrorBody`) as plain values, for answers that embed it."""
        body: dict[str, dict[str, str | int]] = msgspec.to_builtins(ErrorBody(self.detail()))
        return body

    @property
    def headers(self) -> dict[str, str] | None:
        """Headers the answer carries: `Retry-After` when the error says when to retry."""
        if self.retry_after is None:
            return None
        return {"retry-after": str(self.retry_after)}


class BadRequest(TidingsError):
    status = 400
    code: str = ErrorCode.BAD_REQUEST


class Unauthorized(TidingsError):
    """No credentials where they are required, or credentials that do not check out."""

    status = 401
    code = ErrorCode.UNAUTHORIZED


class InvalidChannel(BadRequest):
    code = ErrorCode.INVALID_CHANNEL


class InvalidCursor(BadRequest, ValueError):
    """A cursor that is not an id of this server; also a ValueError for parsers."""

    code = ErrorCode.INVALID_CURSOR


class InvalidBody(BadRequest):
    status = 422
    code = ErrorCode.INVALID_BODY


class Forbidden(TidingsError):
    status = 403
    code = ErrorCode.FORBIDDEN


class NotFound(TidingsError):
    status = 404
    code = ErrorCode.NOT_FOUND


class Conflict(TidingsError):
    status = 409
    code = ErrorCode.CONFLICT


class PayloadTooLarge(TidingsError):
    status = 413
    code = ErrorCode.PAYLOAD_TOO_LARGE


class UnsupportedMediaType(TidingsError):
    status = 415
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class AssetsMissing(TidingsError):
    """A page's files were not built into this installation (`make assets`)."""

    status = 503
    code = ErrorCode.ASSETS_MISSING


class StoreError(TidingsError):
    """The store failed; the request may be retried."""

    status = 503
    code: str = ErrorCode.STORE_UNAVAILABLE


class StoreClosed(StoreError):
    code = ErrorCode.STORE_CLOSED
