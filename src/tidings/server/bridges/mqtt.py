"""The MQTT inbound bridge (MQTT 5, QoS 1), on aiomqtt (`tidings[mqtt]`).

    mqtt://127.0.0.1:1883/?topic=sensors/+/temp&channel=sensors.{topic}&event=reading

Subscribes to a topic filter (`topic=`) at QoS 1 in a persistent session (client id
`client_id=`, default `tidings-` and the bridge's name; kept by the broker
`session_expiry` seconds, default 3600, while tidings is away), so the broker keeps
what is published meanwhile and sends again what tidings had not acknowledged. Each
message is published to the channel its template names (`{topic}`: the topic with its
`/` made `.`), then acknowledged (PUBACK) — only after tidings committed it. At most
`prefetch` messages (default 100: the session's Receive Maximum) are unacknowledged.

MQTT has no message id that outlives a delivery (packet ids are reused): a message that
carries one in a user property (`id_property=`, default `message-id`) is published once
however often the broker sends it; one without is published at least once. Retained
messages are sent when the subscription is first made, not at each reconnect. A
malformed or oversized message is recorded on the errors channel (`bridge.errors`) and
acknowledged (MQTT has no dead-letter destination). No lag is shown: MQTT does not say.

A client id has one session: two tidings with the same bridge would take it from each
other (and --workers N with an MQTT bridge is refused at start). Several nodes share the
load with an MQTT 5 shared subscription, each with a client id of its own:
`topic=$share/tidings/sensors/%23&client_id=tidings-node1`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote, urlsplit

from tidings.server.bridges.base import (
    COMMON_PARAMS,
    Bridge,
    BridgeConfigError,
    BridgeSpec,
    Outcome,
    common_spec,
    int_param,
    split_url,
)
from tidings.server.channels import ChannelService

if TYPE_CHECKING:
    import aiomqtt

    from tidings.server.jobs import JobService

__all__ = ["BRIDGE", "MqttBridge", "parse"]

FIELDS = frozenset({"topic"})
PARAMS = COMMON_PARAMS | {"topic", "client_id", "session_expiry", "prefetch", "id_property"}
CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
# Seconds between two looks at the client's socket (_watch_socket).
WATCH_INTERVAL = 1.0
# Linux's TCP states (tcpi_state of TCP_INFO), as include/net/tcp_states.h numbers them.
TCP_ESTABLISHED = 1
_TCP_STATES = {
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}


def parse(url: str, max_bytes: int, max_depth: int) -> BridgeSpec:
    """An `mqtt://` or `mqtts://` bridge URL, checked."""
    connect_url, params = split_url(url, PARAMS)
    topic = params.get("topic", "")
    if not topic or len(topic) > 1024 or "\x00" in topic:
        raise BridgeConfigError(
            "an mqtt bridge needs topic=FILTER: the topic filter to subscribe to, e.g. "
            "topic=sensors/+/temp (# URL-encoded: %23)"
        )
    spec = common_spec(
        "mqtt",
        url,
        connect_url,
        params,
        FIELDS,
        default_name=("mqtt." + "".join(c if c.isalnum() else "_" for c in topic))[:64],
        default_channel=None,
        max_bytes=max_bytes,
        max_depth=max_depth,
    )
    if spec.job is not None:
        raise BridgeConfigError(
            "job= is not available on an mqtt bridge (amqp, nats and postgresql bridges take "
            "it): map the topic to a channel with channel=, or drop job="
        )
    client_id = params.get("client_id") or f"tidings-{spec.name}"
    if not 1 <= len(client_id) <= 64:
        raise BridgeConfigError(f"client_id={client_id!r}: use 1-64 characters")
    parts = urlsplit(connect_url)
    if parts.hostname is None:
        raise BridgeConfigError("the URL names no host: mqtt://HOST:PORT/?topic=...")
    spec.extra.update(
        topic=topic,
        client_id=client_id,
        session_expiry=int_param(params, "session_expiry", 3600, 0, 2**32 - 1),
        prefetch=int_param(params, "prefetch", 100, 1, 65_535),
        id_property=params.get("id_property") or "message-id",
        host=parts.hostname,
        port=parts.port or (8883 if parts.scheme == "mqtts" else 1883),
        tls=parts.scheme == "mqtts",
        username=None if parts.username is None else unquote(parts.username),
        password=None if parts.password is None else unquote(parts.password),
    )
    return spec


async def _close(client: aiomqtt.Client, paho: Any) -> None:
    """Leave the client's context; when its connection is already broken the graceful
    disconnect it waits for never comes (it waits with no timeout): then, after
    CLOSE_TIMEOUT seconds, its socket is taken off the event loop and closed."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.__aexit__(None, None, None), CLOSE_TIMEOUT)
    sock = paho.socket()
    if sock is not None and sock.fileno() >= 0:
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
        sock.close()


def _connection_lost(sock: socket.socket) -> str | None:
    """Why the connection of `sock` is gone, or None while it is open.

    Where the kernel tells a TCP socket's state (Linux: TCP_INFO, whose first byte is
    tcpi_state), anything but ESTABLISHED is a lost connection: a reset or the broker's
    close leaves the socket CLOSE or CLOSE_WAIT even while bytes the client has not read
    are still queued on it. Elsewhere, a peek that reads nothing (the broker's close) or
    fails says so; it cannot see a close behind unread bytes, nor look under TLS.
    """
    tcp_info = getattr(socket, "TCP_INFO", None)
    if tcp_info is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            state = sock.getsockopt(socket.IPPROTO_TCP, tcp_info, 1)[0]
        except OSError as exc:
            return f"its socket cannot be read: {exc}"
        if state != TCP_ESTABLISHED:
            return f"its TCP state is {_TCP_STATES.get(state, state)}"
        return None
    if isinstance(sock, ssl.SSLSocket):
        return None  # a peek would read TLS records: the socket's own errors must tell
    try:
        if sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
            return "the broker closed it"
    except (BlockingIOError, InterruptedError):
        return None  # nothing to read: the connection is open
    except OSError as exc:
        return str(exc)
    return None


async def _watch_socket(paho: Any) -> None:
    """Return when the client's connection is gone. aiomqtt learns of a lost connection
    from paho, which, on uvloop, can miss it: uvloop closes a socket's poll on an error
    without calling paho's reader (and a write registered meanwhile fails in a loop
    callback), so no disconnect follows and the bytes left unread stay on the socket.
    The socket itself is looked at every WATCH_INTERVAL seconds (_connection_lost).
    """
    while True:
        await asyncio.sleep(WATCH_INTERVAL)
        sock = paho.socket()
        if sock is None or sock.fileno() < 0 or not paho.is_connected():
            raise ConnectionError("the MQTT connection was lost")
        if (why := _connection_lost(sock)) is not None:
            raise ConnectionError(f"the MQTT connection was lost: {why}")


class MqttBridge(Bridge):
    """One QoS 1 subscription: each message published to its channel, then PUBACKed."""

    kind: ClassVar[str] = "mqtt"

    def __init__(
        self, spec: BridgeSpec, channels: ChannelService, jobs: JobService | None = None
    ) -> None:
        super().__init__(spec, channels, jobs)
        self.x: dict[str, Any] = spec.extra

    async def session(self) -> None:
        import aiomqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.subscribeoptions import SubscribeOptions

        x = self.x
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = x["session_expiry"]
        connect.ReceiveMaximum = x["prefetch"]
        client = aiomqtt.Client(
            x["host"],
            x["port"],
            username=x["username"],
            password=x["password"],
            identifier=x["client_id"],
            protocol=aiomqtt.ProtocolVersion.V5,
            # Never a clean start: the session (what the broker keeps for tidings while
            # it is away, and what it must send again) outlives each connection.
            clean_start=False,
            properties=connect,
            timeout=CONNECT_TIMEOUT,
            tls_context=ssl.create_default_context() if x["tls"] else None,
        )
        # aiomqtt acknowledges a message as soon as it is queued for the reader; the
        # acknowledgement must wait for tidings' commit, so paho's manual acks are used
        # (aiomqtt does not expose them: its paho client is reached directly).
        paho = client._client
        paho.manual_ack_set(True)
        await client.__aenter__()
        try:
            # Retained messages only when the subscription is new to the session.
            options = SubscribeOptions(qos=1, retainHandling=1)
            await client.subscribe(x["topic"], options=options)
            self.connected()
            consume: asyncio.Future[Any] = asyncio.ensure_future(self._consume(client, paho))
            watch: asyncio.Future[Any] = asyncio.ensure_future(_watch_socket(paho))
            try:
                await asyncio.wait((consume, watch), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (consume, watch):
                    task.cancel()
                await asyncio.gather(consume, watch, return_exceptions=True)
            for task in (consume, watch):
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            if self.stopping:
                return
            raise ConnectionError("the MQTT connection ended")
        finally:
            await _close(client, paho)

    async def _consume(self, client: aiomqtt.Client, paho: Any) -> None:
        async for message in client.messages:
            await self._handle(message)
            # PUBACK, after the commit.
            paho.ack(message.mid, message.qos)
            self.stats.acknowledged += 1
            if self.stopping:
                return

    async def _handle(self, message: aiomqtt.Message) -> None:
        values = {"topic": message.topic.value.replace("/", ".")}
        body = message.payload
        bus_id = self._bus_id(message)
        delivery = await self.deliver(values, body, bus_id)
        if delivery.outcome is Outcome.DEAD:
            await self.record_dead(values, body, bus_id, delivery.reason)

    def _bus_id(self, message: aiomqtt.Message) -> str | None:
        """The message's own id, from its user property named `id_property` (None when
        it has none: published at least once)."""
        props = message.properties
        pairs = getattr(props, "UserProperty", None) or []
        for key, value in pairs:
            if key == self.x["id_property"] and value:
                return f"{message.topic.value}:{value}"
        return None


BRIDGE = MqttBridge
