"""The metrics read the store's declared write counters, when it keeps them."""

from __future__ import annotations

from tidings.server.hub import Hub
from tidings.server.metrics import Metrics
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
