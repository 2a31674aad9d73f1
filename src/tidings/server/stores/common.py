"""What every store engine shares: message ids, the codecs of stored values, and the
translation of a driver's errors into StoreError at the store boundary."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

import msgspec

from tidings.protocol.codecs import JSON_DECODER, encode_json
from tidings.protocol.errors import InvalidCursor, StoreError
from tidings.protocol.jobs import Job
from tidings.server.principals import Credential, User

__all__ = [
    "decode_credential",
    "decode_job",
    "decode_json",
    "decode_user",
    "encode_json",
    "encode_msgpack",
    "parse_seq",
    "store_errors",
]

# Message data is stored as JSON (what clients sent, read back as it was); jobs, users and
# credentials as msgpack bodies of their Structs.
decode_json = JSON_DECODER.decode
encode_msgpack = msgspec.msgpack.Encoder().encode
decode_job = msgspec.msgpack.Decoder(Job).decode
decode_user = msgspec.msgpack.Decoder(User).decode
decode_credential = msgspec.msgpack.Decoder(Credential).decode


def parse_seq(message_id: str) -> int:
    """Sequence number of a message id (decimal digits, as every store writes them)."""
    if not (message_id.isascii() and message_id.isdigit()) or len(message_id) > 18:
        raise InvalidCursor(
            f"cursor {message_id!r} is not a message id of this server: use an id it gave you, or 0"
        )
    return int(message_id)


class store_errors:  # noqa: N801 - used as a context manager, like contextlib's
    """A context manager raising, in place of a driver's exception, the StoreError (or
    StoreClosed) that `translate` makes of it; other exceptions pass through.

    It holds no state between uses: an engine builds one and enters it around every call
    (`with self._errors: ...`), which costs no allocation per call.

    Args:
        catch: the driver's exception classes to translate (`redis.RedisError`,
            `sqlite3.Error`).
        translate: makes the StoreError of one such exception, with a message that says
            what to do.
    """

    __slots__ = ("catch", "translate")

    def __init__(
        self,
        catch: type[BaseException] | tuple[type[BaseException], ...],
        translate: Callable[[BaseException], StoreError],
    ) -> None:
        self.catch = catch
        self.translate = translate

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and isinstance(exc, self.catch):
            raise self.translate(exc) from exc
