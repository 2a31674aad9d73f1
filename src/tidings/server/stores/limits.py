"""Queue limits as every store applies them: what a lease may still take of a limited job
type (`Allowance`), and what a queue's jobs are waiting on (`LimitCounters.waiting`).

A job type's limits (tidings.protocol.jobs.QueueLimits) are checked by `lease_jobs` in the
same atomic step as the lease, from counters the store keeps with its jobs: the type's
running jobs, its running jobs per group, and its rate state — the GCRA's theoretical
arrival time `tat` (the time at which the bucket would be full again, less its tolerance),
one number per type. A lease takes a job when the type has a concurrency slot left, the
job's group has one, and the bucket a token; taking it uses them up.

The rate is a token bucket of `limit` tokens refilled at limit/per, computed as the
generic cell rate algorithm: a lease at `now` is allowed while max(tat, now) - now is at
most the tolerance `per - per/limit`, and moves `tat` on by `per/limit`. Over any span of
t seconds a type is leased at most limit + t * limit/per times; under a steady backlog,
limit/per per second.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from tidings.protocol.jobs import QueueLimits

__all__ = ["MAX_QUEUE_LIMITS", "Allowance", "LimitCounters", "rate_allows"]

# Job types that may have limits at once (PUT /v1/queues/{type} of another is refused).
MAX_QUEUE_LIMITS = 1000
# Slack of the rate comparison (seconds): times since the epoch are floats with about
# 0.2 µs of resolution, and a tat is a sum of intervals.
_EPSILON = 1e-4


def rate_allows(limits: QueueLimits, tat: float, now: float) -> bool:
    """True when the rate of `limits` lets a lease of its type happen at `now`."""
    rate = limits.rate
    if rate is None:
        return True
    return max(tat, now) - now <= rate.per - rate.interval + _EPSILON


class Allowance:
    """What the leases of one atomic step may still take of one limited job type.

    Args:
        limits: the type's limits.
        running: its running jobs.
        group_running: the running jobs of the type in a group, before this step (asked
            once per group, before any job of the group is taken).
        tat: its rate state (0.0: none yet).
        now: the time of the lease.
    """

    __slots__ = ("_group_running", "_groups", "_now", "limits", "running", "tat")

    def __init__(
        self,
        limits: QueueLimits,
        running: int,
        group_running: Callable[[str], int],
        tat: float,
        now: float,
    ) -> None:
        self.limits = limits
        self.running = running
        self._group_running = group_running
        # The running jobs of each group looked at: as group_running said, plus the jobs
        # of the group taken since.
        self._groups: dict[str, int] = {}
        self.tat = tat
        self._now = now

    def open(self) -> bool:
        """True while the type itself (its concurrency and rate) lets one more job go."""
        limits = self.limits
        if limits.concurrency is not None and self.running >= limits.concurrency:
            return False
        return rate_allows(limits, self.tat, self._now)

    def group_full(self, group: str | None) -> bool:
        """True when `group` has as many running jobs as the type's group_concurrency."""
        cap = self.limits.group_concurrency
        if cap is None or group is None:
            return False
        running = self._groups.get(group)
        if running is None:
            running = self._groups[group] = self._group_running(group)
        return running >= cap

    def take(self, group: str | None) -> bool:
        """Take a job of `group` if every limit lets it go (True), using up its share."""
        if not self.open() or self.group_full(group):
            return False
        self.running += 1
        if group is not None and self.limits.group_concurrency is not None:
            self._groups[group] += 1  # looked at by group_full above
        rate = self.limits.rate
        if rate is not None:
            self.tat = max(self.tat, self._now) + rate.interval
        return True


class LimitCounters(msgspec.Struct, frozen=True):
    """A limited job type's counters as a store reads them for `GET /v1/queues`: its
    queued jobs that are due (`due`), its running jobs, its rate state, and the queued
    jobs (due or not) of its groups that are at their group_concurrency."""

    due: int
    running: int
    tat: float
    full_group_queued: int

    def waiting(self, limits: QueueLimits, now: float) -> dict[str, int]:
        """The due jobs each limit holds back now: all of them by `concurrency` when the
        type runs as many as it may, else all of them by `rate` when its bucket is empty;
        and by `group` the queued jobs of the groups at their limit."""
        by_concurrency = limits.concurrency is not None and self.running >= limits.concurrency
        by_rate = not by_concurrency and not rate_allows(limits, self.tat, now)
        return {
            "concurrency": self.due if by_concurrency else 0,
            "rate": self.due if by_rate else 0,
            "group": self.full_group_queued,
        }
