"""The MQTT bridge's outbound side (forward=) against the machine's Mosquitto and real
tidings servers: messages published over HTTP on matching channels reach a subscriber of
their topics in order per channel, with their user properties; through a SIGKILL and a
cut connection nothing is lost, and what is published again at the cut point carries the
same message-id (what an inbound bridge on the other side deduplicates by)."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerFactory, free_port
from tests.e2e.bridges.conftest import (
    CuttableProxy,
    Mosquitto,
    bridge,
    messages,
    unique,
    wait_for,
)
from tests.e2e.bridges.test_config import _serve
from tests.e2e.bridges.test_outbound_amqp import _in_order_with_one_cut_at_most, _publish
from tidings.server.bridges import BridgeConfigError, parse_bridges

LEASE = "2"


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    props: dict[str, str]
    content_type: str | None


class Subscriber:
    """A QoS 1 subscriber of `filter` on the machine's Mosquitto, in a thread of its own,
    keeping every message it receives, in order."""

    def __init__(self, topic_filter: str) -> None:
        self.filter = topic_filter
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(20) or self._error is not None:
            raise RuntimeError(f"the test subscriber did not start: {self._error}")

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._go())
        except BaseException as exc:  # reported by the constructor or by `all`
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _go(self) -> None:
        import aiomqtt

        self._stop = asyncio.Event()
        async with aiomqtt.Client(
            "127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5, timeout=10
        ) as client:
            await client.subscribe(self.filter, qos=1)
            self._ready.set()
            reader = asyncio.ensure_future(self._read(client))
            await self._stop.wait()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, client: Any) -> None:
        async for m in client.messages:
            pairs = getattr(m.properties, "UserProperty", None) or []
            payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
            with self._lock:
                self.received.append(
                    Received(
                        m.topic.value,
                        payload,
                        dict(pairs),
                        getattr(m.properties, "ContentType", None),
                    )
                )

    def all(self) -> list[Received]:
        if self._error is not None:
            raise self._error
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def subscriber(mosquitto: Mosquitto) -> Iterator[Callable[[str], Subscriber]]:
    made: list[Subscriber] = []

    def factory(topic_filter: str) -> Subscriber:
        s = Subscriber(topic_filter)
        made.append(s)
        return s

    yield factory
    for s in made:
        s.close()


def _ids(received: list[Received], channel: str) -> list[int]:
    return [int(m.props["tidings-id"]) for m in received if m.props["tidings-channel"] == channel]


def _url(forward: str, topic: str, port: int = 1883, **more: str) -> str:
    query = "".join(f"&{k}={v}" for k, v in more.items())
    return (
        f"mqtt://127.0.0.1:{port}/?forward={forward}&forward_topic={topic}"
        f"&forward_lease={LEASE}{query}"
    )


def _at_least(sub: Subscriber, count: int, timeout: float = 60.0) -> list[Received]:
    got: list[Received] = wait_for(
        lambda: (r := sub.all()) and len(r) >= count and r,
        timeout=timeout,
        what=f"{count} received",
    )
    return got


@pytest.mark.timeout(120)
def test_messages_on_matching_channels_reach_a_subscriber_in_order_with_properties(
    subscriber: Callable[[str], Subscriber], tidings_server: ServerFactory
) -> None:
    root = unique("fo")
    sub = subscriber(f"{root}/#")
    name = unique("mf")
    srv = tidings_server(
        args=["--bridge", _url("orders.*,audit", f"{root}/{{channel}}", name=name)]
    )
    wait_for(lambda: bridge(srv.url, name)["state"] == "running", what="forwarding")
    _publish(srv.url, "orders.eu", 0, 20, event="order")
    _publish(srv.url, "audit", 0, 5)
    _publish(srv.url, "other", 0, 5)  # not forwarded
    _publish(srv.url, "ordersx", 0, 5)  # not forwarded: orders.* needs the dot
    _publish(srv.url, "orders.us", 0, 10)  # a new channel, found by the scan
    received = _at_least(sub, 35)
    assert _ids(received, "orders.eu") == list(range(1, 21))
    assert _ids(received, "audit") == list(range(1, 6))
    assert _ids(received, "orders.us") == list(range(1, 11))
    first = next(m for m in received if m.props["message-id"] == "orders.eu:1")
    assert first.topic == f"{root}/orders.eu"
    assert first.payload == b'{"n":0}'
    assert first.content_type == "application/json"
    assert first.props == {
        "tidings-channel": "orders.eu",
        "tidings-id": "1",
        "message-id": "orders.eu:1",
        "tidings-event": "order",
    }
    audit = next(m for m in received if m.props["message-id"] == "audit:1")
    assert audit.topic == f"{root}/audit"
    assert "tidings-event" not in audit.props
    view = wait_for(
        lambda: (b := bridge(srv.url, name))["forward"]["forwarded"] == 35 and b,
        what="the counters",
    )
    assert len(sub.all()) == 35
    assert view["kind"] == "mqtt"
    assert view["state"] == "running"
    assert view["forward"]["target"] == f"topic {root}/{{channel}}"


@pytest.mark.timeout(120)
def test_an_mqtt_bridge_of_tidings_reading_the_topic_publishes_each_forwarded_message_once(
    mosquitto: Mosquitto, tidings_server: ServerFactory
) -> None:
    root = unique("rt")
    out, back = unique("mo"), unique("mi")
    mosquitto.bridge_client(back)
    srv = tidings_server(
        args=[
            "--bridge",
            _url("feed", f"{root}/{{channel}}", name=out),
            "--bridge",
            f"{mosquitto.url}/?topic={root}/%23&channel=copy.{{topic}}&name={back}",
        ]
    )
    for name in (out, back):
        wait_for(lambda n=name: bridge(srv.url, n)["state"] == "running", what=f"{name} up")
    _publish(srv.url, "feed", 0, 20, event="tick")
    copy = f"copy.{root}.feed"
    got = wait_for(lambda: (m := messages(srv.url, copy)) and len(m) >= 20 and m, what="20 copied")
    assert [m["data"] for m in got] == [{"n": n} for n in range(20)]
    # A message forwarded again (after a crash, a cut) carries the same message-id: the
    # inbound bridge does not publish it twice.
    mosquitto.publish(f"{root}/feed", [b'{"n":4}'], ids=["feed:5"])
    wait_for(lambda: bridge(srv.url, back)["duplicates"] == 1, what="the replay dropped")
    assert len(messages(srv.url, copy)) == 20


@pytest.fixture
def strict_broker(tmp_path: Path) -> Iterator[int]:
    """A private Mosquitto on a free port whose anonymous clients may read every topic
    and publish only under `allowed/`: the port."""
    port = free_port()
    (tmp_path / "acl").write_text("topic read #\ntopic write allowed/#\n")
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"acl_file {tmp_path / 'acl'}\n"
        # Run as root, Mosquitto would become user mosquitto, who cannot read tmp_path.
        f"user {getpass.getuser()}\n"
    )
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:

        def up() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            return False

        wait_for(up, timeout=10, what="the private Mosquitto")
        yield port
    finally:
        broker.terminate()
        broker.wait(10)


@pytest.mark.timeout(60)
def test_a_message_the_broker_refuses_is_reported_and_not_counted_as_forwarded(
    strict_broker: int, tidings_server: ServerFactory
) -> None:
    name = unique("mdeny")
    srv = tidings_server(
        args=["--bridge", _url("feed", "denied/{channel}", port=strict_broker, name=name)]
    )
    _publish(srv.url, "feed", 0, 3)
    view = wait_for(
        lambda: (b := bridge(srv.url, name))["forward"]["last_error"] and b,
        what="the refusal reported",
    )
    assert "refused the message" in view["forward"]["last_error"]
    assert "Not authorized" in view["forward"]["last_error"]
    assert view["forward"]["forwarded"] == 0


def _check_replays(received: list[Received], channel: str, total: int) -> None:
    """Every message arrived; what came twice came at the cut, with its own message-id."""
    _in_order_with_one_cut_at_most(_ids(received, channel), total)
    for m in received:
        assert m.props["message-id"] == f"{channel}:{m.props['tidings-id']}"
        assert m.payload == b'{"n":%d}' % (int(m.props["tidings-id"]) - 1)


@pytest.mark.timeout(150)
def test_a_sigkill_mid_stream_loses_nothing(
    subscriber: Callable[[str], Subscriber],
    tidings_server: ServerFactory,
    proxy: Callable[..., CuttableProxy],
    tmp_path: Path,
) -> None:
    root = unique("fk")
    sub = subscriber(f"{root}/#")
    total = 300
    via = proxy(1883, delay=0.01)
    name = unique("mkill")
    srv = tidings_server(
        store=f"sqlite:///{tmp_path / 't.db'}",
        # One message at a time, each PUBACK slowed down by the proxy: the stream is still
        # going when the kill comes.
        args=[
            "--bridge",
            _url("feed", f"{root}/{{channel}}", port=via.port, name=name, forward_batch="1"),
        ],
    )
    _publish(srv.url, "feed", 0, total)
    wait_for(lambda: bridge(srv.url, name)["forward"]["forwarded"] >= 30, what="a first part")
    srv.stop(signal.SIGKILL)
    assert len(sub.all()) < total, "the kill came too late to test anything"
    srv.start()
    wait_for(
        lambda: len(set(_ids(sub.all(), "feed"))) == total, timeout=60, what=f"{total} received"
    )
    _check_replays(sub.all(), "feed", total)


@pytest.mark.timeout(150)
def test_a_connection_cut_mid_stream_resumes_without_loss(
    subscriber: Callable[[str], Subscriber],
    tidings_server: ServerFactory,
    proxy: Callable[..., CuttableProxy],
) -> None:
    root = unique("fc")
    sub = subscriber(f"{root}/#")
    total = 300
    via = proxy(1883, delay=0.01)
    name = unique("mcut")
    srv = tidings_server(
        args=[
            "--bridge",
            _url("feed", f"{root}/{{channel}}", port=via.port, name=name, forward_batch="2"),
        ]
    )
    _publish(srv.url, "feed", 0, total)
    wait_for(lambda: bridge(srv.url, name)["forward"]["forwarded"] >= 30, what="a first part")
    via.cut()
    assert bridge(srv.url, name)["forward"]["forwarded"] < total, "the cut came too late"
    wait_for(
        lambda: len(set(_ids(sub.all(), "feed"))) == total, timeout=60, what=f"{total} received"
    )
    _check_replays(sub.all(), "feed", total)
    view = bridge(srv.url, name)
    assert view["forward"]["leases"] >= 2
    assert view["reconnects"] >= 1
    assert via.accepted >= 2


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("topic", "said"),
    [
        ("t/%2B/{channel}", "forward_topic='t/+/{channel}': a topic to publish to"),
        ("t/{subject}", "forward_topic='t/{subject}': unknown placeholder {subject}"),
    ],
)
def test_a_forward_topic_that_cannot_work_stops_the_start(topic: str, said: str) -> None:
    done = _serve(_url("a", topic))
    assert done.returncode == 2, done.stderr
    assert said in " ".join(done.stderr.split()), done.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("topic=t&channel=c&forward_topic=a", "give forward= too"),
        ("forward=a&forward_topic=x/+", "without wildcards (+ #)"),
        ("forward=a&forward_topic=x/%23", "without wildcards (+ #)"),
        ("forward=a&forward_topic=$SYS/{channel}", "not starting with $"),
        ("forward=a&forward_topic=x/{topic}", "unknown placeholder"),
        ("forward=a&forward_topic=" + "x" * 1025, "up to 1024 bytes"),
        (
            "topic=s/%23&channel=orders.{topic}&forward=orders.*",
            "which this bridge's inbound side writes",
        ),
        ("forward=a&channel=x", "channel= is for consuming"),
        ("forward=a&prefetch=5", "prefetch= is a setting of the subscription"),
    ],
)
def test_a_forward_config_that_cannot_work_is_refused(query: str, said: str) -> None:
    with pytest.raises(BridgeConfigError) as refused:
        parse_bridges(f"mqtt://127.0.0.1:1883/?{query}", 1 << 20, 64)
    assert said in str(refused.value)


def test_an_outbound_only_mqtt_bridge_is_named_after_its_topic() -> None:
    ((_, spec),) = parse_bridges(
        "mqtt://127.0.0.1:1883/?forward=a.*&forward_topic=t/{channel}", 1 << 20, 64
    )
    assert spec.name == "mqtt.forward.t_channel"
    assert spec.extra["inbound"] is False
    assert spec.extra["client_id"] == "tidings-mqtt.forward.t_channel"
