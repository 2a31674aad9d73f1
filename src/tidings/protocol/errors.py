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
    └── StoreError               (503 store_unavailable)
        ├── StoreClosed          (503 store_closed)
        └── StoreLocked          (503 store_locked, also an OSError; stores/lockfile.py)

Every error carries a message that says what to do; handlers render it as
`{"error": {"code", "message"}}`, plus `retry_after` (and a `Retry-After` header) when
the error says when to come back.
"""

from __future__ import annotations

__all__ = [
    "BadRequest",
    "Conflict",
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


class TidingsError(Exception):
    """Root of every error tidings raises on purpose."""

    status = 500
    code = "internal_error"
    # Seconds after which a retry may succeed (429, 503), when the error knows.
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_wire(self) -> dict[str, dict[str, str | int]]:
        """The JSON error body."""
        body: dict[str, str | int] = {"code": self.code, "message": self.message}
        if self.retry_after is not None:
            body["retry_after"] = self.retry_after
        return {"error": body}

    @property
    def headers(self) -> dict[str, str] | None:
        """Headers the answer carries: `Retry-After` when the error says when to retry."""
        if self.retry_after is None:
            return None
        return {"retry-after": str(self.retry_after)}


class BadRequest(TidingsError):
    status = 400
    code = "bad_request"


class Unauthorized(TidingsError):
    """No credentials where they are required, or credentials that do not check out."""

    status = 401
    code = "unauthorized"


class InvalidChannel(BadRequest):
    code = "invalid_channel"


class InvalidCursor(BadRequest, ValueError):
    """A cursor that is not an id of this server; also a ValueError for parsers."""

    code = "invalid_cursor"


class InvalidBody(BadRequest):
    status = 422
    code = "invalid_body"


class Forbidden(TidingsError):
    status = 403
    code = "forbidden"


class NotFound(TidingsError):
    status = 404
    code = "not_found"


class Conflict(TidingsError):
    status = 409
    code = "conflict"


class PayloadTooLarge(TidingsError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(TidingsError):
    status = 415
    code = "unsupported_media_type"


class StoreError(TidingsError):
    """The store failed; the request may be retried."""

    status = 503
    code = "store_unavailable"


class StoreClosed(StoreError):
    code = "store_closed"
