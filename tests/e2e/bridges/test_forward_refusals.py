"""A message the bus refuses stalls its channel only, against real brokers and real
tidings servers: the other channels of the bridge keep forwarding on the same session
and lease (one lease taken, no reconnect), the stalled channel is shown with its error,
nothing of it is skipped, and once the cause is fixed (a stream, an exchange, an ACL) its
messages arrive by themselves, in order."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, free_port
from tests.e2e.bridges.conftest import Nats, Rabbit, bridge, unique, wait_for

LEASE = "2"


def _publish(url: str, channel: str, first: int, count: int, size: int = 0) -> None:
    """Publish messages `{"n": first}` ... on `channel` (with a `pad` of `size` bytes)."""
    with httpx.Client(base_url=url, timeout=20) as http:
        for n in range(first, first + count):
            data: dict[str, Any] = {"n": n}
            if size:
                data["pad"] = "x" * size
            r = http.post(f"/v1/channels/{channel}/messages", json={"data": data})
            assert r.status_code in (200, 201), r.text


def _forward(url: str, name: str) -> dict[str, Any]:
    view: dict[str, Any] = bridge(url, name)["forward"]
    return view


def _metric(url: str, family: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=20).text
    prefix = f'{family}{{bridge="{name}"}} '
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return float(line[len(prefix) :])


def _stalled(url: str, name: str, channel: str, said: str) -> dict[str, Any]:
    """Wait until `channel` is shown stalled with an error saying `said`; the view."""
    view: dict[str, Any] = wait_for(
        lambda: (f := _forward(url, name)) and said in f["stalled"].get(channel, "") and f,
        timeout=20,
        what=f"{channel} stalled ({said})",
    )
    assert view["refused"] >= 1
    assert view["stalled_channels"] == 1
    assert f"channel {channel}: MessageRefused" in view["last_error"]
    return view


def _same_session(url: str, name: str) -> None:
    """The bridge forwarded on one lease, without a reconnect."""
    b = bridge(url, name)
    assert b["forward"]["leases"] == 1
    assert b["forward"]["state"] == "forwarding"
    assert b["reconnects"] == 0


# -- NATS JetStream --------------------------------------------------------------------


def _stream_ids(nats: Nats, stream: str, channel: str) -> list[int]:
    """The Tidings-Id of `channel`'s messages in `stream`, in stream order."""

    async def go(js: Any) -> list[int]:
        info = await js.stream_info(stream)
        ids = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            msg = await js.get_msg(stream, seq)
            if (msg.headers or {}).get("Tidings-Channel") == channel:
                ids.append(int(msg.headers["Tidings-Id"]))
        return ids

    result: list[int] = nats.run(go)
    return result


class PrivateNats(Nats):
    """A NATS server with JetStream of the test's own, on a free port, whose max_payload
    is small."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.url = f"nats://127.0.0.1:{port}"


@pytest.fixture
def small_nats(tmp_path: Path) -> Iterator[PrivateNats]:
    port = free_port()
    conf = tmp_path / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\nmax_payload: 4096\n'
        f'jetstream {{ store_dir: "{tmp_path / "js"}" }}\n'
    )
    server = subprocess.Popen(
        ["nats-server", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: _up(port), timeout=10, what="the private NATS server")
        yield PrivateNats(port)
    finally:
        server.terminate()
        server.wait(10)


def _up(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def _nats_url(port: int, forward: str, subject: str, name: str) -> str:
    return (
        f"nats://127.0.0.1:{port}/?forward={forward}&forward_subject={subject}"
        f"&forward_lease={LEASE}&name={name}"
    )


@pytest.mark.timeout(45)
def test_jetstream_a_message_over_max_payload_stalls_its_channel_only(
    small_nats: PrivateNats, tidings_server: ServerFactory, tmp_path: Path
) -> None:
    stream, prefix = small_nats.stream()
    name = unique("jbig")
    port = int(small_nats.url.rpartition(":")[2])
    # The messages are stored first, then a server with the bridge reads them: the refused
    # message comes in one batch with those around it.
    store = f"sqlite:///{tmp_path / 'tidings.db'}"
    first = tidings_server(store=store)
    _publish(first.url, "big", 1, 2)
    _publish(first.url, "big", 3, 1, size=5000)  # over the server's max_payload
    _publish(first.url, "big", 4, 2)
    _publish(first.url, "small", 1, 20)
    first.stop()
    srv = tidings_server(
        store=store,
        args=["--bridge", _nats_url(port, "big,small", f"{prefix}.{{channel}}", name)],
    )
    wait_for(
        lambda: _stream_ids(small_nats, stream, "small") == list(range(1, 21)),
        timeout=20,
        what="small forwarded",
    )
    view = _stalled(srv.url, name, "big", "max_payload (4096)")
    # The stalled messages show as waiting.
    wait_for(lambda: _forward(srv.url, name)["lag"] == 3, timeout=10, what="a lag of 3")
    # What came before the refused message went; nothing after it went first.
    assert _stream_ids(small_nats, stream, "big") == [1, 2]
    # The other channel still flows while `big` is stalled.
    _publish(srv.url, "small", 21, 10)
    wait_for(
        lambda: _stream_ids(small_nats, stream, "small") == list(range(1, 31)),
        timeout=20,
        what="small forwarded on",
    )
    assert _stream_ids(small_nats, stream, "big") == [1, 2]
    _same_session(srv.url, name)
    assert _metric(srv.url, "tidings_bridge_forward_stalled", name) == 1.0
    assert _metric(srv.url, "tidings_bridge_forward_refused_total", name) >= view["refused"]


@pytest.mark.timeout(45)
def test_jetstream_a_subject_no_stream_captures_stalls_its_channel_until_one_does(
    jetstream: Nats, tidings_server: ServerFactory
) -> None:
    prefix = unique("jr").lower()
    flow = unique("TF")
    jetstream.streams.append(flow)
    jetstream.run(lambda js: js.add_stream(name=flow, subjects=[f"{prefix}.flow"]))
    name = unique("jnone")
    srv = tidings_server(
        args=["--bridge", _nats_url(4222, "held,flow", f"{prefix}.{{channel}}", name)]
    )
    _publish(srv.url, "held", 1, 5)
    _publish(srv.url, "flow", 1, 10)
    wait_for(
        lambda: _stream_ids(jetstream, flow, "flow") == list(range(1, 11)),
        timeout=20,
        what="flow forwarded",
    )
    _stalled(srv.url, name, "held", f"no JetStream stream captures subject {prefix}.held")
    _publish(srv.url, "held", 6, 3)
    _publish(srv.url, "flow", 11, 5)
    wait_for(
        lambda: _stream_ids(jetstream, flow, "flow") == list(range(1, 16)),
        timeout=20,
        what="flow forwarded on",
    )
    # The operator adds the stream: the stalled channel moves on by itself, in order.
    held = unique("TH")
    jetstream.streams.append(held)
    jetstream.run(lambda js: js.add_stream(name=held, subjects=[f"{prefix}.held"]))
    wait_for(
        lambda: _stream_ids(jetstream, held, "held") == list(range(1, 9)),
        timeout=20,
        what="held forwarded in order",
    )
    wait_for(lambda: _forward(srv.url, name)["stalled"] == {}, timeout=10, what="unstalled")
    _same_session(srv.url, name)


# -- RabbitMQ -----------------------------------------------------------------------------


def _bound_queue(rabbit: Rabbit, exchange: str, alternate: bool = False) -> str:
    """A queue that gets every message of the topic exchange `exchange`, made now (with
    `alternate`: through the exchange's alternate exchange, so the queue is reachable the
    moment the exchange exists)."""
    import aio_pika

    queue = rabbit.queue()
    rabbit.exchanges.append(exchange)

    async def go(ch: Any) -> None:
        q = await ch.declare_queue(queue, passive=True)
        if alternate:
            rabbit.exchanges.append(f"{exchange}.ae")
            ae = await ch.declare_exchange(f"{exchange}.ae", aio_pika.ExchangeType.FANOUT)
            await q.bind(ae)
            await ch.declare_exchange(
                exchange, aio_pika.ExchangeType.TOPIC, arguments={"alternate-exchange": ae.name}
            )
        else:
            ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC)
            await q.bind(ex, routing_key="#")

    rabbit._run(go)
    return queue


def _queue_ids(rabbit: Rabbit, queue: str, got: list[int]) -> list[int]:
    """Take the ready messages of `queue`, adding their tidings ids to `got`."""
    while (body := rabbit.get_message(queue)) is not None:
        got.append(body)
    return got


class _Rabbit(Rabbit):
    def get_message(self, queue: str) -> int | None:
        """Take one message off `queue`: its tidings-id header (None: the queue is empty)."""

        async def go(ch: Any) -> int | None:
            q = await ch.declare_queue(queue, passive=True)
            msg = await q.get(fail=False)
            if msg is None:
                return None
            await msg.ack()
            return int(msg.headers["tidings-id"])

        result: int | None = self._run(go)
        return result


@pytest.fixture
def rabbit_ids(rabbit: Rabbit) -> _Rabbit:
    """The `rabbit` fixture (its cleanup), able to read tidings ids off a queue."""
    r = _Rabbit()
    r.queues, r.exchanges = rabbit.queues, rabbit.exchanges
    return r


@pytest.mark.timeout(45)
def test_amqp_a_templated_exchange_that_does_not_exist_stalls_its_channel_until_made(
    rabbit_ids: _Rabbit, tidings_server: ServerFactory
) -> None:
    rabbit = rabbit_ids
    root = unique("tx")
    flow_queue = _bound_queue(rabbit, f"{root}.flow")
    name = unique("anone")
    url = (
        f"{rabbit.url}?forward=held,flow&forward_exchange={root}.{{channel}}"
        f"&forward_lease={LEASE}&name={name}"
    )
    srv = tidings_server(args=["--bridge", url])
    _publish(srv.url, "held", 1, 5)
    _publish(srv.url, "flow", 1, 10)
    flow: list[int] = []
    wait_for(
        lambda: _queue_ids(rabbit, flow_queue, flow) == list(range(1, 11)),
        timeout=20,
        what="flow forwarded",
    )
    _stalled(srv.url, name, "held", "NOT_FOUND")
    _publish(srv.url, "held", 6, 3)
    _publish(srv.url, "flow", 11, 5)
    wait_for(
        lambda: _queue_ids(rabbit, flow_queue, flow) == list(range(1, 16)),
        timeout=20,
        what="flow forwarded on",
    )
    # The operator makes the exchange: the stalled channel moves on by itself, in order.
    held_queue = _bound_queue(rabbit, f"{root}.held", alternate=True)
    held: list[int] = []
    wait_for(
        lambda: _queue_ids(rabbit, held_queue, held) == list(range(1, 9)),
        timeout=20,
        what="held forwarded in order",
    )
    wait_for(lambda: _forward(srv.url, name)["stalled"] == {}, timeout=10, what="unstalled")
    _same_session(srv.url, name)
    assert _queue_ids(rabbit, flow_queue, flow) == list(range(1, 16))


@pytest.mark.timeout(45)
def test_amqp_a_message_the_broker_nacks_stalls_its_channel_until_it_is_taken(
    rabbit_ids: _Rabbit, tidings_server: ServerFactory
) -> None:
    rabbit = rabbit_ids
    root = unique("tx")
    flow_queue = _bound_queue(rabbit, f"{root}.flow")
    # A queue of 2 messages at most that refuses more: the broker nacks the third.
    held_queue = rabbit.queue({"x-max-length": 2, "x-overflow": "reject-publish"})

    async def bind(ch: Any) -> None:
        import aio_pika

        ex = await ch.declare_exchange(f"{root}.held", aio_pika.ExchangeType.TOPIC)
        q = await ch.declare_queue(held_queue, passive=True)
        await q.bind(ex, routing_key="#")

    rabbit.exchanges.append(f"{root}.held")
    rabbit._run(bind)
    name = unique("anack")
    # One message at a time: a message taken after a refused one of the same batch would
    # otherwise come first (see tidings.server.bridges.outbound).
    url = (
        f"{rabbit.url}?forward=held,flow&forward_exchange={root}.{{channel}}"
        f"&forward_lease={LEASE}&forward_batch=1&name={name}"
    )
    srv = tidings_server(args=["--bridge", url])
    _publish(srv.url, "held", 1, 5)
    wait_for(lambda: rabbit.count(held_queue) == 2, timeout=20, what="the queue full")
    _stalled(srv.url, name, "held", "nacked")
    _publish(srv.url, "flow", 1, 10)
    flow: list[int] = []
    wait_for(
        lambda: _queue_ids(rabbit, flow_queue, flow) == list(range(1, 11)),
        timeout=20,
        what="flow forwarded",
    )
    # Taking messages off the queue makes room: the stalled channel moves on by itself.
    held: list[int] = []
    wait_for(
        lambda: _queue_ids(rabbit, held_queue, held) == list(range(1, 6)),
        timeout=30,
        what="held forwarded in order",
    )
    wait_for(lambda: _forward(srv.url, name)["stalled"] == {}, timeout=10, what="unstalled")
    _same_session(srv.url, name)


# -- MQTT -----------------------------------------------------------------------------------


class AclBroker:
    """A private Mosquitto on a free port whose anonymous clients may read every topic and
    publish under the topics its ACL file allows; `allow` adds a topic and reloads it."""

    def __init__(self, tmp_path: Path) -> None:
        self.port = free_port()
        self.acl = tmp_path / "acl"
        self.acl.write_text("topic read #\ntopic write flow/#\n")
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
            f"acl_file {self.acl}\n"
            # Run as root, Mosquitto would become user mosquitto, who cannot read tmp_path.
            f"user {getpass.getuser()}\n"
        )
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def allow(self, topic: str) -> None:
        with self.acl.open("a") as f:
            f.write(f"topic write {topic}\n")
        self.process.send_signal(signal.SIGHUP)  # Mosquitto reloads its ACL file

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[AclBroker]:
    broker = AclBroker(tmp_path)
    try:
        wait_for(lambda: _up(broker.port), timeout=10, what="the private Mosquitto")
        yield broker
    finally:
        broker.close()


class Received:
    """Every message a QoS 1 subscriber of `#` on `port` receives: (topic, tidings-id)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.items: list[tuple[str, int]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._go()), daemon=True)
        self.thread.start()
        assert self.ready.wait(10), "the test subscriber did not start"

    async def _go(self) -> None:
        import aiomqtt

        async with aiomqtt.Client(
            "127.0.0.1", self.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=10
        ) as client:
            await client.subscribe("#", qos=1)
            self.ready.set()
            reader = asyncio.ensure_future(self._read(client))
            while not self.stop.is_set():
                await asyncio.sleep(0.05)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _read(self, client: Any) -> None:
        async for m in client.messages:
            props = dict(getattr(m.properties, "UserProperty", None) or [])
            with self.lock:
                self.items.append((m.topic.value, int(props["tidings-id"])))

    def ids(self, topic: str) -> list[int]:
        with self.lock:
            return [i for t, i in self.items if t == topic]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)


@pytest.mark.timeout(45)
def test_mqtt_a_topic_the_acl_refuses_stalls_its_channel_until_allowed(
    acl_broker: AclBroker, tidings_server: ServerFactory
) -> None:
    received = Received(acl_broker.port)
    try:
        name = unique("mdeny")
        url = (
            f"mqtt://127.0.0.1:{acl_broker.port}/?forward=held,flow&forward_topic={{channel}}/t"
            f"&forward_lease={LEASE}&name={name}"
        )
        srv = tidings_server(args=["--bridge", url])
        _publish(srv.url, "held", 1, 5)
        _publish(srv.url, "flow", 1, 10)
        wait_for(lambda: received.ids("flow/t") == list(range(1, 11)), timeout=20, what="flow")
        _stalled(srv.url, name, "held", "Not authorized")
        _publish(srv.url, "held", 6, 3)
        _publish(srv.url, "flow", 11, 5)
        wait_for(lambda: received.ids("flow/t") == list(range(1, 16)), timeout=20, what="flow on")
        # Mosquitto drops a refused QoS 1 message: nothing of `held` went out yet.
        assert received.ids("held/t") == []
        # The operator allows the topic: the stalled channel moves on by itself, in order.
        acl_broker.allow("held/#")
        wait_for(
            lambda: received.ids("held/t") == list(range(1, 9)), timeout=20, what="held in order"
        )
        wait_for(lambda: _forward(srv.url, name)["stalled"] == {}, timeout=10, what="unstalled")
        _same_session(srv.url, name)
    finally:
        received.close()
