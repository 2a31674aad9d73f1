"""The RabbitMQ bridge's outbound side (forward=) against the machine's RabbitMQ and real
tidings servers: messages published over HTTP on matching channels reach a queue bound
to the forward exchange, in order per channel, with their ids and headers; through a
SIGKILL, a cut connection and two nodes on one Redis store nothing is lost, and a
message comes twice only at a failure's cut point (the same message_id)."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.e2e.bridges.conftest import CuttableProxy, Rabbit, bridge, unique, wait_for
from tests.e2e.bridges.test_config import _serve
from tidings.server.bridges import BridgeConfigError, parse_bridges

# Leases short enough that a node killed mid-stream is replaced within seconds.
LEASE = "2"


def _bind(rabbit: Rabbit, key: str = "#") -> tuple[str, str]:
    """A new topic exchange and a durable queue bound to it with `key` (both removed at
    the end of the test)."""
    exchange = rabbit.exchange()
    queue = rabbit.queue()

    async def go(ch: Any) -> None:
        q = await ch.declare_queue(queue, passive=True)
        await q.bind(exchange, routing_key=key)

    rabbit._run(go)
    return exchange, queue


class Got:
    """Messages taken off a queue so far (a test's collector, polled)."""

    def __init__(self, rabbit: Rabbit, queue: str) -> None:
        self.rabbit = rabbit
        self.queue = queue
        self.messages: list[dict[str, Any]] = []

    def take(self) -> list[dict[str, Any]]:
        """Take every ready message (acknowledged), appended in queue order."""

        async def go(ch: Any) -> list[dict[str, Any]]:
            q = await ch.declare_queue(self.queue, passive=True)
            out = []
            while (msg := await q.get(fail=False)) is not None:
                await msg.ack()
                out.append(
                    {
                        "message_id": msg.message_id,
                        "type": msg.type,
                        "routing_key": msg.routing_key,
                        "content_type": msg.content_type,
                        "headers": dict(msg.headers or {}),
                        "body": json.loads(msg.body),
                        "persistent": msg.delivery_mode == 2,
                    }
                )
            return out

        self.messages += self.rabbit._run(go)
        return self.messages

    def ids(self, channel: str) -> list[int]:
        """The message ids of `channel` in the order they came."""
        return [
            int(m["message_id"].rpartition(":")[2])
            for m in self.messages
            if m["message_id"].rpartition(":")[0] == channel
        ]


def _publish(url: str, channel: str, start: int, count: int, event: str | None = None) -> None:
    with httpx.Client(base_url=url, timeout=20) as http:
        for n in range(start, start + count):
            body: dict[str, Any] = {"data": {"n": n}}
            if event is not None:
                body["event"] = event
            r = http.post(f"/v1/channels/{channel}/messages", json=body)
            assert r.status_code in (200, 201), r.text


def _forward_url(rabbit: Rabbit, exchange: str, forward: str, port: int = 5672, **more: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"forward_exchange": exchange, **more}.items())
    return f"amqp://guest:guest@127.0.0.1:{port}/?forward={forward}&forward_lease={LEASE}&{query}"


def _in_order_with_one_cut_at_most(ids: list[int], total: int) -> None:
    """`ids` hold 1..total, in order, except that after a failure the bus may get again
    the messages after the last cursor write: one step back, then in order again."""
    assert sorted(set(ids)) == list(range(1, total + 1)), (
        f"lost: {set(range(1, total + 1)) - set(ids)}"
    )
    backs = [i for i in range(1, len(ids)) if ids[i] <= ids[i - 1]]
    for i in range(1, len(ids)):
        assert ids[i] <= ids[i - 1] + 1, f"a gap after {ids[i - 1]}: {ids[i]}"
    # Each step back starts a replay of messages already sent, from a cursor.
    assert len(backs) <= 2, f"replays at {[ids[i] for i in backs]}"


@pytest.mark.timeout(120)
def test_messages_on_matching_channels_reach_a_bound_queue_in_order_with_ids_and_headers(
    rabbit: Rabbit, tidings_server: ServerFactory
) -> None:
    exchange, queue = _bind(rabbit)
    name = unique("fw")
    srv = tidings_server(
        args=["--bridge", _forward_url(rabbit, exchange, "orders.*,audit", name=name)]
    )
    wait_for(lambda: bridge(srv.url, name)["state"] == "running", what="forwarding")
    _publish(srv.url, "orders.eu", 0, 20, event="order")
    _publish(srv.url, "audit", 0, 5)
    _publish(srv.url, "other", 0, 5)  # not forwarded
    _publish(srv.url, "ordersx", 0, 5)  # not forwarded: orders.* needs the dot
    _publish(srv.url, "orders.us", 0, 10)  # a new channel, found by the scan
    got = Got(rabbit, queue)
    wait_for(lambda: len(got.take()) >= 35, timeout=30, what="35 forwarded messages")
    assert got.ids("orders.eu") == list(range(1, 21))
    assert got.ids("audit") == list(range(1, 6))
    assert got.ids("orders.us") == list(range(1, 11))
    assert {m["message_id"].rpartition(":")[0] for m in got.messages} == {
        "orders.eu",
        "audit",
        "orders.us",
    }
    first = next(m for m in got.messages if m["message_id"] == "orders.eu:1")
    assert first["body"] == {"n": 0}
    assert first["routing_key"] == "orders.eu"
    assert first["type"] == "order"
    assert first["content_type"] == "application/json"
    assert first["persistent"]
    assert first["headers"] == {
        "tidings-channel": "orders.eu",
        "tidings-id": "1",
        "tidings-event": "order",
    }
    audit = next(m for m in got.messages if m["message_id"] == "audit:3")
    assert audit["body"] == {"n": 2}
    assert "tidings-event" not in audit["headers"]
    view = wait_for(
        lambda: (b := bridge(srv.url, name))["forward"]["forwarded"] == 35 and b,
        what="the counters",
    )
    forward = view["forward"]
    assert forward["state"] == "forwarding"
    assert forward["holder"] is True
    assert forward["channels"] == 3
    assert forward["missed"] == 0
    assert forward["lag"] == 0
    assert forward["patterns"] == "orders.*,audit"
    assert view["kind"] == "amqp"
    # Nothing else reaches the queue.
    assert len(got.take()) == 35
    metrics = httpx.get(f"{srv.url}/metrics", timeout=20).text
    assert f'tidings_bridge_forwarded_total{{bridge="{name}"}} 35.0' in metrics


@pytest.mark.timeout(120)
def test_a_bridge_consumes_one_queue_and_forwards_other_channels_to_an_exchange(
    rabbit: Rabbit, tidings_server: ServerFactory
) -> None:
    exchange, out_queue = _bind(rabbit, "replies.#")
    in_queue = rabbit.queue()
    name = unique("both")
    url = _forward_url(rabbit, exchange, "replies.*", queue=in_queue, channel="requests", name=name)
    srv = tidings_server(args=["--bridge", url])
    wait_for(lambda: bridge(srv.url, name)["state"] == "running", what="running")
    rabbit.publish(in_queue, [b'{"q": 1}'], ["r1"])
    wait_for(lambda: bridge(srv.url, name)["published"] == 1, what="the inbound message")
    _publish(srv.url, "replies.a", 0, 3)
    got = Got(rabbit, out_queue)
    wait_for(lambda: len(got.take()) >= 3, what="3 forwarded")
    assert got.ids("replies.a") == [1, 2, 3]
    # The inbound message's channel is not forwarded.
    assert len(got.take()) == 3


@pytest.mark.timeout(120)
def test_a_missing_exchange_is_reported_and_forwarding_starts_once_it_exists(
    rabbit: Rabbit, tidings_server: ServerFactory
) -> None:
    exchange = unique("tx")
    name = unique("late")
    srv = tidings_server(args=["--bridge", _forward_url(rabbit, exchange, "feed", name=name)])
    _publish(srv.url, "feed", 0, 5)
    view = wait_for(
        lambda: (b := bridge(srv.url, name))["forward"]["last_error"] and b,
        what="the failure reported",
    )
    assert "NOT_FOUND" in view["forward"]["last_error"]
    assert view["state"] in ("backoff", "connecting")
    assert view["forward"]["forwarded"] == 0
    # The exchange made (and a queue bound), the retry forwards what waited.
    import aio_pika

    async def make(ch: Any) -> None:
        # The queue is reachable the moment the exchange exists, through its alternate
        # exchange: a retry landing between declaring the exchange and binding a queue
        # to it would otherwise be confirmed and dropped by the broker as unroutable.
        ae = await ch.declare_exchange(f"{exchange}.ae", aio_pika.ExchangeType.FANOUT)
        q = await ch.declare_queue(queue, durable=True)
        await q.bind(ae)
        await ch.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, arguments={"alternate-exchange": ae.name}
        )

    queue = unique("tq")
    rabbit.exchanges.append(f"{exchange}.ae")
    rabbit.exchanges.append(exchange)
    rabbit.queues.append(queue)
    rabbit._run(make)
    got = Got(rabbit, queue)
    wait_for(lambda: len(got.take()) >= 5, timeout=60, what="5 forwarded")
    assert got.ids("feed") == [1, 2, 3, 4, 5]
    assert bridge(srv.url, name)["state"] == "running"


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("forward", "store"), [("feed", "memory"), ("fe*", "redis")])
def test_a_deleted_channel_made_again_is_forwarded_from_its_first_message(
    rabbit: Rabbit,
    tidings_server: ServerFactory,
    request: pytest.FixtureRequest,
    forward: str,
    store: str,
) -> None:
    exchange, queue = _bind(rabbit)
    name = unique("del")
    srv = tidings_server(
        store="memory://" if store == "memory" else request.getfixturevalue("redis_url"),
        args=["--bridge", _forward_url(rabbit, exchange, forward, name=name)],
    )
    got = Got(rabbit, queue)
    _publish(srv.url, "feed", 0, 3)
    wait_for(lambda: len(got.take()) >= 3, what="3 forwarded")
    assert httpx.delete(f"{srv.url}/v1/channels/feed", timeout=20).status_code == 204
    # The channel's next life starts at id 1 again: its cursor went with it.
    wait_for(
        lambda: bridge(srv.url, name)["forward"]["channels"] == (forward == "feed"),
        what="the worker of a deleted channel found by a pattern gone",
    )
    _publish(srv.url, "feed", 10, 2)
    wait_for(lambda: len(got.take()) >= 5, timeout=30, what="2 more forwarded")
    assert got.ids("feed") == [1, 2, 3, 1, 2]
    assert [m["body"]["n"] for m in got.messages] == [0, 1, 2, 10, 11]


@pytest.mark.timeout(150)
def test_a_sigkill_mid_stream_resumes_from_the_cursor_and_loses_nothing(
    rabbit: Rabbit,
    tidings_server: ServerFactory,
    proxy: Callable[..., CuttableProxy],
    tmp_path: Path,
) -> None:
    exchange, queue = _bind(rabbit)
    total = 300
    via = proxy(5672, delay=0.01)
    name = unique("kill")
    srv = tidings_server(
        store=f"sqlite:///{tmp_path / 't.db'}",
        # One message at a time, each confirm slowed down by the proxy: the stream is
        # still going when the kill comes.
        args=[
            "--bridge",
            _forward_url(rabbit, exchange, "feed", port=via.port, name=name, forward_batch="1"),
        ],
    )
    _publish(srv.url, "feed", 0, total)
    wait_for(lambda: bridge(srv.url, name)["forward"]["forwarded"] >= 30, what="a first part")
    srv.stop(signal.SIGKILL)
    got = Got(rabbit, queue)
    before = len(got.take())
    assert before < total, "the kill came too late to test anything"
    srv.start()
    wait_for(
        lambda: len(set(got.ids("feed") if got.take() else [])) >= total,
        timeout=60,
        what=f"{total} messages",
    )
    ids = got.ids("feed")
    _in_order_with_one_cut_at_most(ids, total)
    # What came twice is what was on its way at the kill: one message at most.
    assert len(ids) - total <= 1


@pytest.mark.timeout(150)
def test_a_broker_connection_cut_mid_stream_resumes_without_loss(
    rabbit: Rabbit, tidings_server: ServerFactory, proxy: Callable[..., CuttableProxy]
) -> None:
    exchange, queue = _bind(rabbit)
    total = 300
    via = proxy(5672, delay=0.01)
    name = unique("cut")
    srv = tidings_server(
        args=[
            "--bridge",
            _forward_url(rabbit, exchange, "feed", port=via.port, name=name, forward_batch="2"),
        ]
    )
    _publish(srv.url, "feed", 0, total)
    wait_for(lambda: bridge(srv.url, name)["forward"]["forwarded"] >= 30, what="a first part")
    via.cut()
    assert bridge(srv.url, name)["forward"]["forwarded"] < total, "the cut came too late"
    got = Got(rabbit, queue)
    wait_for(
        lambda: len(set(got.ids("feed") if got.take() else [])) >= total,
        timeout=60,
        what=f"{total} messages",
    )
    ids = got.ids("feed")
    _in_order_with_one_cut_at_most(ids, total)
    view = bridge(srv.url, name)
    assert view["forward"]["leases"] >= 2  # let go at the failure, taken again
    assert view["forward"]["last_error"]
    # An outbound-only bridge's own view is its outbound side's.
    assert view["reconnects"] >= 1
    assert view["last_error"] == view["forward"]["last_error"]
    assert view["state"] == "running"
    assert view["connected_since"] is not None
    assert via.accepted >= 2


@pytest.mark.timeout(150)
def test_history_trimmed_past_the_cursor_is_counted_missed_and_the_rest_forwarded(
    rabbit: Rabbit, tidings_server: ServerFactory, tmp_path: Path
) -> None:
    exchange, queue = _bind(rabbit)
    store = f"sqlite:///{tmp_path / 't.db'}"
    name = unique("trim")
    url = _forward_url(rabbit, exchange, "feed", name=name)
    got = Got(rabbit, queue)
    # Three messages forwarded: the cursor is at 3.
    first = tidings_server(store=store, args=["--bridge", url])
    _publish(first.url, "feed", 0, 3)
    wait_for(lambda: len(got.take()) >= 3, what="3 forwarded")
    first.stop()
    # Meanwhile, without the bridge: 20 more, of which the channel keeps the last 5.
    alone = tidings_server(store=store)
    r = httpx.put(
        f"{alone.url}/v1/channels/feed",
        json={"retention": {"max_messages": 5, "max_age": 3600}},
        timeout=20,
    )
    assert r.status_code == 200, r.text
    _publish(alone.url, "feed", 3, 20)
    alone.stop()
    again = tidings_server(store=store, args=["--bridge", url])
    wait_for(lambda: len(got.take()) >= 8, what="the retained 5 forwarded")
    assert got.ids("feed") == [1, 2, 3, 19, 20, 21, 22, 23]
    view = wait_for(
        lambda: (b := bridge(again.url, name))["forward"]["forwarded"] == 5 and b,
        what="the counters",
    )
    # Messages 4 to 18 went before the bridge could forward them.
    assert view["forward"]["missed"] == 15
    metrics = httpx.get(f"{again.url}/metrics", timeout=20).text
    assert f'tidings_bridge_forward_missed_total{{bridge="{name}"}} 15.0' in metrics


@pytest.mark.timeout(180)
def test_two_nodes_on_one_redis_store_forward_each_message_once_and_a_survivor_takes_over(
    rabbit: Rabbit, tidings_server: ServerFactory, redis_url: str
) -> None:
    exchange, queue = _bind(rabbit)
    name = unique("shared")
    url = _forward_url(rabbit, exchange, "feed.*", name=name)
    first = tidings_server(store=redis_url, args=["--bridge", url])
    second = tidings_server(store=redis_url, args=["--bridge", url])
    wait_for(
        lambda: (
            sorted(bridge(n.url, name)["state"] for n in (first, second)) == ["running", "standby"]
        ),
        what="one node forwarding, the other on standby",
    )
    # Published through both nodes at once.
    threads = [
        threading.Thread(target=_publish, args=(node.url, f"feed.{i}", 0, 100))
        for i, node in enumerate((first, second, first, second))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = Got(rabbit, queue)
    wait_for(lambda: len(got.take()) >= 400, timeout=60, what="400 forwarded")
    # No failure: each message exactly once.
    assert len(got.messages) == 400
    for i in range(4):
        assert got.ids(f"feed.{i}") == list(range(1, 101))
    views = {n.url: bridge(n.url, name)["forward"] for n in (first, second)}
    holder = first if views[first.url]["holder"] else second
    other = second if holder is first else first
    assert views[holder.url]["forwarded"] == 400
    assert views[other.url]["forwarded"] == 0
    assert views[other.url]["state"] == "standby"
    # Standing by is not down: both nodes say the bridge is up.
    for node in (first, second):
        up = f'tidings_bridge_up{{bridge="{name}"}} 1.0'
        assert up in httpx.get(f"{node.url}/metrics").text, node.url
    # The holder dies; the other takes the lease once it expires and goes on.
    holder.stop(signal.SIGKILL)
    _publish(other.url, "feed.0", 100, 50)
    wait_for(
        lambda: len(set(got.ids("feed.0") if got.take() else [])) >= 150,
        timeout=60,
        what="the survivor forwarding",
    )
    _in_order_with_one_cut_at_most(got.ids("feed.0"), 150)
    assert bridge(other.url, name)["forward"]["forwarded"] >= 50


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("forward=orders.*", "forward= needs forward_exchange=NAME"),
        ("forward=*&forward_exchange=x", "forward=* would forward every channel"),
        ("forward=job.*&forward_exchange=x", "channels job.* belong to the job system"),
        ("forward=jo*&forward_exchange=x", "channels job.* belong to the job system"),
        ("forward=job.1&forward_exchange=x", "channels job.* belong to the job system"),
        ("forward=a%20b&forward_exchange=x", "not a channel name"),
        ("forward=,&forward_exchange=x", "forward= is empty"),
        ("forward=orders.*&forward_exchange=x&forward_key={queue}", "unknown placeholder"),
        ("forward=orders.*&forward_exchange=a/b", "an exchange name is up to 255"),
        ("forward_exchange=x&queue=q&channel=a", "give forward= too"),
        ("forward_lease=5&queue=q&channel=a", "give forward= too"),
        ("forward_batch=5&queue=q&channel=a", "give forward= too"),
        ("forward=a&forward_exchange=x&forward_batch=0", "forward_batch=0 is out of range"),
        ("forward=a&forward_exchange=x&forward_lease=1", "forward_lease=1.0 is out of range"),
        (
            "forward=orders.*&forward_exchange=x&queue=q&channel=orders.{routing_key}",
            "which this bridge's inbound side writes",
        ),
        (
            "forward=orders.eu&forward_exchange=x&queue=q&channel=ord{routing_key}",
            "which this bridge's inbound side writes",
        ),
        ("forward=in&forward_exchange=x&queue=q&channel=in", "which this bridge's inbound"),
        (
            "forward=bridge.*&forward_exchange=x&queue=q&channel=in",
            "matches the errors channel",
        ),
        ("forward=a&forward_exchange=x&channel=in", "channel= is for consuming"),
        ("forward=" + ",".join(f"c{i}" for i in range(33)) + "&forward_exchange=x", "at most 32"),
    ],
)
def test_a_forward_config_that_cannot_work_is_refused_saying_what_to_fix(
    query: str, said: str
) -> None:
    with pytest.raises(BridgeConfigError) as refused:
        parse_bridges(f"amqp://guest:guest@127.0.0.1:5672/?{query}", 1 << 20, 64)
    assert said in str(refused.value)
    assert "guest:guest" not in str(refused.value)


def test_forward_configs_that_can_work_are_taken() -> None:
    for query in (
        # The inbound side writes orders, the outbound side forwards orders.eu: no loop.
        "forward=orders.eu&forward_exchange=x&queue=q&channel=orders",
        "forward=replies.*&forward_exchange=x.{channel}&forward_key=k.{channel}&exchange=e&channel=in",
        "forward=a,b.*&forward_exchange=x",  # outbound only
    ):
        ((_, spec),) = parse_bridges(f"amqp://guest:guest@127.0.0.1:5672/?{query}", 1 << 20, 64)
        assert spec.extra["forward"] is not None
        assert "forward" not in spec.connect_url


@pytest.mark.timeout(90)
def test_a_forward_mistake_stops_the_server_start() -> None:
    done = _serve(
        "amqp://guest:guest@127.0.0.1:5672/?forward=orders.*&forward_exchange=x&queue=q&channel=orders.{routing_key}"
    )
    assert done.returncode == 2, done.stderr
    assert "which this bridge's inbound side writes" in " ".join(done.stderr.split())


def test_the_postgres_bridge_does_not_forward_and_says_which_kinds_do() -> None:
    with pytest.raises(BridgeConfigError, match="forward from an amqp:// or nats:// bridge"):
        parse_bridges("postgresql://postgres@127.0.0.1/test?forward=orders.*", 1 << 20, 64)
