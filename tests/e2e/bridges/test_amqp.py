"""The RabbitMQ bridge against the machine's RabbitMQ and real tidings servers: delivery
into SSE and long-poll subscribers, acknowledgement after commit (a redelivery is not
published twice), dead letters, reconnects, the admin view, the CLI and the metrics.
Failures mid-stream: test_amqp_failures.py."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.e2e.bridges.conftest import Rabbit, bridge, messages, sse_and_long_poll, wait_for
from tidings.server.bridges.base import Bridge


def _url(rabbit: Rabbit, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{rabbit.url}?{query}"


@pytest.mark.timeout(120)
def test_messages_reach_an_sse_and_a_long_poll_subscriber_with_their_routed_channel_and_event(
    rabbit: Rabbit, tidings_server: ServerFactory
) -> None:
    queue = rabbit.queue()
    srv = tidings_server(
        args=["--bridge", _url(rabbit, queue=queue, channel="orders.{routing_key}", event="order")]
    )
    wait_for(lambda: bridge(srv.url, f"amqp.{queue}")["state"] == "running", what="running")
    channel = f"orders.{queue}"

    streamed, polled = sse_and_long_poll(
        srv.url,
        channel,
        3,
        lambda: rabbit.publish(
            queue,
            [json.dumps({"n": n}).encode() for n in range(3)],
            [f"m{n}" for n in range(3)],
        ),
    )
    assert streamed == [("order", {"n": 0}), ("order", {"n": 1}), ("order", {"n": 2})]
    assert polled[0] == {"n": 0}
    wait_for(lambda: bridge(srv.url, f"amqp.{queue}")["acknowledged"] == 3, what="3 acks")
    view = bridge(srv.url, f"amqp.{queue}")
    assert view["published"] == 3
    assert view["duplicates"] == 0
    assert view["kind"] == "amqp"
    assert "guest:***@" in view["url"]
    assert rabbit.count(queue) == 0


@pytest.mark.timeout(120)
def test_a_redelivered_message_tidings_already_committed_is_acknowledged_not_published_again(
    rabbit: Rabbit, tidings_server: ServerFactory
) -> None:
    """The state a crash between the commit and the ack leaves: the message is in the
    channel under its bus id's key, and the broker delivers it again."""
    queue = rabbit.queue()
    name = "orders-in"
    srv = tidings_server(args=["--bridge", _url(rabbit, queue=queue, channel="orders", name=name)])
    # What the bridge committed before it "crashed": the message, under its key.
    key = Bridge.key_for(name, "order-1")
    r = httpx.post(
        f"{srv.url}/v1/channels/orders/messages",
        json={"data": {"n": 1}},
        headers={"idempotency-key": key},
    )
    assert r.status_code == 201
    rabbit.publish(queue, [b'{"n": 1}', b'{"n": 1}', b'{"n": 2}'], ["order-1", "order-1", "o2"])
    wait_for(lambda: bridge(srv.url, name)["acknowledged"] == 3, what="3 acks")
    assert [m["data"] for m in messages(srv.url, "orders")] == [{"n": 1}, {"n": 2}]
    view = bridge(srv.url, name)
    assert (view["published"], view["duplicates"]) == (1, 2)
    assert rabbit.count(queue) == 0


@pytest.mark.timeout(120)
def test_a_malformed_message_is_recorded_on_bridge_errors_and_the_next_is_delivered(
    rabbit: Rabbit, tidings_server: ServerFactory
) -> None:
    queue = rabbit.queue()
    srv = tidings_server(
        args=[
            "--max-message-bytes", "1000",
            "--bridge", _url(rabbit, queue=queue, channel="feed", name="feed-in"),
        ]
    )  # fmt: skip
    rabbit.publish(
        queue, [b"not json{", b'"' + b"x" * 2000 + b'"', b'{"ok": true}'], ["bad", "big", "good"]
    )
    wait_for(lambda: bridge(srv.url, "feed-in")["acknowledged"] == 3, what="3 acks")
    assert [m["data"] for m in messages(srv.url, "feed")] == [{"ok": True}]
    errors = messages(srv.url, "bridge.errors")
    assert [e["event"] for e in errors] == ["bridge.error", "bridge.error"]
    first, second = (e["data"] for e in errors)
    assert first["bridge"] == "feed-in"
    assert "not JSON" in first["reason"]
    assert first["body"] == "not json{"
    assert "max_bytes=1000" in second["reason"]
    assert second["size"] == 2002
    view = bridge(srv.url, "feed-in")
    assert (view["published"], view["dead_lettered"]) == (1, 2)
    assert "dead-lettered" in view["last_error"]


@pytest.mark.timeout(120)
def test_with_dead_letter_reject_a_malformed_message_goes_to_the_queues_dead_letter_exchange(
    rabbit: Rabbit, tidings_server: ServerFactory
) -> None:
    dlq = rabbit.queue()
    queue = rabbit.queue({"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    srv = tidings_server(
        args=["--bridge", _url(rabbit, queue=queue, channel="feed", dead_letter="reject")]
    )
    rabbit.publish(queue, [b"\xff\xfe", b'{"ok": 1}'])
    wait_for(lambda: rabbit.count(dlq) == 1, what="the dead letter")
    assert rabbit.get(dlq) == b"\xff\xfe"
    wait_for(lambda: messages(srv.url, "feed"), what="the next message")
    assert [m["data"] for m in messages(srv.url, "feed")] == [{"ok": 1}]
    view = bridge(srv.url, f"amqp.{queue}")
    assert (view["acknowledged"], view["dead_lettered"]) == (1, 1)
    assert messages(srv.url, "bridge.errors") == []


@pytest.mark.timeout(120)
def test_an_exchange_binding_routes_by_routing_key_and_a_missing_queue_is_retried_until_it_exists(
    rabbit: Rabbit, tidings_server: ServerFactory
) -> None:
    exchange = rabbit.exchange()
    queue = f"tq_later_{exchange[3:]}"
    srv = tidings_server(
        args=[
            "--bridge",
            _url(
                rabbit, queue=queue, exchange=exchange, binding="order.*",
                channel="shop.{routing_key}", event="{exchange}", name="shop",
            ),
        ]
    )  # fmt: skip
    view = wait_for(
        lambda: (b := bridge(srv.url, "shop"))["last_error"] and b, what="the missing queue"
    )
    assert view["state"] in ("backoff", "connecting")
    assert queue in view["last_error"]
    rabbit.declare(queue)
    wait_for(lambda: bridge(srv.url, "shop")["state"] == "running", what="running")
    rabbit.publish("order.paid", [b'{"id": 7}'], exchange=exchange)
    rabbit.publish("invoice.sent", [b'{"id": 8}'], exchange=exchange)  # not bound
    got = wait_for(lambda: messages(srv.url, "shop.order.paid"), what="the routed message")
    assert [(m["event"], m["data"]) for m in got] == [(exchange, {"id": 7})]
    assert bridge(srv.url, "shop")["reconnects"] >= 1


@pytest.mark.timeout(120)
def test_the_bridges_command_and_metrics_show_the_counts(
    rabbit: Rabbit, tidings_server: ServerFactory
) -> None:
    from tests.e2e.helpers import cli_ok

    queue = rabbit.queue()
    srv = tidings_server(args=["--bridge", _url(rabbit, queue=queue, channel="m", name="m-in")])
    rabbit.publish(queue, [b"1", b"2", b"oops"])
    wait_for(lambda: bridge(srv.url, "m-in")["acknowledged"] == 3, what="3 acks")
    table = cli_ok("bridges", "--url", srv.url)
    row = next(line for line in table.splitlines() if "m-in" in line)
    assert "running" in row
    assert row.split("│")[4].strip() == "3"  # acked
    doc = json.loads(cli_ok("bridges", "--url", srv.url, "--json"))
    assert doc["bridges"][0]["dead_lettered"] == 1
    metrics = httpx.get(f"{srv.url}/metrics").text
    assert 'tidings_bridge_messages_total{bridge="m-in",outcome="published"} 2.0' in metrics
    assert 'tidings_bridge_messages_total{bridge="m-in",outcome="dead_lettered"} 1.0' in metrics
    assert 'tidings_bridge_up{bridge="m-in"} 1.0' in metrics
