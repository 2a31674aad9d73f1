"""The metrics read the store's declared write counters, when it keeps them."""

from __future__ import annotations

from tidings.protocol.jobs import JOB_STATUSES
from tidings.protocol.messages import valid_channel
from tidings.server.hub import Hub
from tidings.server.metrics import OTHER_TYPES, Metrics, job_series
from tidings.server.stores.base import Store
from tidings.server.stores.common import parse_seq


class Counting(Store):
    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def write_counters(self) -> tuple[int, int] | None:
        return (3, 7)


class NotCounting(Counting):
    def write_counters(self) -> tuple[int, int] | None:
        return None


def test_a_store_that_counts_its_commits_and_writes_is_reported() -> None:
    text = Metrics(Hub(parse_seq), Counting()).render().decode()
    assert "tidings_store_commits_total 3.0" in text
    assert "tidings_store_writes_total 7.0" in text


def test_a_store_that_keeps_no_counters_reports_none() -> None:
    text = Metrics(Hub(parse_seq), NotCounting()).render().decode()
    assert "tidings_store_commits" not in text
    assert "tidings_messages_published_total 0.0" in text


def test_job_series_cap_the_types_and_sum_the_rest_under_other() -> None:
    """The types with the most unfinished jobs get their own series, every status of each
    is present, and the rest add up under `~other`: no job is lost from the totals."""
    counts = {f"t{i:02d}": {"queued": i, "succeeded": 100} for i in range(10)}
    counts["busy"] = {"running": 50}
    series = job_series(counts, cap=3)
    assert list(series) == ["busy", "t09", "t08", OTHER_TYPES]
    assert set(series["busy"]) == set(JOB_STATUSES)
    assert series["busy"]["running"] == 50
    assert series["busy"]["queued"] == 0
    assert series[OTHER_TYPES]["queued"] == sum(range(8))
    assert series[OTHER_TYPES]["succeeded"] == 800
    total = sum(n for per in counts.values() for n in per.values())
    assert sum(n for per in series.values() for n in per.values()) == total
    assert OTHER_TYPES not in job_series(counts)  # under the default cap: no `~other`
    assert not valid_channel(OTHER_TYPES)  # no job type can be named so


def test_job_counts_are_rendered_for_the_scrape_they_are_given() -> None:
    metrics = Metrics(Hub(parse_seq), NotCounting())
    text = metrics.render_with_jobs({"mail": {"queued": 2}}).decode()
    assert 'tidings_jobs{status="queued",type="mail"} 2.0' in text
    assert "tidings_job_types 1.0" in text
    assert "tidings_jobs{" not in metrics.render().decode()  # not kept past that scrape
