"""The RabbitMQ bridge through failures, against the machine's RabbitMQ and real tidings
servers: a SIGKILL mid-stream, a connection cut mid-stream, and a node of two on one
Redis store killed: nothing lost, nothing published twice."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import ServerFactory
from tests.e2e.bridges.conftest import CuttableProxy, Rabbit, bridge, messages, wait_for
from tests.e2e.bridges.test_amqp import _url


@pytest.mark.timeout(150)
def test_a_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(
    rabbit: Rabbit, tidings_server: ServerFactory, tmp_path: Path
) -> None:
    queue = rabbit.queue()
    total = 200
    rabbit.publish(
        queue,
        [json.dumps({"n": n}).encode() for n in range(total)],
        [f"k{n}" for n in range(total)],
    )
    srv = tidings_server(
        store=f"sqlite:///{tmp_path / 't.db'}",
        args=["--bridge", _url(rabbit, queue=queue, channel="feed", prefetch="50")],
    )
    wait_for(lambda: len(messages(srv.url, "feed")) >= 20, what="a first part published")
    srv.stop(signal.SIGKILL)
    assert rabbit.count(queue) > 0, "the kill came too late to test anything"
    srv.start()
    got = wait_for(
        lambda: (m := messages(srv.url, "feed")) and len(m) >= total and m,
        timeout=30,
        what=f"{total} messages",
    )
    assert [m["data"]["n"] for m in got] == list(range(total))
    wait_for(lambda: rabbit.count(queue) == 0, what="the queue drained")


@pytest.mark.timeout(150)
def test_a_connection_cut_mid_stream_loses_nothing_and_duplicates_nothing(
    rabbit: Rabbit, tidings_server: ServerFactory, proxy: Callable[..., CuttableProxy]
) -> None:
    queue = rabbit.queue()
    total = 200
    rabbit.publish(
        queue,
        [json.dumps({"n": n}).encode() for n in range(total)],
        [f"k{n}" for n in range(total)],
    )
    # Cut once ~6 kB of the ~30 kB of deliveries came: mid-stream.
    via = proxy(5672, cut_after=6000)
    url = f"amqp://guest:guest@127.0.0.1:{via.port}/?queue={queue}&channel=feed&name=cut"
    srv = tidings_server(args=["--bridge", url])
    got = wait_for(
        lambda: (m := messages(srv.url, "feed")) and len(m) >= total and m,
        timeout=60,
        what=f"{total} messages",
    )
    assert [m["data"]["n"] for m in got] == list(range(total))
    view = wait_for(
        lambda: (b := bridge(srv.url, "cut"))["acknowledged"] >= total and b, what="the acks"
    )
    assert view["reconnects"] >= 1
    assert (via.cuts, via.accepted) == (1, 2)
    # Each message published once; a redelivery of one committed before the cut (its
    # ack lost) counted as a duplicate.
    assert view["published"] == total
    assert rabbit.count(queue) == 0


@pytest.mark.timeout(150)
def test_two_nodes_on_one_redis_store_share_a_queue_and_a_killed_nodes_messages_come_once(
    rabbit: Rabbit, tidings_server: ServerFactory, redis_url: str
) -> None:
    """Competing consumers on one queue, one shared store: when a node dies, the broker
    hands its unacknowledged messages to the other, whose publish of one the dead node
    had committed is recognised by its key in the shared store."""
    queue = rabbit.queue()
    total = 600
    url = _url(rabbit, queue=queue, channel="feed", name="shared", prefetch="20")
    first = tidings_server(store=redis_url, args=["--bridge", url])
    second = tidings_server(store=redis_url, args=["--bridge", url])
    for node in (first, second):
        wait_for(lambda n=node: bridge(n.url, "shared")["state"] == "running", what="running")
    # Published while both consume, so that the kill falls in the middle of the stream.
    publisher = threading.Thread(
        target=rabbit.publish,
        args=(queue, [json.dumps({"n": n}).encode() for n in range(total)]),
        kwargs={"message_ids": [f"k{n}" for n in range(total)]},
    )
    publisher.start()
    try:
        wait_for(lambda: bridge(first.url, "shared")["published"] >= 30, what="first at work")
        first.stop(signal.SIGKILL)
    finally:
        publisher.join(30)
    got = wait_for(
        lambda: (m := messages(second.url, "feed")) and len(m) >= total and m,
        timeout=60,
        what=f"{total} messages",
    )
    assert sorted(m["data"]["n"] for m in got) == list(range(total))
    assert len(got) == total
    assert bridge(second.url, "shared")["published"] > 0
