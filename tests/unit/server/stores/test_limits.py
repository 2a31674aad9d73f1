"""The queue limits every store applies (tidings.server.stores.limits): an Allowance takes
jobs while the type's concurrency, the job's group and the rate's token bucket let them
go; LimitCounters says which limit holds the waiting jobs back."""

from __future__ import annotations

import pytest

from tidings.protocol.jobs import QueueLimits, RateLimit
from tidings.server.stores.limits import Allowance, LimitCounters, rate_allows

NOW = 1_765_000_000.25  # a time of today's size: the tolerance must hold at its resolution

pytestmark = pytest.mark.timeout(10)


def takes(allowance: Allowance, groups: list[str | None]) -> list[bool]:
    return [allowance.take(group) for group in groups]


def test_concurrency_counts_the_running_jobs_and_those_taken():
    allowance = Allowance(QueueLimits(concurrency=3), 1, lambda group: 0, 0.0, NOW)
    assert takes(allowance, [None, None, None]) == [True, True, False]
    assert not allowance.open()
    assert allowance.running == 3


def test_group_concurrency_holds_back_a_full_group_only():
    running = {"a": 1}
    asked: list[str] = []

    def group_running(group: str) -> int:
        asked.append(group)
        return running.get(group, 0)

    allowance = Allowance(QueueLimits(group_concurrency=2), 5, group_running, 0.0, NOW)
    assert takes(allowance, ["a", "a", "b", None, "b", "b", None]) == [
        True, False, True, True, True, False, True,
    ]  # fmt: skip
    # Each group's count is asked once, before any of its jobs is taken: a store that
    # counts the leases of this very step as they are written is not counted twice.
    assert asked == ["a", "b"]


def test_a_rate_gives_a_burst_of_limit_then_one_per_interval():
    limits = QueueLimits(rate=RateLimit(50, 1.0))
    allowance = Allowance(limits, 0, lambda group: 0, 0.0, NOW)
    assert sum(takes(allowance, [None] * 80)) == 50
    assert allowance.tat == pytest.approx(NOW + 1.0)
    assert not rate_allows(limits, allowance.tat, NOW + 0.019)
    later = Allowance(limits, 0, lambda group: 0, allowance.tat, NOW + 0.1)
    assert sum(takes(later, [None] * 80)) == 5  # 0.1 s at 50 per second
    assert not rate_allows(limits, later.tat, NOW + 0.1)


def test_an_idle_rate_fills_up_to_its_limit_and_no_more():
    limits = QueueLimits(rate=RateLimit(10, 2.0))
    allowance = Allowance(limits, 0, lambda group: 0, NOW - 3600.0, NOW)
    assert sum(takes(allowance, [None] * 30)) == 10


def test_no_limit_set_takes_everything():
    allowance = Allowance(QueueLimits(), 10**6, lambda group: 10**6, 0.0, NOW)
    assert all(takes(allowance, ["g", None] * 50))


def test_waiting_names_the_limit_that_holds_the_due_jobs():
    limits = QueueLimits(RateLimit(5, 1.0), concurrency=2, group_concurrency=1)
    full = LimitCounters(due=7, running=2, tat=NOW + 10, full_group_queued=3)
    assert full.waiting(limits, NOW) == {"concurrency": 7, "rate": 0, "group": 3}
    rated = LimitCounters(due=7, running=1, tat=NOW + 10, full_group_queued=0)
    assert rated.waiting(limits, NOW) == {"concurrency": 0, "rate": 7, "group": 0}
    free = LimitCounters(due=7, running=1, tat=0.0, full_group_queued=0)
    assert free.waiting(limits, NOW) == {"concurrency": 0, "rate": 0, "group": 0}


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        (QueueLimits(rate=RateLimit(0)), '"rate.limit" must be 1 to 1000000'),
        (QueueLimits(rate=RateLimit(1, 0.0001)), '"rate.per" must be 0.001 to'),
        (QueueLimits(concurrency=-1), '"concurrency" must be 1 to'),
        (QueueLimits(group_concurrency=0), '"group_concurrency" must be 1 to'),
    ],
)
def test_limits_say_what_to_fix(limits, says):
    problem = limits.problem()
    assert problem is not None and says in problem


def test_good_limits_have_no_problem_and_null_ones_are_empty():
    assert QueueLimits(RateLimit(1_000_000, 0.001), 1, 1_000_000).problem() is None
    assert QueueLimits().empty
    assert not QueueLimits(concurrency=1).empty
