"""Bridges between tidings' channels and the buses applications already run.

Each bridge is declared by a URL (`tidings serve --bridge URL`, repeatable, or
TIDINGS_BRIDGES: URLs separated by spaces or new lines); its scheme says its kind, its
query parameters its mapping:

    amqp://guest:guest@127.0.0.1:5672/?queue=orders&channel=orders.{routing_key}&event=order
    nats://127.0.0.1:4222/?stream=ORDERS&subject=orders.>&channel=orders.{subject}
    mqtt://127.0.0.1:1883/?topic=sensors/+/temp&channel=sensors.{topic}
    postgresql://app@127.0.0.1:5432/app?table=tidings_outbox

Parameters every kind takes: `channel=` (a template: `{placeholders}` filled from the
bus message), `event=` (a template too; none by default), or instead `job=TYPE` (each
bus message becomes a job of that type, its body the payload; with `max_attempts=`,
`priority=`, `job_timeout=` (seconds) for the jobs and `max_replies=` (replies awaited
at once, default 1000) — see tidings.server.bridges.base), `name=` (what the admin view,
the metrics and the idempotency keys call the bridge), `format=json|text` (how the body
becomes the message's data), `max_bytes=` and `max_depth=` (larger or deeper bodies are
dead-lettered; at most the server's own limits), `errors=` (the channel dead-letter
records go to, `bridge.errors` by default). The kinds' own are in their modules:
tidings.server.bridges.amqp, tidings.server.bridges.jetstream,
tidings.server.bridges.mqtt, tidings.server.bridges.postgres. Kafka has no bridge: no
broker runs where the tests run, and no bridge ships untested.

Every URL is checked when the server starts: a mistake, or a driver that is not
installed (named with the extra that brings it: `pip install 'tidings[amqp]'`), stops
the start with a message saying what to fix. Drivers are imported only when a bridge
of their kind is declared.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
from typing import Any

from tidings.server.bridges.base import Bridge, BridgeConfigError, BridgeSpec, BridgeState, shown
from tidings.server.channels import ChannelService
from tidings.server.jobs import JobService

__all__ = ["KINDS", "BridgeConfigError", "Bridges", "parse_bridges", "split_bridges"]

# Most bridges one server runs.
MAX_BRIDGES = 32
MAX_URL = 4096


class _Kind:
    """A bridge kind: its URL schemes, the module that implements it (`parse`,
    `BRIDGE`), its driver's module and the extra that installs it."""

    def __init__(
        self, name: str, schemes: tuple[str, ...], module: str, driver: str, extra: str
    ) -> None:
        self.name = name
        self.schemes = schemes
        self.module = module
        self.driver = driver
        self.extra = extra

    def parse(self, url: str, max_bytes: int, max_depth: int) -> BridgeSpec:
        spec: BridgeSpec = importlib.import_module(self.module).parse(url, max_bytes, max_depth)
        return spec

    def bridge(
        self, spec: BridgeSpec, channels: ChannelService, jobs: JobService | None = None
    ) -> Bridge:
        bridge: Bridge = importlib.import_module(self.module).BRIDGE(spec, channels, jobs)
        return bridge


KINDS = (
    _Kind("amqp", ("amqp", "amqps"), "tidings.server.bridges.amqp", "aio_pika", "amqp"),
    _Kind("nats", ("nats", "tls"), "tidings.server.bridges.jetstream", "nats", "nats"),
    _Kind("mqtt", ("mqtt", "mqtts"), "tidings.server.bridges.mqtt", "aiomqtt", "mqtt"),
    _Kind(
        "postgres",
        ("postgresql", "postgres"),
        "tidings.server.bridges.postgres",
        "asyncpg",
        "postgres",
    ),
)


def _kind_of(url: str) -> _Kind:
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    for kind in KINDS:
        if scheme in kind.schemes:
            return kind
    known = ", ".join(f"{s}://" for k in KINDS for s in k.schemes)
    raise BridgeConfigError(
        f"bridge {shown(url)}: unknown kind {scheme + '://' if scheme else '(no scheme)'}; "
        f"use one of {known}"
    )


def split_bridges(text: str) -> list[str]:
    """TIDINGS_BRIDGES (or joined --bridge options): URLs separated by white space."""
    return text.split()


def parse_bridges(
    text: str, max_bytes: int, max_depth: int, processes: int = 1
) -> list[tuple[_Kind, BridgeSpec]]:
    """Every bridge URL in `text`, checked; BridgeConfigError naming the URL and what to
    fix, or the extra to install when a kind's driver is missing. `processes`: how many
    server processes will each run every bridge (--workers)."""
    urls = split_bridges(text)
    if len(urls) > MAX_BRIDGES:
        raise BridgeConfigError(f"{len(urls)} bridges: one server runs at most {MAX_BRIDGES}")
    out: list[tuple[_Kind, BridgeSpec]] = []
    names: set[str] = set()
    for url in urls:
        if len(url) > MAX_URL:
            raise BridgeConfigError(f"a bridge URL is {len(url)} characters: at most {MAX_URL}")
        kind = _kind_of(url)
        try:
            spec = kind.parse(url, max_bytes, max_depth)
        except BridgeConfigError as exc:
            raise BridgeConfigError(f"bridge {shown(url)}: {exc}") from None
        if importlib.util.find_spec(kind.driver) is None:
            raise BridgeConfigError(
                f"bridge {spec.shown_url}: the {kind.name} driver ({kind.driver}) is not "
                f"installed: pip install 'tidings[{kind.extra}]'"
            )
        if processes > 1 and kind.name == "mqtt":
            raise BridgeConfigError(
                f"bridge {spec.shown_url}: an MQTT session belongs to one client id, and "
                f"each of the {processes} processes of --workers would take it from the "
                "others; run MQTT bridges in a tidings of one process"
            )
        if spec.name in names:
            raise BridgeConfigError(
                f"two bridges are named {spec.name!r}: give each its own ?name="
            )
        names.add(spec.name)
        out.append((kind, spec))
    return out


class Bridges:
    """The bridges one server runs: started with it, stopped with it.

    Args:
        specs: the parsed bridge URLs (`parse_bridges`).
        channels: the channel service they publish through.
        jobs: the job service job bridges (`job=TYPE`) submit through; without it, a job
            bridge is a BridgeConfigError.
    """

    def __init__(
        self,
        specs: list[tuple[_Kind, BridgeSpec]],
        channels: ChannelService,
        jobs: JobService | None = None,
    ) -> None:
        self.bridges = [kind.bridge(spec, channels, jobs) for kind, spec in specs]

    def start(self) -> None:
        """Start every bridge (each connects in the background, retrying)."""
        for bridge in self.bridges:
            bridge.start()

    async def stop(self) -> None:
        """Stop every bridge; what they had not acknowledged stays on its bus."""
        await asyncio.gather(*(b.stop() for b in self.bridges), return_exceptions=True)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every bridge as `GET /v1/admin/bridges` shows it."""
        return [b.snapshot() for b in self.bridges]

    def running(self) -> int:
        """How many bridges are connected and consuming, or standing by (forward= only,
        another node holding the lease)."""
        return sum(
            b.stats.state in (BridgeState.RUNNING, BridgeState.STANDBY) for b in self.bridges
        )
