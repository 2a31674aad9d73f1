"""What every store engine shares: message ids, the codecs of stored values, the served
marks of the engines that keep them in process, and the translation of a driver's errors
into StoreError at the store boundary."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from types import TracebackType

import msgspec

from tidings.protocol.codecs import JSON_DECODER, encode_json
from tidings.protocol.errors import Conflict, InvalidCursor, StoreError
from tidings.protocol.jobs import Job
from tidings.protocol.schedules import Schedule
from tidings.server.principals import Credential, User

__all__ = [
    "JOB_LIST_SCAN",
    "SERVED_MARKS",
    "SERVED_MARK_TTL",
    "ServedMarks",
    "decode_credential",
    "decode_job",
    "decode_json",
    "decode_schedule",
    "decode_user",
    "encode_json",
    "encode_msgpack",
    "encode_schedule",
    "owner_schedules_full",
    "parse_seq",
    "schedules_full",
    "store_errors",
]

# Message data is stored as JSON (what clients sent, read back as it was); jobs, users,
# credentials and schedules as msgpack bodies of their Structs.
decode_json = JSON_DECODER.decode
encode_msgpack = msgspec.msgpack.Encoder().encode
decode_job = msgspec.msgpack.Decoder(Job).decode
decode_user = msgspec.msgpack.Decoder(User).decode
decode_credential = msgspec.msgpack.Decoder(Credential).decode
decode_schedule = msgspec.msgpack.Decoder(Schedule).decode


def encode_schedule(schedule: Schedule) -> bytes:
    """A schedule's stored body as reading it back and encoding it again gives it (an
    integer given for a float field becomes a float): the compare-and-set of
    `advance_schedule` compares the bodies of schedules read back."""
    return encode_msgpack(decode_schedule(encode_msgpack(schedule)))


def owner_schedules_full(owner: str, cap: int) -> Conflict:
    """The refusal of one more schedule to an owner who has `cap` of them."""
    return Conflict(
        f"{owner} has {cap} schedules, the most one owner may have: delete one "
        "(DELETE /v1/schedules/{name}) before adding another"
    )


def schedules_full(cap: int) -> Conflict:
    """The refusal of a new schedule in a store that holds `cap` of them."""
    return Conflict(
        f"there are {cap} schedules already, the most a server keeps: delete one "
        "(DELETE /v1/schedules/{name}) before adding another"
    )


# Jobs one filtered list_jobs call of an engine without an index per filter (memory,
# Redis) examines at most: past it, the page ends short with a `next` where it stopped.
JOB_LIST_SCAN = 10_000

# Job types whose served marks a store keeps (the oldest are forgotten first), and the age
# past which a mark may be forgotten (JobStore.mark_served).
SERVED_MARKS = 10_000
SERVED_MARK_TTL = 86_400.0


class ServedMarks:
    """When a worker last asked for each job type: at most `cap` types, none older than
    `ttl` seconds, the oldest forgotten first.

    Kept in write order (a mark moves to the end when written), so the oldest are at the
    front: bounding costs O(1) amortised per write, never a rebuild.
    """

    __slots__ = ("_at", "cap", "ttl")

    def __init__(self, cap: int = SERVED_MARKS, ttl: float = SERVED_MARK_TTL) -> None:
        self.cap = cap
        self.ttl = ttl
        self._at: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._at)

    def mark(self, types: Iterable[str], at: float) -> None:
        """Record a mark at `at` for each of `types`; a mark never moves back."""
        marks = self._at
        for t in types:
            if marks.get(t, at) <= at:
                marks[t] = at
                marks.move_to_end(t)
        while len(marks) > self.cap:
            marks.popitem(last=False)
        since = at - self.ttl
        while marks and next(iter(marks.values())) <= since:
            marks.popitem(last=False)

    def get(self, type_: str) -> float | None:
        """The mark of `type_`, or None."""
        return self._at.get(type_)

    def latest(self, types: Iterable[str]) -> float | None:
        """The latest mark of any of `types`, or None when none has one."""
        marks = self._at
        return max((marks[t] for t in types if t in marks), default=None)


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
