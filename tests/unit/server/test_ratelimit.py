"""The login limiters' rules on an explicit clock: refill, the account window, keys, caps.

The limiters take `now` as an argument, so time passes here by arithmetic; the end-to-end
behaviour (429, Retry-After, 503) is in tests/hostile/test_login_limits.py.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from tidings.server.ratelimit import (
    PER_ADDRESS_HASHING,
    AccountLimiter,
    AddressLimiter,
    HashingQueue,
    LoginBusy,
    TooManyLogins,
    address_key,
)

NOW = 1_000.0


def test_an_address_gets_its_burst_then_one_attempt_per_refill_interval() -> None:
    limiter = AddressLimiter(rate=6)  # one attempt back every 10 s
    for _ in range(6):
        limiter.take("203.0.113.9", NOW)
    with pytest.raises(TooManyLogins) as refused:
        limiter.take("203.0.113.9", NOW)
    assert refused.value.retry_after == 10
    with pytest.raises(TooManyLogins) as refused:
        limiter.take("203.0.113.9", NOW + 4)
    assert refused.value.retry_after == 6
    limiter.take("203.0.113.9", NOW + 10)
    limiter.take("198.51.100.1", NOW)  # another address has its own bucket


def test_the_address_table_is_capped_and_drops_the_address_seen_longest_ago() -> None:
    limiter = AddressLimiter(rate=1, max_entries=3)
    for i in range(3):
        limiter.take(f"10.0.0.{i}", NOW)
    with pytest.raises(TooManyLogins):
        limiter.take("10.0.0.0", NOW)  # refused, but seen again: now the newest
    limiter.take("10.0.0.9", NOW)  # past the cap: 10.0.0.1 is dropped
    assert len(limiter._buckets) == 3
    limiter.take("10.0.0.1", NOW)  # forgotten, so a fresh bucket
    with pytest.raises(TooManyLogins):
        limiter.take("10.0.0.0", NOW)  # the recently seen one was kept


def test_an_address_may_have_only_a_few_password_checks_in_flight() -> None:
    limiter = AddressLimiter(rate=0)
    for _ in range(PER_ADDRESS_HASHING):
        limiter.enter("203.0.113.9")
    with pytest.raises(TooManyLogins):
        limiter.enter("203.0.113.9")
    limiter.enter("198.51.100.1")
    limiter.leave("203.0.113.9")
    limiter.enter("203.0.113.9")


def test_an_account_locks_after_its_failures_and_opens_when_the_oldest_leaves_the_window() -> None:
    limiter = AccountLimiter(failures=3, window=300)
    for t in (0, 100, 200):
        limiter.check("alice", NOW + t)
        limiter.failed("alice", NOW + t)
    with pytest.raises(TooManyLogins) as refused:
        limiter.check("alice", NOW + 250)
    assert refused.value.retry_after == 50
    limiter.check("bob", NOW + 250)
    limiter.check("alice", NOW + 300)  # the first failure has left the window
    limiter.failed("alice", NOW + 300)  # the sliding window: locked again until 100 + 300
    with pytest.raises(TooManyLogins) as refused:
        limiter.check("alice", NOW + 301)
    assert refused.value.retry_after == 99


def test_a_success_clears_an_account_and_old_failures_do_not_count() -> None:
    limiter = AccountLimiter(failures=2, window=60)
    limiter.failed("alice", NOW)
    limiter.succeeded("alice")
    limiter.failed("alice", NOW + 1)
    limiter.check("alice", NOW + 1)
    limiter.failed("alice", NOW + 100)  # the one at NOW + 1 is past the window
    limiter.check("alice", NOW + 100)


def test_the_account_table_is_capped() -> None:
    limiter = AccountLimiter(failures=1, window=60, max_entries=2)
    for name in ("a", "b", "c"):
        limiter.failed(name, NOW)
    assert len(limiter._failed) == 2
    limiter.check("a", NOW)  # dropped first
    with pytest.raises(TooManyLogins):
        limiter.check("c", NOW)


def test_zero_means_no_limit() -> None:
    addresses, accounts = AddressLimiter(rate=0), AccountLimiter(failures=0, window=60)
    for _ in range(1000):
        addresses.take("203.0.113.9", NOW)
        accounts.failed("alice", NOW)
    accounts.check("alice", NOW)


@pytest.mark.parametrize(
    ("host", "limit_loopback", "key"),
    [
        ("203.0.113.9", False, "203.0.113.9"),
        ("::ffff:203.0.113.9", False, "203.0.113.9"),
        ("2001:db8:1:2:3:4:5:6", False, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff::1", False, "2001:db8:1:2::/64"),
        ("127.0.0.2", False, None),
        ("::1", False, None),
        ("127.0.0.2", True, "127.0.0.2"),
        ("::1", True, "::/64"),
        (None, True, None),
        ("testclient", False, "testclient"),
    ],
)
def test_addresses_are_keyed_by_ipv4_address_or_ipv6_64_and_loopback_is_exempt_by_default(
    host: str | None, limit_loopback: bool, key: str | None
) -> None:
    assert address_key(host, limit_loopback) == key


def test_the_hashing_queue_refuses_at_once_past_its_threads_and_waiting_places() -> None:
    release = threading.Event()

    async def main() -> list[object]:
        queue = HashingQueue(threads=1, waiting=1)
        first = asyncio.ensure_future(queue.run(release.wait))
        second = asyncio.ensure_future(queue.run(release.wait))
        await asyncio.sleep(0.05)
        with pytest.raises(LoginBusy):
            await queue.run(release.wait)
        # A waiter cancelled while queued gives its place back at once.
        second.cancel()
        await asyncio.sleep(0)
        third = asyncio.ensure_future(queue.run(release.wait))
        await asyncio.sleep(0.05)
        release.set()
        return list(await asyncio.gather(first, third))

    assert asyncio.run(main()) == [True, True]
