"""What a lab run says: its JSON, one sentence per seed claim, the sweep's notes, the chart.

Every sentence is computed from the run's own figures; none is written in advance. The
chart is a small hand-written SVG (no plotting library): latency against requests per
delivered message, and server CPU per delivered message, by pattern — or, for a sweep,
each pattern's requests and CPU per delivered message at each point.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from tidings.lab.workload import Pattern

__all__ = ["BROWSER_CONNECTIONS", "LINK_BYTES_PER_SECOND", "claims", "svg_chart", "sweep_notes"]

# Connections a browser opens to one origin over HTTP/1.1 (Chromium, Firefox and Safari
# alike); HTTP/2 carries every stream on one.
BROWSER_CONNECTIONS = 6
# A 1 Gbit/s link, in bytes a second: what "saturates the network" is measured against.
LINK_BYTES_PER_SECOND = 125_000_000

# A publisher that took this many times the workload's seconds fell behind its rate.
BEHIND = 1.5
# Long polling is called later than a stream when its p99 is behind by more than this
# many milliseconds (and more than half the stream's p99).
LATE_MS = 5.0
# A p99 latency past this many milliseconds is called out in a sweep's notes.
SLOW_MS = 1000.0

_COLORS = {
    "poll": "#d62728",
    "longpoll": "#ff7f0e",
    "sse": "#2ca02c",
    "ws": "#1f77b4",
    "job-poll": "#e377c2",
    "job-longpoll": "#8c564b",
    "job-push": "#17becf",
    "job-request": "#7f7f7f",
}


def _by_pattern(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["pattern"]: r for r in results}


def _ms(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _cpu(r: dict[str, Any]) -> str:
    value = r.get("cpu_ms_per_delivery")
    return "unknown CPU" if value is None else f"{value:.2f} ms of server CPU"


def _per(r: dict[str, Any]) -> float:
    value = r.get("requests_per_delivery")
    return math.inf if value is None else float(value)


def claims(results: list[dict[str, Any]], interval: float) -> list[str]:
    """One sentence per seed claim, from one point's results (patterns not run are said
    to be missing)."""
    p = _by_pattern(results)
    out: list[str] = []
    poll, longpoll, sse, ws = p.get("poll"), p.get("longpoll"), p.get("sse"), p.get("ws")
    if poll and longpoll:
        rate = poll["rate"]
        chattier = _per(poll) > _per(longpoll)
        if chattier:
            why = (
                f"as claimed: a poll every {interval:g} s asks {1 / interval:g} times a second "
                f"for updates that come {rate:g} times a second, so most polls come back empty"
            )
        elif rate * interval >= 1:
            why = (
                f"not here: updates ({rate:g}/s) come as fast as polls ({1 / interval:g}/s) or "
                "faster, so each poll carries several and short polling pays in latency instead"
            )
        else:
            why = (
                f"not in this run, though polls ({1 / interval:g}/s) outnumber updates "
                f"({rate:g}/s): {poll['published']} messages are too few to tell, run longer"
            )
        out.append(
            f"Short polling is too chatty: it made {_per(poll):.2f} requests and used "
            f"{_cpu(poll)} per delivered message, long polling {_per(longpoll):.2f} and "
            f"{_cpu(longpoll)} — {why} (p50 {_ms(poll['latency_p50_ms'])} against "
            f"{_ms(longpoll['latency_p50_ms'])})."
        )
    else:
        out.append("Short polling is too chatty: not measured (run poll and longpoll).")
    stream = sse or ws
    if longpoll and stream:
        stream_p99 = stream["latency_p99_ms"] or 0
        gap = (longpoll["latency_p99_ms"] or 0) - stream_p99
        verdict = (
            "less chatty than short polling"
            if poll and _per(longpoll) < _per(poll)
            else "no less chatty than short polling at this rate"
        )
        timing = (
            f"{gap:.0f} ms behind the stream at p99: each message after the first of a "
            "burst waits for the next request"
            # Later by more than noise: half the stream's own p99, and at least LATE_MS.
            if gap > max(LATE_MS, stream_p99 / 2)
            else "as timely as the stream at this load: its cost is one request per "
            "message, not lateness"
        )
        out.append(
            f"Long polling is less chatty but not real time: {_per(longpoll):.2f} requests per "
            f"message ({verdict}), delivered at p50 {_ms(longpoll['latency_p50_ms'])} / p99 "
            f"{_ms(longpoll['latency_p99_ms'])} against {stream['pattern'].upper()}'s "
            f"{_ms(stream['latency_p50_ms'])} / {_ms(stream['latency_p99_ms'])} — {timing}."
        )
    else:
        out.append("Long polling is not real time: not measured (run longpoll and sse or ws).")
    if sse:
        per_client = sse["conns_held"] / max(1, sse["clients"])
        fits = math.floor(BROWSER_CONNECTIONS / per_client) if per_client > 0 else 0
        out.append(
            f"SSE is real time but holds a connection: p50 {_ms(sse['latency_p50_ms'])} with "
            f"{_per(sse):.3f} requests per message and {sse['missed']} missed, but each "
            f"subscriber held {per_client:.2f} connection, so one browser fits {fits} streams "
            f"on one origin over HTTP/1.1 ({BROWSER_CONNECTIONS} connections) and the next "
            "waits; tidings answers with GET /v1/events?channel=a&channel=b (many channels, "
            "one stream) and HTTP/2 (one connection for all), and a client that was offline "
            "resumes from Last-Event-ID."
        )
    else:
        out.append("SSE and the six-connection limit: not measured (run sse).")
    fan = ws or sse
    if fan and fan["delivered"]:
        per_message = fan["bytes_in"] / fan["delivered"]
        per_receiver = per_message * fan["rate"]
        receivers = LINK_BYTES_PER_SECOND / per_receiver if per_receiver else math.inf
        out.append(
            f"Pub/sub scales with receivers but saturates the network: each {fan['pattern']} "
            f"delivery took {per_message:.0f} bytes and {_cpu(fan)}, so {fan['clients']} "
            f"receivers at {fan['rate']:g} msg/s drew {per_receiver * fan['clients'] / 1000:.1f} "
            f"kB/s — the server's cost grows as receivers x rate, and a 1 Gbit/s link is full "
            f"at about {receivers:,.0f} receivers of this rate."
        )
    else:
        out.append("Pub/sub and the network: not measured (run ws or sse).")
    out += behind(results)
    jobs = [p[name.value] for name in Pattern if name.is_job and name.value in p]
    if jobs:
        parts = [
            f"{r['title']} {_per(r):.2f} requests, p50 {_ms(r['latency_p50_ms'])}" for r in jobs
        ]
        out.append("Waiting for a job's result, per result: " + "; ".join(parts) + ".")
    return out


def behind(results: list[dict[str, Any]]) -> list[str]:
    """A sentence for each pattern whose publisher fell behind its rate."""
    out = []
    for r in results:
        took, meant = r.get("publish_s"), r["published"] / r["rate"]
        if took is not None and took > BEHIND * max(meant, 1.0):
            out.append(
                f"{r['title']}: publishing {r['published']} messages took {took:.1f} s instead "
                f"of {meant:g} s — the server fell behind, so it served "
                f"{r['published'] / took:.1f} msg/s, not the {r['rate']:g} asked."
            )
    return out


def sweep_notes(points: list[dict[str, Any]], interval: float) -> list[str]:
    """Where the patterns' costs cross along a sweep, and where a browser's six
    connections per origin run out."""
    if len(points) < 2:
        return []
    out: list[str] = []

    def label(point: dict[str, Any]) -> str:
        return f"{point['clients']} clients at {point['rate']:g} msg/s"

    # A point named by what the sweep varies.
    one_rate = len({pt["rate"] for pt in points}) == 1
    one_count = len({pt["clients"] for pt in points}) == 1

    def short(point: dict[str, Any]) -> str:
        if one_rate:
            return f"{point['clients']} clients"
        if one_count:
            return f"{point['rate']:g} msg/s"
        return label(point)

    pairs = []
    for point in points:
        p = _by_pattern(point["results"])
        if "poll" in p and "longpoll" in p:
            pairs.append((point, _per(p["poll"]), _per(p["longpoll"])))
    if pairs:
        over = [label(pt) for pt, poll, longpoll in pairs if poll > longpoll]
        under = [label(pt) for pt, poll, longpoll in pairs if poll <= longpoll]
        out.append(
            "Short polling makes more requests per delivered message than long polling at "
            f"{', '.join(over) or 'no point'}; fewer at {', '.join(under) or 'no point'}. "
            f"By arithmetic a poll every {interval:g} s costs 1/(rate x {interval:g}) requests "
            "per message and a long poll at most 1, so the two cross at "
            f"{1 / interval:g} msg/s: below it short polling is the costlier."
        )
        cpu_pairs = [
            (pt, p["poll"].get("cpu_ms_per_delivery"), p["longpoll"].get("cpu_ms_per_delivery"))
            for pt in points
            for p in [_by_pattern(pt["results"])]
            if "poll" in p and "longpoll" in p
        ]
        known = [(pt, a, b) for pt, a, b in cpu_pairs if a is not None and b is not None]
        if known:
            dearer = [label(pt) for pt, a, b in known if a > b]
            out.append(
                "In server CPU per delivered message short polling is the dearer at "
                f"{', '.join(dearer) or 'no point'}."
            )
    for pattern in ("sse", "longpoll", "poll"):
        held = [
            (pt, r["conns_held"] / max(1, r["clients"]))
            for pt in points
            for r in pt["results"]
            if r["pattern"] == pattern
        ]
        if not held:
            continue
        per = ", ".join(f"{h:.3g} at {short(pt)}" for pt, h in held)
        fit_each = [
            str(math.floor(BROWSER_CONNECTIONS / h)) if h > 0 else "any number" for _, h in held
        ]
        fits = fit_each[0] if len(set(fit_each)) == 1 else ", ".join(fit_each)
        biting = [label(pt) for pt, h in held if pt["clients"] * h > BROWSER_CONNECTIONS]
        lows = [h for _, h in held if h > 0]
        queued = (
            " (a short poll holds its connection only while it waits for its answer, until "
            "the server falls behind and every poll waits)"
            if lows and max(lows) > 5 * min(lows)
            else ""
        )
        out.append(
            f"{Pattern(pattern).label}: HTTP/1.1 connections held per client, on average: "
            f"{per}{queued}; so one browser (its tabs share the pool) fits {fits} such "
            f"subscriptions to one origin before the next waits; taken as tabs of one "
            f"browser, the clients overflow its {BROWSER_CONNECTIONS} connections at "
            f"{', '.join(biting) or 'no point'}."
        )
    if any(r["pattern"] == "ws" for pt in points for r in pt["results"]):
        out.append(
            "WebSocket connections do not come out of the six-per-origin HTTP/1.1 pool "
            "(browsers cap them separately and far higher)."
        )
    for pt in points:
        out += [f"At {label(pt)}: {sentence}" for sentence in behind(pt["results"])]
        for r in pt["results"]:
            p99 = r["latency_p99_ms"]
            if p99 is not None and p99 > SLOW_MS:
                out.append(
                    f"{r['title']} reached p99 {p99:.0f} ms at {label(pt)}: the server (or "
                    "the clients, when they share its machine) could not keep up."
                )
            if r["missed"] or r["errors"]:
                out.append(
                    f"{r['title']} missed {r['missed']} of {r['expected']} deliveries at "
                    f"{label(pt)}: the clients or the server could not keep up."
                )
    return out


# The chart -------------------------------------------------------------------------------

_W, _H = 460, 360
_PAD_L, _PAD_R, _PAD_T, _PAD_B = 64, 16, 40, 48


def _round_step(value: float) -> float:
    """The least of 1, 2 or 5 times a power of ten that is at least `value`."""
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


class _Axis:
    """A log or linear axis mapping values to pixels."""

    def __init__(self, values: list[float], lo_px: float, hi_px: float, log: bool) -> None:
        self.log = log
        vals = [v for v in values if v is not None and math.isfinite(v) and (v > 0 or not log)]
        if log:
            lo = 10 ** math.floor(math.log10(min(vals))) if vals else 1.0
            hi = 10 ** math.ceil(math.log10(max(vals))) if vals else 10.0
            if hi <= lo:
                hi = lo * 10
        else:
            # Room on the right for the bars' labels; four round steps.
            top = max(vals) * 1.8 if vals and max(vals) > 0 else 1.0
            lo, hi = 0.0, 4 * _round_step(top / 4)
        self.lo, self.hi, self.lo_px, self.hi_px = lo, hi, lo_px, hi_px

    def __call__(self, v: float) -> float:
        if self.log:
            v = max(v, self.lo)
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        return self.lo_px + f * (self.hi_px - self.lo_px)

    def ticks(self) -> list[float]:
        if self.log:
            a, b = round(math.log10(self.lo)), round(math.log10(self.hi))
            return [10.0**e for e in range(a, b + 1)]
        return [self.hi / 4 * i for i in range(5)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if v >= 1 and float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:.3g}" if v >= 0.001 else f"{v:.0e}"


def _panel(
    x0: float, title: str, xlabel: str, ylabel: str, xa: _Axis, ya: _Axis, body: list[str]
) -> list[str]:
    """A panel's frame, ticks, labels and `body`, shifted right by x0."""
    out = [f'<g transform="translate({x0},0)">']
    out.append(
        f'<text x="{_W / 2}" y="22" text-anchor="middle" font-weight="bold">{escape(title)}</text>'
    )
    bottom, top = _H - _PAD_B, _PAD_T
    out.append(
        f'<rect x="{_PAD_L}" y="{top}" width="{_W - _PAD_L - _PAD_R}" height="{bottom - top}" '
        'fill="none" stroke="#999"/>'
    )
    for t in xa.ticks():
        x = xa(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#999"/>'
        )
        out.append(f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for t in ya.ticks():
        y = ya(t)
        out.append(
            f'<line x1="{_PAD_L - 4}" y1="{y:.1f}" x2="{_W - _PAD_R}" y2="{y:.1f}" stroke="#eee"/>'
        )
        out.append(f'<text x="{_PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    out.append(f'<text x="{_W / 2}" y="{_H - 10}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text transform="translate(14,{(top + bottom) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(ylabel)}</text>'
    )
    out += body
    out.append("</g>")
    return out


def _point_panels(results: list[dict[str, Any]]) -> list[str]:
    rows = [r for r in results if r["delivered"]]
    bottom, top = _H - _PAD_B, _PAD_T
    xa = _Axis([r["requests_per_delivery"] for r in rows], _PAD_L, _W - _PAD_R, True)
    lat = [r["latency_p50_ms"] for r in rows] + [r["latency_p99_ms"] for r in rows]
    ya = _Axis(lat, bottom, top, True)
    body = []
    placed: list[tuple[float, float]] = []  # labels so far: a label never covers another
    for r in rows:
        color = _COLORS.get(r["pattern"], "#000")
        x, y50, y99 = (
            xa(r["requests_per_delivery"]),
            ya(r["latency_p50_ms"]),
            ya(r["latency_p99_ms"]),
        )
        body.append(
            f'<line x1="{x:.1f}" y1="{y50:.1f}" x2="{x:.1f}" y2="{y99:.1f}" stroke="{color}"/>'
        )
        body.append(f'<circle cx="{x:.1f}" cy="{y50:.1f}" r="4" fill="{color}"/>')
        ly = y50 - 4
        while any(abs(ly - py) < 12 and abs(x - px) < 60 for px, py in placed):
            ly += 12
        placed.append((x, ly))
        body.append(
            f'<text x="{x + 6:.1f}" y="{ly:.1f}" fill="{color}">{escape(r["pattern"])}</text>'
        )
    left = _panel(
        0, "Latency vs requests", "requests per delivered message (log)",
        "latency ms, p50 dot to p99 (log)", xa, ya, body,
    )  # fmt: skip
    cpu_rows = [r for r in rows if r.get("cpu_ms_per_delivery") is not None]
    ca = _Axis([r["cpu_ms_per_delivery"] for r in cpu_rows], _PAD_L, _W - _PAD_R, False)
    slot = (bottom - top) / max(1, len(cpu_rows))
    bars = []
    for i, r in enumerate(cpu_rows):
        color = _COLORS.get(r["pattern"], "#000")
        y = top + i * slot + slot * 0.15
        w = ca(r["cpu_ms_per_delivery"]) - _PAD_L
        bars.append(
            f'<rect x="{_PAD_L}" y="{y:.1f}" width="{max(w, 1):.1f}" height="{slot * 0.7:.1f}" '
            f'fill="{color}"/>'
        )
        bars.append(
            f'<text x="{_PAD_L + max(w, 1) + 4:.1f}" y="{y + slot * 0.45:.1f}">'
            f"{escape(r['pattern'])} {r['cpu_ms_per_delivery']:.2f} ms, "
            f"{r['bytes_per_delivery']:.0f} B</text>"
        )
    flat = _Axis([1.0], bottom, top, False)
    flat.ticks = list  # type: ignore[method-assign]  # bars: no y ticks
    if not cpu_rows:
        bars.append(
            f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle">server CPU unknown</text>'
        )
    right = _panel(
        _W, "Cost per delivered message", "server CPU ms per delivered message (bytes beside)",
        "", ca, flat, bars,
    )  # fmt: skip
    return left + right


def _sweep_panels(points: list[dict[str, Any]]) -> list[str]:
    bottom, top = _H - _PAD_B, _PAD_T
    n = len(points)

    def xpos(i: int) -> float:
        return _PAD_L + 20 + i * (_W - _PAD_L - _PAD_R - 40) / max(1, n - 1)

    patterns = [r["pattern"] for r in points[0]["results"]]
    out: list[str] = []
    for x0, key, title, ylabel in (
        (0, "requests_per_delivery", "Requests per delivered message", "requests (log)"),
        (_W, "cpu_ms_per_delivery", "Server CPU per delivered message", "CPU ms (log)"),
        (2 * _W, "latency_p50_ms", "Latency, p50", "ms (log)"),
    ):
        values = [r.get(key) for pt in points for r in pt["results"]]
        ya = _Axis([v for v in values if v], bottom, top, True)
        body = []
        for k, pattern in enumerate(patterns):
            color = _COLORS.get(pattern, "#000")
            coords = []
            for i, pt in enumerate(points):
                v = next((r.get(key) for r in pt["results"] if r["pattern"] == pattern), None)
                if v:
                    coords.append((xpos(i), ya(v)))
            if coords:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
                body.append(
                    f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>'
                )
                x, y = coords[-1]
                body.append(
                    # Alternate above and below the line: close lines keep apart labels.
                    f'<text x="{x - 4:.1f}" y="{y - 6 + 18 * (k % 2):.1f}" text-anchor="end" '
                    f'fill="{color}">{escape(pattern)}</text>'
                )
        for i, pt in enumerate(points):
            body.append(
                f'<text x="{xpos(i):.1f}" y="{bottom + 16}" text-anchor="middle">'
                f"{pt['clients']}c {pt['rate']:g}/s</text>"
            )
        xa = _Axis([1.0], _PAD_L, _W - _PAD_R, False)
        xa.ticks = list  # type: ignore[method-assign]  # points are labelled instead
        out += _panel(x0, title, "sweep point: clients, msg/s", ylabel, xa, ya, body)
    return out


def svg_chart(lab: dict[str, Any]) -> str:
    """The chart of a lab run (its JSON, as `tidings lab --json` prints it) as SVG text."""
    points = lab["points"]
    panels = _sweep_panels(points) if len(points) > 1 else _point_panels(points[0]["results"])
    width = (3 if len(points) > 1 else 2) * _W
    caption = (
        f"tidings lab, {lab['date']}: {lab['command']}"
        if lab.get("command")
        else f"tidings lab, {lab['date']}"
    )
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{_H + 24}" '
            f'viewBox="0 0 {width} {_H + 24}" font-family="sans-serif" font-size="11">',
            '<rect width="100%" height="100%" fill="white"/>',
            *panels,
            f'<text x="8" y="{_H + 16}" fill="#555">{escape(caption)}</text>',
            "</svg>",
            "",
        ]
    )
