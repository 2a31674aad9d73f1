"""What the client and the worker share: the SDK's errors, URL paths, credentials, and
turning an HTTP answer into a wire Struct of `tidings.protocol` or the error it stands for.

Errors raised by the SDK:

    ClientError                  anything the SDK raises on purpose
    ├── TidingsHTTPError         the server answered with a 4xx/5xx status (.status, .code)
    └── TidingsConnectionError   the server could not be reached or the connection broke
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from tidings.protocol.errors import ErrorBody

__all__ = [
    "OBJECT_DECODER",
    "ClientError",
    "TidingsConnectionError",
    "TidingsHTTPError",
    "auth_headers",
    "channel_path",
    "check",
    "check_url",
    "decode",
    "error_from",
    "job_path",
    "json_object",
    "schedule_path",
]

T = TypeVar("T")

_RETRYABLE_STATUS = frozenset({408, 429})
_ERROR_BODY = msgspec.json.Decoder(ErrorBody)
# Any JSON object: for answers the SDK reads a field or two of, or none.
OBJECT_DECODER = msgspec.json.Decoder(dict[str, Any])


class ClientError(Exception):
    """Root of every error the SDK raises on purpose."""


class TidingsHTTPError(ClientError):
    """The server answered with an error status.

    `status` is the HTTP status, `code` and `message` come from the server's
    `{"error": {"code", "message"}}` body (or are derived from the status when the body is
    not of that form), `retry_after` is the `Retry-After` header in seconds, if any.
    """

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """True for answers that a later attempt may turn into success (5xx, 408, 429)."""
        return self.status >= 500 or self.status in _RETRYABLE_STATUS


class TidingsConnectionError(ClientError):
    """The server could not be reached, or the connection broke before an answer."""


def check_url(url: str) -> None:
    """Raise ValueError unless `url` is an http:// or https:// URL."""
    if httpx.URL(url).scheme not in ("http", "https"):
        raise ValueError(f"url must start with http:// or https://, got {url!r}")


def auth_headers(token: str | None) -> dict[str, str]:
    """The `Authorization` header a token is sent in (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def channel_path(channel: str, suffix: str = "") -> str:
    """The path of a channel's resource, e.g. `/v1/channels/news/messages`."""
    return f"/v1/channels/{quote(channel, safe='')}{suffix}"


def job_path(job_id: str, suffix: str = "") -> str:
    """The path of a job's resource, e.g. `/v1/jobs/7/heartbeat`."""
    return f"/v1/jobs/{quote(job_id, safe='')}{suffix}"


def schedule_path(name: str) -> str:
    """The path of a schedule, e.g. `/v1/schedules/nightly`."""
    return f"/v1/schedules/{quote(name, safe='')}"


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare, and the backoff applies anyway


def error_from(status: int, body: bytes, retry_after: str | None = None) -> TidingsHTTPError:
    """The error for a non-2xx answer, from its `ErrorBody` (or from the status when the
    body is not one, e.g. a proxy's page)."""
    try:
        detail = _ERROR_BODY.decode(body).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        message = body.decode("utf-8", "replace").strip()[:500] or "(empty body)"
        return TidingsHTTPError(
            status, f"http_{status}", message, retry_after=_retry_after(retry_after)
        )
    return TidingsHTTPError(
        status, detail.code, detail.message, retry_after=_retry_after(retry_after)
    )


def check(response: httpx.Response) -> None:
    """Raise `TidingsHTTPError` unless the (already read) response is a 2xx."""
    if not response.is_success:
        raise error_from(
            response.status_code, response.content, response.headers.get("Retry-After")
        )


def decode(response: httpx.Response, decoder: msgspec.json.Decoder[T]) -> T:
    """The answer's body as `decoder` reads it (a wire Struct); `TidingsHTTPError` for an
    error status, `ClientError` for a body that is not of the expected shape."""
    check(response)
    try:
        return decoder.decode(response.content)
    except msgspec.ValidationError as exc:
        raise ClientError(f"unexpected answer from the server: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ClientError(f"the server answered with malformed JSON: {exc}") from exc


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's body, a JSON object; raises as `decode` does."""
    return decode(response, OBJECT_DECODER)
