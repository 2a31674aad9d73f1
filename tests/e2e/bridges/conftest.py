"""Fixtures of the bridge tests: the real brokers this machine runs, each test on names of
its own (a queue, a table) that it removes at the end.

A broker that is not reachable fails the test, naming the service and how to start it:
the bridges are only known to work where these tests ran against the real thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672/"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def _reachable(port: int, service: str, start: str) -> None:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError as exc:
        pytest.fail(
            f"{service} is not reachable on 127.0.0.1:{port} ({exc}): the bridge tests need "
            f"it running; start it with: {start}"
        )


def unique(prefix: str) -> str:
    """A name no other test (or test process) uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


class Rabbit:
    """The machine's RabbitMQ, through aio-pika, one short connection per call."""

    url = RABBITMQ

    def __init__(self) -> None:
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def _run(self, fn: Callable[[Any], Any]) -> Any:
        import aio_pika

        async def go() -> Any:
            conn = await aio_pika.connect(RABBITMQ, timeout=10)
            try:
                channel = await conn.channel()
                return await fn(channel)
            finally:
                await conn.close()

        return asyncio.run(go())

    def queue(self, arguments: dict[str, Any] | None = None) -> str:
        """A new durable queue (removed at the end of the test)."""
        name = unique("tq")
        self.declare(name, arguments)
        return name

    def declare(self, name: str, arguments: dict[str, Any] | None = None) -> None:
        self.queues.append(name)
        self._run(lambda ch: ch.declare_queue(name, durable=True, arguments=arguments))

    def exchange(self) -> str:
        import aio_pika

        name = unique("tx")
        self.exchanges.append(name)
        self._run(lambda ch: ch.declare_exchange(name, aio_pika.ExchangeType.TOPIC))
        return name

    def publish(
        self,
        routing_key: str,
        bodies: list[bytes],
        message_ids: list[str | None] | None = None,
        exchange: str = "",
    ) -> None:
        """Publish `bodies` in order (persistent, with publisher confirms)."""
        import aio_pika

        ids = message_ids or [None] * len(bodies)

        async def go(ch: Any) -> None:
            ex = ch.default_exchange if not exchange else await ch.get_exchange(exchange)
            for body, mid in zip(bodies, ids, strict=True):
                msg = aio_pika.Message(
                    body, message_id=mid, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
                )
                await ex.publish(msg, routing_key=routing_key)

        self._run(go)

    def count(self, queue: str) -> int:
        """Messages ready in `queue`."""

        async def go(ch: Any) -> int:
            q = await ch.declare_queue(queue, passive=True)
            return int(q.declaration_result.message_count)

        return int(self._run(go))

    def get(self, queue: str) -> bytes | None:
        """Take one message off `queue` (None when it is empty)."""

        async def go(ch: Any) -> bytes | None:
            q = await ch.declare_queue(queue, passive=True)
            msg = await q.get(fail=False)
            if msg is None:
                return None
            await msg.ack()
            return bytes(msg.body)

        result: bytes | None = self._run(go)
        return result

    def cleanup(self) -> None:
        async def go(ch: Any) -> None:
            for name in self.queues:
                await ch.queue_delete(name)
            for name in self.exchanges:
                await ch.exchange_delete(name)

        self._run(go)


@pytest.fixture
def rabbit() -> Iterator[Rabbit]:
    _reachable(5672, "RabbitMQ", "rabbitmq-server -detached")
    r = Rabbit()
    yield r
    r.cleanup()


class Postgres:
    """The machine's PostgreSQL (database `test`), through asyncpg."""

    url = POSTGRES

    def __init__(self) -> None:
        self.tables: list[str] = []

    def run(self, fn: Callable[[Any], Any]) -> Any:
        import asyncpg

        async def go() -> Any:
            conn = await asyncpg.connect(POSTGRES, timeout=10)
            try:
                return await fn(conn)
            finally:
                await conn.close()

        return asyncio.run(go())

    def outbox(self) -> str:
        """A new outbox table, made with the DDL tidings ships (dropped at the end)."""
        from tidings.server.bridges.postgres import outbox_ddl

        table = unique("outbox")
        self.tables.append(table)
        self.run(lambda c: c.execute(outbox_ddl(table)))
        return table

    def insert(self, table: str, rows: list[tuple[str, str | None, str]]) -> list[Any]:
        """Insert (channel, event, data JSON text) rows in one transaction; their
        (id, created_at)."""

        async def go(conn: Any) -> list[Any]:
            async with conn.transaction():
                return [
                    await conn.fetchrow(
                        f"INSERT INTO {table} (channel, event, data) VALUES ($1, $2, $3::jsonb) "
                        "RETURNING id, created_at",
                        *row,
                    )
                    for row in rows
                ]

        result: list[Any] = self.run(go)
        return result

    def count(self, table: str) -> int:
        return int(self.run(lambda c: c.fetchval(f"SELECT count(*) FROM {table}")))

    def cleanup(self) -> None:
        async def go(conn: Any) -> None:
            for table in self.tables:
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
                await conn.execute(f"DROP FUNCTION IF EXISTS {table}_notify()")

        self.run(go)


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    _reachable(
        5432,
        "PostgreSQL",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    )
    p = Postgres()
    yield p
    p.cleanup()


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll `check` every 50 ms until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def sse_and_long_poll(
    url: str, channel: str, count: int, publish: Callable[[], None]
) -> tuple[list[tuple[str, Any]], list[Any]]:
    """An SSE stream and a long poll on `channel` from its start, both waiting when
    `publish` runs (in a thread): the stream's first `count` (event, data) pairs, and the
    data the long poll was answered with."""

    async def both() -> tuple[list[tuple[str, Any]], list[Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=40) as client:

            async def sse() -> list[tuple[str, Any]]:
                got: list[tuple[str, Any]] = []
                event = ""
                async with client.stream(
                    "GET", f"/v1/channels/{channel}/events", params={"after": "0"}
                ) as r:
                    assert r.status_code == 200
                    async for line in r.aiter_lines():
                        if line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            got.append((event, json.loads(line[5:])))
                            event = ""  # each message names its own event, or none
                            if len(got) == count:
                                return got
                return got

            async def long_poll() -> list[Any]:
                r = await client.get(
                    f"/v1/channels/{channel}/messages", params={"after": "0", "wait": 25}
                )
                assert r.status_code == 200
                return [m["data"] for m in r.json()["messages"]]

            sse_task = asyncio.ensure_future(sse())
            poll_task = asyncio.ensure_future(long_poll())
            await asyncio.sleep(0.3)  # both subscribers are (most likely) waiting
            await asyncio.to_thread(publish)
            return await asyncio.wait_for(sse_task, 30), await asyncio.wait_for(poll_task, 30)

    return asyncio.run(both())


def messages(url: str, channel: str) -> list[dict[str, Any]]:
    """Every retained message of `channel` (a short poll from the oldest)."""
    r = httpx.get(
        f"{url}/v1/channels/{channel}/messages", params={"after": "0", "limit": 1000}, timeout=20
    )
    if r.status_code == 404:
        return []
    r.raise_for_status()
    out: list[dict[str, Any]] = r.json()["messages"]
    return out


def bridge(url: str, name: str) -> dict[str, Any]:
    """One bridge as GET /v1/admin/bridges shows it."""
    r = httpx.get(f"{url}/v1/admin/bridges", timeout=20)
    r.raise_for_status()
    found: dict[str, Any] = next(b for b in r.json()["bridges"] if b["name"] == name)
    return found


class CuttableProxy:
    """A TCP proxy on a free loopback port to a broker's port, whose connections are cut
    at once (as a network failure or a broker restart would): the bridge sees its
    connection drop and must reconnect, through the proxy, which keeps accepting.

    Args:
        upstream_port: the broker's port on 127.0.0.1.
        cut_after: cut every connection once this many bytes came from the broker (over
            all connections), from the proxy's own thread: mid-stream whatever the load
            of the machine, where a test polling for progress could come too late.
        delay: seconds of delay added to each chunk from the broker (slows a stream).
    """

    def __init__(
        self, upstream_port: int, cut_after: int | None = None, delay: float = 0.0
    ) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.accepted = 0
        self.cut_after = cut_after
        self.delay = delay
        self.downstream = 0
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_broker: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_broker and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
                if from_broker and self.cut_after is not None:
                    with self.lock:
                        self.downstream += len(data)
                        due = self.downstream >= self.cut_after
                        if due:
                            self.cut_after = None  # once
                    if due:
                        self.cut()
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every open connection (new ones are still accepted)."""
        with self.lock:
            sockets, self.sockets = self.sockets, []
            self.cuts += 1
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.listener.close()
        self.cut()


@pytest.fixture
def proxy() -> Iterator[Callable[..., CuttableProxy]]:
    """Factory: `proxy(5672, cut_after=..., delay=...)` -> a CuttableProxy to that port."""
    made: list[CuttableProxy] = []

    def factory(port: int, cut_after: int | None = None, delay: float = 0.0) -> CuttableProxy:
        p = CuttableProxy(port, cut_after, delay)
        made.append(p)
        return p

    yield factory
    for p in made:
        p.close()


class Nats:
    """The machine's NATS server with JetStream, through nats-py."""

    url = "nats://127.0.0.1:4222"

    def __init__(self) -> None:
        self.streams: list[str] = []

    def run(self, fn: Callable[[Any], Any]) -> Any:
        import nats

        async def go() -> Any:
            nc = await nats.connect(self.url, allow_reconnect=False, connect_timeout=5)
            try:
                return await fn(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(go())

    def stream(self) -> tuple[str, str]:
        """A new stream (deleted at the end of the test) and its subjects' prefix."""
        name = unique("TS")
        prefix = name.lower()
        self.streams.append(name)
        self.run(lambda js: js.add_stream(name=name, subjects=[f"{prefix}.>"]))
        return name, prefix

    def publish(self, subject: str, bodies: list[bytes]) -> list[int]:
        """Publish `bodies` in order; their stream sequence numbers."""

        async def go(js: Any) -> list[int]:
            return [(await js.publish(subject, body)).seq for body in bodies]

        result: list[int] = self.run(go)
        return result

    def created(self, stream: str) -> str:
        """The stream's creation time, as the bridge puts it in a message's bus id."""

        async def go(js: Any) -> str:
            created: str = (await js.stream_info(stream)).created.isoformat()
            return created

        result: str = self.run(go)
        return result

    def cleanup(self) -> None:
        async def go(js: Any) -> None:
            for name in self.streams:
                await js.delete_stream(name)

        self.run(go)


@pytest.fixture
def jetstream() -> Iterator[Nats]:
    _reachable(
        4222,
        "NATS (with JetStream)",
        "start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- "
        "-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server",
    )
    n = Nats()
    yield n
    n.cleanup()


class Mosquitto:
    """The machine's Mosquitto, through aiomqtt (MQTT 5)."""

    url = "mqtt://127.0.0.1:1883"

    def __init__(self) -> None:
        self.client_ids: list[str] = []

    def bridge_client(self, name: str) -> str:
        """The client id of bridge `name`, whose session is ended at the end of the test."""
        client_id = f"tidings-{name}"
        self.client_ids.append(client_id)
        return client_id

    def publish(self, topic: str, bodies: list[bytes], ids: list[str | None] | None = None) -> None:
        """Publish `bodies` at QoS 1, in order, each with its `message-id` user property."""
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        async def go() -> None:
            async with aiomqtt.Client(
                "127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5, timeout=10
            ) as client:
                for body, mid in zip(bodies, ids or [None] * len(bodies), strict=True):
                    props = None
                    if mid is not None:
                        props = Properties(PacketTypes.PUBLISH)
                        props.UserProperty = ("message-id", mid)
                    await client.publish(topic, body, qos=1, properties=props)

        asyncio.run(go())

    def cleanup(self) -> None:
        """End the bridges' persistent sessions (a clean start that keeps nothing)."""
        import aiomqtt

        async def go() -> None:
            for client_id in self.client_ids:
                async with aiomqtt.Client(
                    "127.0.0.1", 1883, identifier=client_id, timeout=10,
                    protocol=aiomqtt.ProtocolVersion.V5, clean_start=True,
                ):  # fmt: skip
                    pass

        asyncio.run(go())


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    _reachable(1883, "Mosquitto (MQTT)", "mosquitto -d -c /etc/mosquitto/mosquitto.conf")
    m = Mosquitto()
    yield m
    m.cleanup()
