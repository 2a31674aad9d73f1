"""Login limits: per client address, per account, and a bounded password-hashing queue.

Three guards stand in front of a password check, in this order (tidings.server.auth applies them):

* `AddressLimiter`: a token bucket per client address, `rate` attempts per minute with a
  burst of `rate`; every attempt it lets through spends one, those it refuses none.
  Besides, no address may have more than
  `PER_ADDRESS_HASHING` password checks queued or running at once, so one address can
  never fill the hashing queue that everyone shares. IPv6 clients are counted by their
  /64 (one subscriber usually holds a whole /64). Loopback clients are exempt unless
  `limit_loopback` (a local reverse proxy speaks for everyone).
* `AccountLimiter`: `failures` wrong passwords for one user name within `window` seconds
  lock that name: its logins answer 429 until the oldest of those failures is `window`
  old, even with the right password, so a guesser learns nothing. A successful login
  clears the count. Unknown names are counted like known ones (no enumeration).
* `HashingQueue`: argon2 runs in threads, `threads` at once and at most `waiting` more
  queued; beyond that a login is refused at once (503) instead of queueing for minutes.

Every table is bounded: past its cap the entry used longest ago is dropped. The limits are
per process (`--workers N` multiplies them), like the rest of the in-memory state.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from tidings.protocol.errors import TidingsError

__all__ = [
    "PER_ADDRESS_HASHING",
    "AccountLimiter",
    "AddressLimiter",
    "HashingQueue",
    "LoginBusy",
    "TooManyLogins",
    "address_key",
]

T = TypeVar("T")

# Password checks one address may have queued or running at once.
PER_ADDRESS_HASHING = 2
# Entries kept per table; past it the least recently used is dropped.
MAX_ADDRESSES = 65_536
MAX_ACCOUNTS = 20_000


class TooManyLogins(TidingsError):
    """429: too many login attempts from this address or for this account."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after: float, reason: str = "address") -> None:
        self.retry_after = max(1, math.ceil(retry_after))
        # Which limit refused it (`address`, `account`, `busy`): the metrics' label.
        self.reason = reason
        super().__init__(f"{message}: retry in {self.retry_after} s")


class LoginBusy(TooManyLogins):
    """503: every password-hashing thread is busy and the queue is full."""

    status = 503
    code = "login_busy"


def address_key(host: str | None, limit_loopback: bool) -> str | None:
    """The key `host` is counted under, or None when it is exempt from per-address limits.

    None also for no address at all (a Unix socket: a local proxy). An IPv6 client is
    counted by its /64 (one host usually holds a whole /64), an IPv4-mapped one as IPv4.
    Asked for every new connection: a plain IPv4 address is read without parsing it.
    """
    if not host:
        return None
    if ":" not in host:
        if host.startswith("127."):
            return host if limit_loopback else None
        return host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP (a test transport's name): count it as it is
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback and not limit_loopback:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class AddressLimiter:
    """Login attempts per client address: a token bucket, and a cap on checks in flight.

    Args:
        rate: attempts per minute (also the burst); 0: no limit on the rate.
        max_entries: addresses remembered at once (least recently seen dropped first).
    """

    def __init__(self, rate: int, max_entries: int = MAX_ADDRESSES) -> None:
        self.rate = rate
        self.max_entries = max_entries
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._hashing: dict[str, int] = {}

    def take(self, key: str, now: float) -> None:
        """Spend one attempt of `key`'s allowance, or raise TooManyLogins."""
        if self.rate <= 0:
            return
        per_second = self.rate / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(float(self.rate), now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_entries:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(float(self.rate), bucket.tokens + (now - bucket.stamp) * per_second)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            raise TooManyLogins(
                f"too many login attempts from this address (limit {self.rate} a minute)",
                (1.0 - bucket.tokens) / per_second,
            )
        bucket.tokens -= 1.0

    def enter(self, key: str) -> None:
        """Count one more password check of `key` in flight, or raise TooManyLogins."""
        held = self._hashing.get(key, 0)
        if held >= PER_ADDRESS_HASHING:
            raise TooManyLogins(
                f"{held} logins from this address are already being checked; wait for them",
                1.0,
            )
        self._hashing[key] = held + 1

    def leave(self, key: str) -> None:
        """One password check of `key` is over."""
        held = self._hashing.get(key, 0) - 1
        if held > 0:
            self._hashing[key] = held
        else:
            self._hashing.pop(key, None)


class AccountLimiter:
    """Failed logins per user name within a sliding window; a name with too many is locked.

    Args:
        failures: failed logins within `window` that lock the name; 0: no limit.
        window: seconds a failure counts.
        max_entries: names remembered at once (least recently failed dropped first).
    """

    def __init__(self, failures: int, window: float, max_entries: int = MAX_ACCOUNTS) -> None:
        self.failures = failures
        self.window = window
        self.max_entries = max_entries
        # name digest -> times of its recent failures, oldest first, at most `failures`
        self._failed: OrderedDict[bytes, list[float]] = OrderedDict()

    @staticmethod
    def _key(name: str) -> bytes:
        # A fixed-size key: names come from the request body and may be long.
        return hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def check(self, name: str, now: float) -> None:
        """Raise TooManyLogins while `name` is locked."""
        if self.failures <= 0:
            return
        times = self._failed.get(self._key(name))
        if times is None or len(times) < self.failures:
            return
        until = times[0] + self.window
        if until > now:
            raise TooManyLogins(
                f"too many failed logins for this account ({self.failures} in {self.window:g} s)",
                until - now,
                "account",
            )

    def failed(self, name: str, now: float) -> None:
        """Count a wrong password for `name`."""
        if self.failures <= 0:
            return
        key = self._key(name)
        times = self._failed.pop(key, None) or []
        times = [t for t in times if t > now - self.window]
        times.append(now)
        self._failed[key] = times[-self.failures :]
        if len(self._failed) > self.max_entries:
            self._failed.popitem(last=False)

    def succeeded(self, name: str) -> None:
        """A right password for `name`: forget its failures."""
        self._failed.pop(self._key(name), None)


class HashingQueue:
    """Runs blocking password checks in threads, `threads` at once, `waiting` more queued.

    Args:
        threads: checks running at once.
        waiting: checks that may wait for a thread; past it `run` raises LoginBusy.
    """

    def __init__(self, threads: int, waiting: int) -> None:
        self.threads = threads
        self.waiting = waiting
        self._slots = asyncio.Semaphore(threads)
        self._inside = 0  # running + waiting

    async def run(self, fn: Callable[[], T]) -> T:
        """`fn()` in a thread once one is free, or LoginBusy at once when the queue is full.

        A caller cancelled while its check runs leaves the thread's slot taken until the
        thread ends, so no more than `threads` checks ever run at once.
        """
        if self._inside >= self.threads + self.waiting:
            raise LoginBusy("the server is busy checking other passwords", 1.0, "busy")
        self._inside += 1
        try:
            await self._slots.acquire()
        except BaseException:
            self._inside -= 1
            raise
        try:
            future = asyncio.get_running_loop().run_in_executor(None, fn)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.shield(future)

    def _release(self, _: object) -> None:
        self._inside -= 1
        self._slots.release()
