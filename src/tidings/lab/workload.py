"""What the lab runs: the patterns, and one workload every pattern is given.

The channel patterns share one workload: `clients` subscribers that each want every
message of a channel on which the lab publishes `rate` messages a second for `seconds`.
The job patterns give each of `clients` clients jobs to submit one after another for
`seconds`, each job taking `job_seconds` on a worker, and have them wait for each result.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = [
    "CHANNEL_PATTERNS",
    "JOB_PATTERNS",
    "LIMITS",
    "Pattern",
    "Workload",
    "parse_list",
    "parse_patterns",
]


class Pattern(enum.StrEnum):
    """How a client learns of an update (its name on the command line and in the JSON)."""

    POLL = "poll"  # short polling: GET messages?after= every interval
    LONGPOLL = "longpoll"  # long polling: GET messages?after=&wait=
    SSE = "sse"  # Server-Sent Events: GET /events, one response
    WS = "ws"  # WebSocket: GET /ws upgraded, one frame per message
    JOB_POLL = "job-poll"  # submit, then GET /v1/jobs/{id} every interval
    JOB_LONGPOLL = "job-longpoll"  # submit, then GET /v1/jobs/{id}?wait=
    JOB_PUSH = "job-push"  # submit, then GET /v1/jobs/{id}/events until the end
    JOB_REQUEST = "job-request"  # request/response: POST /v1/jobs?wait= answers with the result

    @property
    def is_job(self) -> bool:
        return self in JOB_PATTERNS

    @property
    def endpoint(self) -> str:
        """The tidings endpoint this pattern uses."""
        return _ENDPOINTS[self]

    @property
    def label(self) -> str:
        """What the pattern is called in prose."""
        return _LABELS[self]


CHANNEL_PATTERNS = (Pattern.POLL, Pattern.LONGPOLL, Pattern.SSE, Pattern.WS)
JOB_PATTERNS = (Pattern.JOB_POLL, Pattern.JOB_LONGPOLL, Pattern.JOB_PUSH, Pattern.JOB_REQUEST)

_ENDPOINTS = {
    Pattern.POLL: "GET /v1/channels/{c}/messages?after=ID",
    Pattern.LONGPOLL: "GET /v1/channels/{c}/messages?after=ID&wait=S",
    Pattern.SSE: "GET /v1/channels/{c}/events",
    Pattern.WS: "GET /v1/channels/{c}/ws",
    Pattern.JOB_POLL: "POST /v1/jobs, then GET /v1/jobs/{id}",
    Pattern.JOB_LONGPOLL: "POST /v1/jobs, then GET /v1/jobs/{id}?wait=S",
    Pattern.JOB_PUSH: "POST /v1/jobs, then GET /v1/jobs/{id}/events",
    Pattern.JOB_REQUEST: "POST /v1/jobs?wait=S",
}
_LABELS = {
    Pattern.POLL: "short polling",
    Pattern.LONGPOLL: "long polling",
    Pattern.SSE: "SSE",
    Pattern.WS: "WebSocket",
    Pattern.JOB_POLL: "job, polled",
    Pattern.JOB_LONGPOLL: "job, long-polled",
    Pattern.JOB_PUSH: "job, pushed (SSE)",
    Pattern.JOB_REQUEST: "job, request/response",
}


@dataclass(frozen=True)
class Limits:
    """The bounds of every workload input (a lab is a laptop's job, not a load test's)."""

    max_clients: int = 5000
    min_rate: float = 0.1
    max_rate: float = 5000.0
    min_seconds: float = 0.2
    max_seconds: float = 600.0
    min_interval: float = 0.01
    max_interval: float = 60.0
    max_job_seconds: float = 60.0
    max_messages: int = 200_000  # rate x seconds, per pattern
    max_points: int = 20  # sweep points


LIMITS = Limits()


@dataclass(frozen=True)
class Workload:
    """One point of a lab: the same for every pattern it runs.

    Args:
        clients: Subscribers (channel patterns) or job submitters (job patterns).
        rate: Messages published a second on the channel.
        seconds: How long the lab publishes (and job clients submit).
        interval: Seconds between two short polls of one client.
        job_seconds: Seconds each lab job takes on the worker.
    """

    clients: int
    rate: float
    seconds: float
    interval: float
    job_seconds: float

    def check(self) -> None:
        """Raise ValueError naming the option to fix when an input is out of bounds."""
        lim = LIMITS
        if not 1 <= self.clients <= lim.max_clients:
            raise ValueError(f"--clients: {self.clients} is not between 1 and {lim.max_clients}")
        _within("--rate", self.rate, lim.min_rate, lim.max_rate)
        _within("--seconds", self.seconds, lim.min_seconds, lim.max_seconds)
        _within("--interval", self.interval, lim.min_interval, lim.max_interval)
        _within("--job-seconds", self.job_seconds, 0.0, lim.max_job_seconds)
        if self.rate * self.seconds > lim.max_messages:
            raise ValueError(
                f"--rate x --seconds: {self.rate:g} x {self.seconds:g} is over "
                f"{lim.max_messages} messages: lower one of them"
            )

    @property
    def messages(self) -> int:
        """Messages the publisher sends."""
        return max(1, math.floor(self.rate * self.seconds))


def _within(option: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{option}: {value:g} is not between {low:g} and {high:g}")


def parse_list(option: str, text: str, kind: type[int] | type[float]) -> list[float]:
    """A comma-separated list of numbers (`10,100,1000`), at most LIMITS.max_points."""
    values: list[float] = []
    for raw in text.split(","):
        item = raw.strip()
        try:
            values.append(kind(item))
        except ValueError:
            what = "whole numbers" if kind is int else "numbers"
            raise ValueError(
                f"{option}: {item!r} is not a number: give {what}, like 10,100"
            ) from None
    if len(values) > LIMITS.max_points:
        raise ValueError(f"{option}: {len(values)} values; at most {LIMITS.max_points}")
    return values


def parse_patterns(text: str) -> list[Pattern]:
    """`all`, or a comma-separated list of pattern names, in the order given."""
    if text.strip() == "all":
        return list(Pattern)
    chosen: list[Pattern] = []
    for item in text.split(","):
        try:
            pattern = Pattern(item.strip())
        except ValueError:
            names = ", ".join(p.value for p in Pattern)
            raise ValueError(
                f"--patterns: {item.strip()!r} is not a pattern: pick from all, {names}"
            ) from None
        if pattern not in chosen:
            chosen.append(pattern)
    return chosen
