"""How long jobs wait and run, per job type: fixed-bucket tallies that /metrics reads at
scrape time as Prometheus histograms (`tidings_job_wait_seconds`,
`tidings_job_run_seconds`).

A tally is plain integers updated on the job service's path (a bisect and two additions),
with no lock and no prometheus_client object per type. At most MAX_TYPES types get their
own; later ones are counted under OTHER_TYPE, so a client inventing types cannot grow it.
"""

from __future__ import annotations

from bisect import bisect_left

__all__ = ["BUCKETS", "MAX_TYPES", "OTHER_TYPE", "JobTimings"]

# Upper bounds in seconds (a last, infinite bucket follows): from a job taken at once to
# half an hour in a queue or at work.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)
MAX_TYPES = 100
OTHER_TYPE = "~other"  # `~` is in no job type


class JobTimings:
    """Durations by job type: for each, the count per bucket (the last is +Inf) and the
    sum."""

    __slots__ = ("counts", "sums")

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = {}
        self.sums: dict[str, float] = {}

    def observe(self, type_: str, seconds: float) -> None:
        """Count one duration (a negative one, from clocks of two nodes, as 0)."""
        seconds = max(seconds, 0.0)
        counts = self.counts.get(type_)
        if counts is None:
            if len(self.counts) >= MAX_TYPES:
                type_ = OTHER_TYPE
                counts = self.counts.get(type_)
            if counts is None:
                counts = self.counts[type_] = [0] * (len(BUCKETS) + 1)
                self.sums[type_] = 0.0
        counts[bisect_left(BUCKETS, seconds)] += 1
        self.sums[type_] += seconds

    def cumulative(self, type_: str) -> list[tuple[str, int]]:
        """The buckets of `type_` as Prometheus says them: (`le`, count at or below)."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*map(repr, BUCKETS), "+Inf"), self.counts[type_], strict=True):
            total += n
            out.append((bound, total))
        return out
