"""The lab's pure parts: its workload bounds, its percentiles, and sentences that say what
the figures show — including when they contradict the seed's claim."""

from __future__ import annotations

from typing import Any

import pytest

from tidings.lab.measure import percentile
from tidings.lab.report import claims, svg_chart, sweep_notes
from tidings.lab.workload import Pattern, Workload, parse_list, parse_patterns


def row(
    pattern: str, requests: float, clients: int = 10, rate: float = 5.0, **kw: Any
) -> dict[str, Any]:
    """One pattern's figures, as the lab's JSON has them: 100 deliveries."""
    base = {
        "pattern": pattern,
        "title": Pattern(pattern).label,
        "clients": clients,
        "rate": rate,
        "published": 10,
        "expected": 100,
        "delivered": 100,
        "missed": 0,
        "duplicated": 0,
        "requests": requests * 100,
        "requests_per_delivery": requests,
        "bytes_in": 10_000,
        "bytes_out": 1_000,
        "bytes_per_delivery": 110.0,
        "conns_held": float(clients),
        "latency_p50_ms": 5.0,
        "latency_p99_ms": 20.0,
        "cpu_ms_per_delivery": 0.1,
        "publish_s": 2.0,
        "errors": [],
    }
    return {**base, **kw}


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_short_polling_that_is_not_chattier_is_said_to_be_not() -> None:
    """At a rate above the poll frequency the claim does not hold, and the sentence says
    so rather than repeating the seed."""
    said = claims(
        [row("poll", 0.2, rate=50, latency_p50_ms=50.0), row("longpoll", 1.0, rate=50)], 0.1
    )
    assert said[0].startswith("Short polling is too chatty: it made 0.20 requests")
    assert "not here: updates (50/s) come as fast as polls (10/s) or faster" in said[0]
    assert "as claimed" not in said[0]


def test_a_run_too_short_to_tell_says_so_rather_than_give_a_reason() -> None:
    said = claims([row("poll", 1.5, rate=4, published=2), row("longpoll", 1.5, rate=4)], 0.1)
    assert "not in this run, though polls (10/s) outnumber updates (4/s): 2 messages" in said[0]


def test_claims_whose_patterns_did_not_run_say_so() -> None:
    said = claims([row("job-request", 1.0)], 0.1)
    assert said[0] == "Short polling is too chatty: not measured (run poll and longpoll)."
    assert any(s.startswith("SSE and the six-connection limit: not measured") for s in said)
    assert said[-1].startswith("Waiting for a job's result, per result: job, request/response")


def test_a_publisher_that_fell_behind_is_named_with_the_rate_served() -> None:
    said = claims([row("sse", 0.01, publish_s=10.0)], 0.1)  # 10 messages at 5/s: 2 s meant
    assert "SSE: publishing 10 messages took 10.0 s instead of 2 s" in " ".join(said)
    assert "it served 1.0 msg/s, not the 5 asked" in " ".join(said)


def test_a_sweep_finds_where_short_polling_stops_being_the_costlier() -> None:
    points = [
        {
            "clients": 10,
            "rate": r,
            "results": [row("poll", p, rate=r), row("longpoll", 1.0, rate=r)],
        }
        for r, p in ((1, 10.0), (100, 0.1))
    ]
    notes = sweep_notes(points, 0.1)
    assert notes[0].startswith(
        "Short polling makes more requests per delivered message than long polling at 10 "
        "clients at 1 msg/s; fewer at 10 clients at 100 msg/s."
    )
    assert "cross at 10 msg/s" in notes[0]
    svg = svg_chart({"date": "2026-12-06T00:00:00Z", "command": "tidings lab", "points": points})
    assert svg.startswith("<svg") and "poll" in svg and "longpoll" in svg


@pytest.mark.parametrize(
    ("workload", "said"),
    [
        (Workload(0, 5, 1, 0.1, 0.1), "--clients: 0 is not between 1 and 5000"),
        (Workload(1, float("inf"), 1, 0.1, 0.1), "--rate: inf is not between"),
        (Workload(1, 5, 1, 0.001, 0.1), "--interval: 0.001 is not between 0.01 and 60"),
        (Workload(1, 5, 1, 0.1, -1), "--job-seconds: -1 is not between 0 and 60"),
        (Workload(1, 1000, 500, 0.1, 0.1), "--rate x --seconds: 1000 x 500 is over 200000"),
    ],
)
def test_a_workload_out_of_bounds_names_the_option(workload: Workload, said: str) -> None:
    with pytest.raises(ValueError, match="^" + said.replace("+", r"\+").replace(".", r"\.")):
        workload.check()


def test_lists_and_patterns_parse_or_say_what_to_give() -> None:
    assert parse_list("--clients", "10, 100,1000", int) == [10, 100, 1000]
    with pytest.raises(ValueError, match="--rate: '' is not a number"):
        parse_list("--rate", "1,,2", float)
    with pytest.raises(ValueError, match="at most 20"):
        parse_list("--clients", ",".join(["1"] * 21), int)
    assert parse_patterns("sse,poll,sse") == [Pattern.SSE, Pattern.POLL]
    assert parse_patterns("all") == list(Pattern)
