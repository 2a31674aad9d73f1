"""Prometheus metrics: one registry per app (never the global one).

Counters on the fan-out path are plain integers on the hub, read at scrape time by a
collector: a Prometheus counter increment per delivery would cost more than the delivery.

Job counts (`tidings_jobs{type,status}`) are the store's queue counts, read at scrape time
(`Metrics.render_with_jobs`): across every node that shares the store. A job type is any
name a client submits, so the series are capped: the MAX_JOB_TYPE_SERIES types with the
most unfinished jobs get their own, the rest are summed under `type="~other"` (`~` is in
no job type), and `tidings_job_types` says how many types there are.

Job outcomes (`tidings_jobs_submitted_total`, `tidings_jobs_finished_total{status}`) are
this process's: counted by its job service as it applies each change (`JobCounters`), so
a cluster's totals are the sum over its nodes. So are the job timings
(`tidings_job_wait_seconds{type}`, `tidings_job_run_seconds{type}`: tidings.server.job_timings),
and the scheduler's firings, skips and drift (`tidings_schedule_firings_total`,
`tidings_schedule_skipped_total`, `tidings_schedule_drift_seconds{type}`), and the bridges'
counts (`tidings_bridge_messages_total{bridge,outcome}`, `tidings_bridge_up{bridge}`,
`tidings_bridge_reconnects_total{bridge}`, `tidings_bridge_lag{bridge}`,
`tidings_bridge_awaiting{bridge}`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.protocol.jobs import JOB_STATUSES, TERMINAL_STATUSES
from tidings.server.auth import AuthService
from tidings.server.bridges import Bridges
from tidings.server.bridges.base import BridgeState
from tidings.server.http.limits import ConnectionLimits
from tidings.server.hub import Hub
from tidings.server.jobs import FINISHED_STATUSES, JobCounters
from tidings.server.schedules import ScheduleCounters
from tidings.server.stores.base import Store

__all__ = ["MAX_JOB_TYPE_SERIES", "OTHER_TYPES", "Metrics", "job_series"]

MAX_JOB_TYPE_SERIES = 50
OTHER_TYPES = "~other"
# Bridge states that count as up: a forward-only bridge on a node without the lease
# stands by, as it should, and must not look down.
_UP = frozenset({BridgeState.RUNNING, BridgeState.STANDBY})

JobCounts = dict[str, dict[str, int]]


def job_series(counts: JobCounts, cap: int = MAX_JOB_TYPE_SERIES) -> JobCounts:
    """`counts` (type -> status -> jobs) with at most `cap` types of their own, ranked by
    unfinished jobs, then by all jobs, then by name; the others summed under OTHER_TYPES.
    Every status is present for every type (0 when none), so no series comes and goes."""

    def rank(type_: str) -> tuple[int, int, str]:
        per = counts[type_]
        unfinished = sum(n for status, n in per.items() if status not in TERMINAL_STATUSES)
        return (-unfinished, -sum(per.values()), type_)

    ranked = sorted(counts, key=rank)
    out: JobCounts = {t: dict.fromkeys(JOB_STATUSES, 0) for t in ranked[:cap]}
    if len(ranked) > cap:
        out[OTHER_TYPES] = dict.fromkeys(JOB_STATUSES, 0)
    for type_, per in counts.items():
        row = out.get(type_, out.get(OTHER_TYPES))
        if row is None:
            continue
        for status, n in per.items():
            row[status] = row.get(status, 0) + n
    return out


class _HubCollector(Collector):
    def __init__(self, hub: Hub, store: Store | None, auth: AuthService | None) -> None:
        self.hub = hub
        self.store = store
        self.auth = auth
        # The server's connection limits, once a server runs the app.
        self.connections: ConnectionLimits | None = None
        # The store's job counts for the scrape being rendered (None: not read).
        self.job_counts: JobCounts | None = None
        # The job service's outcome counters, once the app joins them (None: none).
        self.job_counters: JobCounters | None = None
        # The scheduler's firings, once the app joins them (None: none).
        self.schedule_counters: ScheduleCounters | None = None
        # The bridges to message buses, once the app joins them (None: none).
        self.bridges: Bridges | None = None

    def collect(self) -> Iterable[Metric]:
        yield from self._limits()
        yield from self._jobs()
        yield from self._schedules()
        yield from self._bridges()
        counters = None if self.store is None else self.store.write_counters()
        if counters is not None:
            commits, writes = counters
            c = CounterMetricFamily("tidings_store_commits", "Store transactions committed")
            c.add_metric([], commits)
            yield c
            w = CounterMetricFamily(
                "tidings_store_writes", "Writes committed (several share a commit: group commit)"
            )
            w.add_metric([], writes)
            yield w
        hub = self.hub
        published = CounterMetricFamily(
            "tidings_messages_published", "Messages published (durable) in this process"
        )
        published.add_metric([], hub.published)
        yield published
        delivered = CounterMetricFamily(
            "tidings_messages_delivered", "Frames delivered to live SSE/WebSocket subscribers"
        )
        delivered.add_metric([], hub.delivered)
        yield delivered
        cut = CounterMetricFamily(
            "tidings_subscribers_cut", "Subscribers disconnected for not keeping up"
        )
        cut.add_metric([], hub.cut)
        yield cut
        direct = CounterMetricFamily(
            "tidings_long_polls_answered_by_hub",
            "Long polls whose answer the publish wrote itself, before waking their tasks",
        )
        direct.add_metric([], hub.answered_directly)
        yield direct
        streams = GaugeMetricFamily(
            "tidings_open_streams", "Open streams and parked long polls", labels=["transport"]
        )
        for transport, count in hub.subscribers().items():
            streams.add_metric([transport], count)
        yield streams

    def _bridges(self) -> Iterable[Metric]:
        bridges = self.bridges
        if bridges is None or not bridges.bridges:
            return
        messages = CounterMetricFamily(
            "tidings_bridge_messages",
            "Bus messages a bridge of this process handled, by outcome: acknowledged (to the "
            "bus, after tidings committed them), published (new channel messages), submitted "
            "(new jobs, job=TYPE bridges), replied (job outcomes sent to a request's reply "
            "address), duplicate (a redelivery already published or submitted), dead_lettered",
            labels=["bridge", "outcome"],
        )
        up = GaugeMetricFamily(
            "tidings_bridge_up",
            "1 while a bridge is connected and consuming, or (forward= only) standing by while "
            "another node holds its lease",
            labels=["bridge"],
        )
        reconnects = CounterMetricFamily(
            "tidings_bridge_reconnects",
            "Times a bridge lost its bus and reconnected",
            labels=["bridge"],
        )
        lag = GaugeMetricFamily(
            "tidings_bridge_lag",
            "Messages waiting on the bus for a bridge (a queue's ready messages, an outbox's "
            "rows), when the bus says",
            labels=["bridge"],
        )
        awaiting = GaugeMetricFamily(
            "tidings_bridge_awaiting",
            "Requests a job bridge holds unacknowledged until their jobs end and it replies",
            labels=["bridge"],
        )
        for bridge in bridges.bridges:
            name, s = bridge.spec.name, bridge.stats
            for outcome, count in (
                ("acknowledged", s.acknowledged),
                ("published", s.published),
                ("submitted", s.submitted),
                ("replied", s.replied),
                ("duplicate", s.duplicates),
                ("dead_lettered", s.dead_lettered),
            ):
                messages.add_metric([name, outcome], count)
            up.add_metric([name], 1 if s.state in _UP else 0)
            reconnects.add_metric([name], s.reconnects)
            if s.lag is not None:
                lag.add_metric([name], s.lag)
            if bridge.spec.job is not None:
                held = bridge.awaiting
                awaiting.add_metric([name], 0 if held is None else len(held.tasks))
        yield from (messages, up, reconnects, lag, awaiting)
        yield from self._forwards(bridges)

    def _forwards(self, bridges: Bridges) -> Iterable[Metric]:
        forwarding = [b for b in bridges.bridges if b.forwarder is not None]
        if not forwarding:
            return
        forwarded = CounterMetricFamily(
            "tidings_bridge_forwarded",
            "Channel messages a bridge of this process forwarded to its bus (confirmed by it; "
            "after a failure some are forwarded again)",
            labels=["bridge"],
        )
        missed = CounterMetricFamily(
            "tidings_bridge_forward_missed",
            "Channel messages retention dropped before a bridge of this process forwarded them",
            labels=["bridge"],
        )
        holder = GaugeMetricFamily(
            "tidings_bridge_forward_holder",
            "1 while this process holds a bridge's forward lease (one node forwards)",
            labels=["bridge"],
        )
        lag = GaugeMetricFamily(
            "tidings_bridge_forward_lag",
            "Channel messages waiting to be forwarded by a bridge of this process, as last read",
            labels=["bridge"],
        )
        refused = CounterMetricFamily(
            "tidings_bridge_forward_refused",
            "Channel messages the bus of a bridge of this process refused (each try counts: "
            "the channel waits and tries the message again)",
            labels=["bridge"],
        )
        stalled = GaugeMetricFamily(
            "tidings_bridge_forward_stalled",
            "Channels a bridge of this process holds back because the bus refused their next "
            "message",
            labels=["bridge"],
        )
        for bridge in forwarding:
            view = bridge.forwarder.snapshot()  # type: ignore[union-attr]
            name = bridge.spec.name
            forwarded.add_metric([name], view["forwarded"])
            missed.add_metric([name], view["missed"])
            holder.add_metric([name], 1 if view["holder"] else 0)
            lag.add_metric([name], view["lag"])
            refused.add_metric([name], view["refused"])
            stalled.add_metric([name], view["stalled_channels"])
        yield from (forwarded, missed, holder, lag, refused, stalled)

    def _schedules(self) -> Iterable[Metric]:
        counters = self.schedule_counters
        if counters is None:
            return
        fired = CounterMetricFamily(
            "tidings_schedule_firings",
            "Schedule slots this process fired (it advanced the schedule past the slot's job: "
            "one node per slot)",
        )
        fired.add_metric([], counters.fired)
        yield fired
        skipped = CounterMetricFamily(
            "tidings_schedule_skipped",
            "Schedule slots this process skipped (catch_up skip, or a payload refused)",
        )
        skipped.add_metric([], counters.skipped)
        yield skipped
        drift = HistogramMetricFamily(
            "tidings_schedule_drift_seconds",
            "Time from a schedule's slot to the creation of its job, by job type (counted by "
            "the node that fired the slot)",
            labels=["type"],
        )
        timings = counters.drift
        for type_ in sorted(timings.counts):
            drift.add_metric([type_], timings.cumulative(type_), sum_value=timings.sums[type_])
        yield drift

    def _jobs(self) -> Iterable[Metric]:
        counters = self.job_counters
        if counters is not None:
            submitted = CounterMetricFamily(
                "tidings_jobs_submitted", "Jobs submitted to this process (new ones, not repeats)"
            )
            submitted.add_metric([], counters.submitted)
            yield submitted
            finished = CounterMetricFamily(
                "tidings_jobs_finished",
                "Jobs this process saw end, by status (succeeded, failed, cancelled)",
                labels=["status"],
            )
            for status in FINISHED_STATUSES:
                finished.add_metric([status], counters.finished[status])
            yield finished
            for name, text, timings in (
                (
                    "tidings_job_wait_seconds",
                    "Time a job leased by this process had been ready (since run_at), by type",
                    counters.wait,
                ),
                (
                    "tidings_job_run_seconds",
                    "Time from lease to end of the jobs that succeeded or failed here, by type",
                    counters.run,
                ),
            ):
                histogram = HistogramMetricFamily(name, text, labels=["type"])
                for type_ in sorted(timings.counts):
                    histogram.add_metric(
                        [type_], timings.cumulative(type_), sum_value=timings.sums[type_]
                    )
                yield histogram
        counts = self.job_counts
        if counts is None:
            return
        jobs = GaugeMetricFamily(
            "tidings_jobs",
            f"Jobs in the store by type and status (the {MAX_JOB_TYPE_SERIES} types with the "
            f"most unfinished jobs; the others summed as type {OTHER_TYPES!r})",
            labels=["type", "status"],
        )
        for type_, per in job_series(counts).items():
            for status, n in per.items():
                jobs.add_metric([type_, status], n)
        yield jobs
        types = GaugeMetricFamily("tidings_job_types", "Job types with at least one job stored")
        types.add_metric([], len(counts))
        yield types

    def _limits(self) -> Iterable[Metric]:
        if self.auth is not None:
            refused = self.auth.logins_refused
            logins = CounterMetricFamily(
                "tidings_logins_refused",
                "Logins refused before a password check, by limit (address, account, busy)",
                labels=["reason"],
            )
            for reason in ("address", "account", "busy"):
                logins.add_metric([reason], refused.get(reason, 0))
            yield logins
        limits = self.connections
        if limits is None:
            return
        open_ = GaugeMetricFamily("tidings_connections", "Connections open (HTTP and WebSocket)")
        open_.add_metric([], limits.count)
        yield open_
        cap = GaugeMetricFamily("tidings_connections_limit", "The connection cap in force")
        cap.add_metric([], limits.max_connections)
        yield cap
        cut = CounterMetricFamily(
            "tidings_connections_refused",
            "Connections refused or closed by a limit (max_connections, per_address, "
            "head_too_large, timed_out)",
            labels=["reason"],
        )
        for reason, count in limits.refused.items():
            cut.add_metric([reason], count)
        yield cut


class Metrics:
    """The app's registry, its request-latency histogram, and the ASGI middleware."""

    def __init__(
        self, hub: Hub, store: Store | None = None, auth: AuthService | None = None
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._collector = _HubCollector(hub, store, auth)
        self.registry.register(self._collector)
        self.latency = Histogram(
            "tidings_request_duration_seconds",
            "Time to answer a (non-streaming) HTTP request",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self._children: dict[tuple[str, str, int], Any] = {}

    def watch_jobs(self, counters: JobCounters) -> None:
        """Report the job outcomes a job service counts."""
        self._collector.job_counters = counters

    def watch_schedules(self, counters: ScheduleCounters) -> None:
        """Report the firings a scheduler counts."""
        self._collector.schedule_counters = counters

    def watch_bridges(self, bridges: Bridges) -> None:
        """Report the bridges' counts, state and lag."""
        self._collector.bridges = bridges

    def watch_connections(self, limits: ConnectionLimits) -> None:
        """Report the connection counts of the server running the app."""
        self._collector.connections = limits

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request (label children are cached: `labels()` is not cheap)."""
        key = (method, route, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.latency.labels(method, route, str(status))
        child.observe(seconds)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)

    def render_with_jobs(self, counts: JobCounts | None) -> bytes:
        """The exposition text with the store's job counts (type -> status -> jobs), read
        by the caller just before: None leaves the job gauges out."""
        self._collector.job_counts = counts
        try:
            return generate_latest(self.registry)
        finally:
            self._collector.job_counts = None

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Wrap `app` so each HTTP request's latency is recorded under its route template."""

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status: list[Any] = [500]

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                # Starlette's router leaves the matched route in the scope.
                route = str(getattr(scope.get("route"), "path", "unmatched"))
                self.observe(scope["method"], route, status[0], time.perf_counter() - start)

        return wrapped
