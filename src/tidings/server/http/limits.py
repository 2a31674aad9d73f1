"""Connection limits: how many connections, from whom, and for how long.

One `ConnectionLimits` per server (it lives on the uvicorn config, so every protocol of
that server shares it). It counts connections — all of them, and per client address — and
sweeps the open HTTP connections once a second, closing those past their deadline: a
head that takes longer than `header_timeout`, a body paused longer than `body_timeout`, a
keep-alive connection idle longer than `keep_alive_timeout`. One periodic sweep, like
nginx's timer wheel, instead of a timer per request: a deadline is a float on the
connection, set where the protocol already runs (see docs/decisions/0016-http-limits.md).

Clients are counted per address as logins are (`ratelimit.address_key`: an IPv6 client by
its /64); loopback clients not at all unless `limit_loopback` is set: a loopback client is
usually a local reverse proxy or a benchmark speaking for many users.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import resource
from typing import Any, Protocol

from tidings.server import constants as C
from tidings.server.http.errors import error_answer
from tidings.server.ratelimit import address_key
from tidings.server.settings import Settings

__all__ = [
    "SWEEP_INTERVAL",
    "Answers",
    "ConnectionLimits",
    "Wait",
    "connection_capacity",
    "raise_file_limit",
]

log = logging.getLogger("tidings.http")

# Seconds between two sweeps: a deadline is met within this much after it passes.
SWEEP_INTERVAL = 1.0
# The file limit's share kept for everything but client sockets (the store, logs, files,
# the listening socket, Redis connections): a sixteenth, at least 64 and at most half.
_RESERVE_MIN = 64
_RESERVE_SHARE = 16
# Seconds a client refused for a connection cap is told to wait before retrying.
RETRY_AFTER = 1


class Wait(enum.Enum):
    """What an HTTP connection is waiting for, which decides its deadline."""

    NOTHING = 0  # the app has the request (or a stream is open): no deadline
    IDLE = 1  # keep-alive between requests: closed silently at the deadline
    HEAD = 2  # a request's line and headers: 408 at the deadline (silent if none came)
    BODY = 3  # the next piece of a request's body: 408 at the deadline


class Swept(Protocol):
    """What the sweep needs of a connection."""

    deadline: float

    def expire(self, now: float) -> None:
        """Called by the sweep once `now` is past `deadline`."""


class Answers:
    """The answers a limit gives, built once per server."""

    __slots__ = ("busy", "fields", "header_bytes", "per_address", "request_line", "timeout")

    def __init__(self, max_header_bytes: int, max_connections: int, per_address: int) -> None:
        self.request_line = error_answer(
            414,
            "URI Too Long",
            "request_line_too_long",
            f"the request line is over the {C.MAX_REQUEST_LINE}-byte limit: shorten the URL",
        )
        self.header_bytes = error_answer(
            431,
            "Request Header Fields Too Large",
            "headers_too_large",
            f"the request's headers are over the {max_header_bytes}-byte limit",
        )
        self.fields = error_answer(
            431,
            "Request Header Fields Too Large",
            "too_many_headers",
            f"the request has more than {C.MAX_HEADER_FIELDS} header fields",
        )
        self.timeout = error_answer(
            408,
            "Request Timeout",
            "request_timeout",
            "the request was not received in time: send it whole, without pauses",
        )
        self.busy = error_answer(
            503,
            "Service Unavailable",
            "too_many_connections",
            f"the server is serving its limit of {max_connections} connections: retry later",
            RETRY_AFTER,
        )
        self.per_address = error_answer(
            429,
            "Too Many Requests",
            "too_many_connections",
            f"your address has {per_address} connections open, the most allowed: "
            "close some before opening more",
            RETRY_AFTER,
        )


def raise_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if target == resource.RLIM_INFINITY:
        target = 1 << 20  # Linux refuses more than fs.nr_open (1048576 by default)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    return int(soft)


def connection_capacity(file_limit: int, max_connections: int) -> int:
    """The global connection cap: `max_connections`, or (0) the file limit less a reserve."""
    if max_connections > 0:
        return max_connections
    reserve = min(max(_RESERVE_MIN, file_limit // _RESERVE_SHARE), file_limit // 2)
    return max(1, file_limit - reserve)


# What `ConnectionLimits.refused` counts: connections over the global or per-address cap,
# request heads over a size limit, and connections closed at a deadline.
REFUSALS = ("max_connections", "per_address", "head_too_large", "timed_out")


class ConnectionLimits:
    """The connection caps and timeouts of one server, and its open connections.

    Args:
        settings: the limits (timeouts, caps, `limit_loopback`, `max_header_bytes`).
        max_connections: the global cap in force (`connection_capacity`).
    """

    def __init__(self, settings: Settings, max_connections: int) -> None:
        self.max_connections = max_connections
        self.per_address = settings.max_connections_per_address
        self.limit_loopback = settings.limit_loopback
        self.header_timeout = settings.header_timeout
        self.body_timeout = settings.body_timeout
        self.keep_alive_timeout = settings.keep_alive_timeout
        self.max_header_bytes = settings.max_header_bytes
        # The most bytes of a request head fed to the parser: past it, 414 or 431.
        self.head_limit = C.MAX_REQUEST_LINE + settings.max_header_bytes
        self.answers = Answers(settings.max_header_bytes, max_connections, self.per_address)
        # Every connection admitted and not yet lost (HTTP and WebSocket).
        self.count = 0
        # Connections refused or cut by a limit, closing once their client read why.
        self.lingering = 0
        # Connections and requests refused or cut, by the limit (the metrics' label).
        self.refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        # Connections per counted client address (only addresses the cap applies to).
        self.by_address: dict[str, int] = {}
        # The HTTP connections the sweep looks at.
        self.swept: set[Swept] = set()
        self._sweeping: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, config: Any) -> ConnectionLimits:
        """The limits of the server `config` belongs to (made with defaults if it has none:
        a plain uvicorn.Config running the protocol)."""
        limits = getattr(config, "tidings_limits", None)
        if limits is None:
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            file_limit = 1 << 20 if soft == resource.RLIM_INFINITY else soft
            limits = cls(Settings(), connection_capacity(file_limit, 0))
            config.tidings_limits = limits
        return limits

    def admit(self, host: str | None) -> tuple[bytes | None, str | None]:
        """Count a new connection from `host`: (None, the address it is counted under, if
        any) when admitted; (the answer to send before closing, None) when over a cap."""
        if self.count >= self.max_connections:
            self.refused["max_connections"] += 1
            return self.answers.busy, None
        key = address_key(host, self.limit_loopback) if self.per_address else None
        if key is not None:
            n = self.by_address.get(key, 0)
            if n >= self.per_address:
                self.refused["per_address"] += 1
                return self.answers.per_address, None
            self.by_address[key] = n + 1
        self.count += 1
        return None, key

    def release(self, key: str | None) -> None:
        """An admitted connection (counted under `key`) is gone."""
        self.count -= 1
        if key is not None:
            n = self.by_address[key] - 1
            if n:
                self.by_address[key] = n
            else:
                del self.by_address[key]

    def start_sweeping(self, loop: asyncio.AbstractEventLoop) -> None:
        """Sweep every SWEEP_INTERVAL from now on (once per server; idempotent)."""
        if self._sweeping is None:
            self._sweeping = loop.call_later(SWEEP_INTERVAL, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        due = [conn for conn in self.swept if 0.0 < conn.deadline <= now]
        for conn in due:
            try:
                conn.expire(now)
            except Exception:  # one broken connection must not stop the sweep
                log.exception("closing a connection past its deadline failed")
        self._sweeping = loop.call_later(SWEEP_INTERVAL, self._sweep, loop)
