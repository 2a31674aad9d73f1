"""The job timing tallies behind tidings_job_wait_seconds and tidings_job_run_seconds."""

from __future__ import annotations

from tidings.server.job_timings import BUCKETS, MAX_TYPES, OTHER_TYPE, JobTimings


def test_durations_fall_in_their_bucket_and_add_up_cumulatively() -> None:
    t = JobTimings()
    for seconds in (0.001, 0.005, 0.3, 7.0, 5000.0, -2.0):
        t.observe("mail", seconds)
    buckets = dict(t.cumulative("mail"))
    assert list(buckets) == [*map(repr, BUCKETS), "+Inf"]
    assert buckets["0.005"] == 3  # 0.001, 0.005 (a bound is inclusive) and -2 as 0
    assert buckets["0.5"] == 4
    assert buckets["10.0"] == 5
    assert buckets["1800.0"] == 5
    assert buckets["+Inf"] == 6
    assert t.sums["mail"] == 0.001 + 0.005 + 0.3 + 7.0 + 5000.0


def test_types_past_the_cap_are_counted_together() -> None:
    t = JobTimings()
    for i in range(MAX_TYPES + 50):
        t.observe(f"type-{i}", 1.0)
    t.observe("type-0", 1.0)  # a type that has its own keeps it
    assert len(t.counts) == MAX_TYPES + 1
    assert dict(t.cumulative(OTHER_TYPE))["+Inf"] == 50
    assert dict(t.cumulative("type-0"))["+Inf"] == 2
