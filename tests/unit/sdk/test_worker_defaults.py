"""A Worker's concurrency when none is given: by the kind of its handlers.

The running worker's side (the worker list shows the number, that many jobs run at once,
`tidings worker --concurrency` overrides it) is in tests/e2e/test_workers_list.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tidings.sdk.worker import (
    ASYNC_CONCURRENCY,
    MAX_LEASE_BATCH,
    SYNC_CONCURRENCY,
    JobContext,
    Worker,
    default_concurrency,
)

pytestmark = pytest.mark.timeout(30)


def plain(job: JobContext) -> None:
    """A handler run in a thread."""


async def coroutine(job: JobContext) -> None:
    """A handler run on the worker's loop."""


class AsyncCallable:
    """An object whose `__call__` is a coroutine function: an async handler too."""

    async def __call__(self, job: JobContext) -> None:
        return None


def worker_with(*handlers: Any, **kw: Any) -> Worker:
    worker = Worker(**kw)
    for n, fn in enumerate(handlers):
        worker.handler(f"type{n}")(fn)
    return worker


def test_the_defaults_are_a_thread_pool_and_many_coroutines_within_one_lease_batch() -> None:
    assert SYNC_CONCURRENCY == 32  # ThreadPoolExecutor's most threads by default
    assert SYNC_CONCURRENCY < ASYNC_CONCURRENCY <= MAX_LEASE_BATCH


@pytest.mark.parametrize(
    ("handlers", "expected"),
    [
        ((plain,), SYNC_CONCURRENCY),
        ((plain, plain), SYNC_CONCURRENCY),
        ((coroutine,), ASYNC_CONCURRENCY),
        ((coroutine, AsyncCallable()), ASYNC_CONCURRENCY),
        ((coroutine, plain), SYNC_CONCURRENCY),  # one thread-bound handler bounds them all
        ((), ASYNC_CONCURRENCY),
    ],
)
def test_without_a_concurrency_it_follows_the_handlers_kind(
    handlers: tuple[Any, ...], expected: int
) -> None:
    assert default_concurrency(handlers) == expected
    worker = worker_with(*handlers)
    assert worker.concurrency == expected
    assert worker.identity().concurrency == expected  # what the worker list shows


def test_the_default_is_read_when_asked_so_handlers_added_later_count() -> None:
    worker = Worker()
    worker.handler("a")(coroutine)
    assert worker.concurrency == ASYNC_CONCURRENCY
    worker.handler("b")(plain)
    assert worker.concurrency == SYNC_CONCURRENCY


def test_a_given_concurrency_wins_over_the_default() -> None:
    assert worker_with(coroutine, concurrency=3).concurrency == 3
    assert worker_with(plain, concurrency=500).identity().concurrency == 500
    worker = worker_with(plain)
    worker.concurrency = 7  # what `tidings worker --concurrency 7` does
    assert (worker.concurrency, worker.identity().concurrency) == (7, 7)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "4"])
def test_a_concurrency_that_is_not_a_positive_whole_number_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"concurrency must be a whole number of at least 1"):
        Worker(concurrency=bad)
    worker = Worker()
    with pytest.raises(ValueError, match=re.escape(f"got {bad!r}")):
        worker.concurrency = bad
    assert worker.concurrency == ASYNC_CONCURRENCY
