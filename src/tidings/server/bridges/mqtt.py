"""The MQTT bridge (MQTT 5, QoS 1), on aiomqtt (`tidings[mqtt]`): inbound and outbound.

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

Outbound (tidings.server.bridges.outbound): with `forward=`, the messages of the matching
channels are published at QoS 1 to `forward_topic=` (a template whose one placeholder is
`{channel}`, the channel's name as it is, dots kept; default `{channel}`; no wildcards,
not starting with `$`), each acknowledged by the broker (a PUBACK without an error code)
before the channel's cursor moves past it; a broker that refuses a message fails the
publish, and the bridge retries. The publishing client has a client id of its own
(`client_id=` and `-out`) and starts clean: the cursors are its state. MQTT 5 user
properties `tidings-channel`, `tidings-id` and `tidings-event` say where a message comes
from, and `message-id` is `{channel}:{id}`: an MQTT bridge of another tidings reading the
topic (its `id_property=` default) publishes a message forwarded again once. The content
type is the message's (`application/json`, or text with `format=text`). A bridge with
`forward=` and no `topic=` only forwards.

    mqtt://127.0.0.1:1883/?forward=orders.*&forward_topic=tidings/{channel}
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
    Template,
    common_spec,
    int_param,
    split_url,
)
from tidings.server.bridges.outbound import (
    FORWARD_PARAMS,
    Forwarder,
    ForwardSpec,
    MessageRefused,
    body_of,
    check_no_loop,
    parse_forward,
    refuse_consuming,
)
from tidings.server.channels import ChannelService

if TYPE_CHECKING:
    import aiomqtt

    from tidings.protocol.messages import Message
    from tidings.server.jobs import JobService

__all__ = ["BRIDGE", "MqttBridge", "MqttForwarder", "parse"]

FIELDS = frozenset({"topic"})
# The parameters of the subscription (topic=), refused on a bridge that only forwards.
SUBSCRIBE_PARAMS = frozenset({"session_expiry", "prefetch", "id_property"})
PARAMS = COMMON_PARAMS | {"topic", "client_id", "forward_topic"} | SUBSCRIBE_PARAMS | FORWARD_PARAMS
# The placeholder of forward_topic=.
FORWARD_FIELDS = frozenset({"channel"})
# The longest forward_topic= template, in UTF-8 bytes: with channel names of at most 200
# characters, whatever it renders stays far below MQTT's 65535-byte topic names.
MAX_FORWARD_TOPIC = 1024
# The longest the broker may take to acknowledge (PUBACK) one forwarded message.
PUBLISH_TIMEOUT = 30.0
# Most forwarded messages awaiting their PUBACK at once (over all channels): packet ids
# are 16-bit, and each one in flight must be told apart.
MAX_IN_FLIGHT = 20_000
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
    forward = parse_forward(params)
    if (not topic and forward is None) or len(topic) > 1024 or "\x00" in topic:
        raise BridgeConfigError(
            "an mqtt bridge needs topic=FILTER: the topic filter to subscribe to, e.g. "
            "topic=sensors/+/temp (# URL-encoded: %23), or forward=CHANNELS to forward"
        )
    if forward is None and "forward_topic" in params:
        raise BridgeConfigError("forward_topic= says where forward= sends: give forward= too")
    if not topic:
        refuse_consuming(params, SUBSCRIBE_PARAMS, "the subscription (topic=)")
    out_topic = None if forward is None else _forward_topic(params.get("forward_topic"))
    if topic:
        default_name = "mqtt." + "".join(c if c.isalnum() else "_" for c in topic)
    else:
        # An outbound-only bridge is named after its topic, its placeholder spelled out.
        shown = (out_topic.text if out_topic else "").translate({ord("{"): None, ord("}"): None})
        default_name = "mqtt.forward." + "".join(
            c if (c.isascii() and c.isalnum()) or c in "._:-" else "_" for c in shown
        )
    spec = common_spec(
        "mqtt",
        url,
        connect_url,
        params,
        FIELDS,
        default_name=default_name[:64],
        default_channel=None,
        max_bytes=max_bytes,
        max_depth=max_depth,
        inbound=bool(topic),
    )
    spec.extra["inbound"] = bool(topic)
    spec.extra["forward"] = forward
    spec.extra["forward_topic"] = out_topic
    if forward is not None:
        check_no_loop(spec, forward)
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


def _forward_topic(text: str | None) -> Template:
    """forward_topic= (default `{channel}`), checked: a topic name to publish to."""
    template = Template(text or "{channel}", FORWARD_FIELDS, "forward_topic")
    literal = template.text.replace("{channel}", "")
    if (
        len(template.text.encode()) > MAX_FORWARD_TOPIC
        or any(c in literal for c in "+#\x00")
        or template.text.startswith("$")
    ):
        raise BridgeConfigError(
            f"forward_topic={template.text[:80]!r}: a topic to publish to is up to "
            f"{MAX_FORWARD_TOPIC} bytes without wildcards (+ #), not starting with $ "
            "(the broker's own topics)"
        )
    return template


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
        forward: ForwardSpec | None = spec.extra["forward"]
        if forward is not None:
            self.forwarder = MqttForwarder(self, forward)

    async def session(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties
        from paho.mqtt.subscribeoptions import SubscribeOptions

        x = self.x
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = x["session_expiry"]
        connect.ReceiveMaximum = x["prefetch"]
        # Never a clean start: the session (what the broker keeps for tidings while it is
        # away, and what it must send again) outlives each connection.
        client = _client(x, x["client_id"], clean_start=False, properties=connect)
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


def _client(x: dict[str, Any], client_id: str, **more: Any) -> aiomqtt.Client:
    """An MQTT 5 client of the bridge's broker (its URL's host, port, user and TLS)."""
    import aiomqtt

    return aiomqtt.Client(
        x["host"],
        x["port"],
        username=x["username"],
        password=x["password"],
        identifier=client_id,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=CONNECT_TIMEOUT,
        tls_context=ssl.create_default_context() if x["tls"] else None,
        **more,
    )


class MqttForwarder(Forwarder):
    """Publishes forwarded messages at QoS 1 on a connection of its own (client id
    `client_id=` and `-out`, a clean start: the channels' cursors are its state): `send`
    returns once the broker acknowledged the message (a PUBACK without an error code; one
    with an error code is a MessageRefused).

    aiomqtt's own publish takes any PUBACK as a success, a refusal (not authorized, quota
    exceeded) too: the PUBACKs are read from paho's callback instead, by packet id.
    """

    def __init__(self, bridge: Bridge, forward: ForwardSpec) -> None:
        super().__init__(bridge, forward)
        self.topic: Template = bridge.spec.extra["forward_topic"]
        self._client: aiomqtt.Client | None = None
        self._paho: Any = None
        self._watch: asyncio.Future[None] | None = None
        # The sends awaiting their PUBACK, by packet id.
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._room = asyncio.Semaphore(MAX_IN_FLIGHT)

    def target(self) -> str:
        return f"topic {self.topic.text}"

    async def connect(self) -> asyncio.Event:
        x = self.bridge.spec.extra
        lost = asyncio.Event()
        client = _client(x, f"{x['client_id']}-out", clean_start=True)
        paho = client._client
        paho.on_publish = self._on_publish
        on_disconnect = paho.on_disconnect

        def disconnected(*args: Any) -> None:
            if self._paho is paho:  # not a late call from a connection given up
                self._fail_pending("the MQTT connection was lost")
            lost.set()
            if on_disconnect is not None:
                on_disconnect(*args)

        paho.on_disconnect = disconnected
        await client.__aenter__()
        self._client, self._paho, self._pending = client, paho, {}

        async def watch() -> None:
            # paho may not see a lost connection (see _watch_socket): the socket is
            # looked at too, and the sends awaiting a PUBACK fail at once.
            try:
                await _watch_socket(paho)
            except ConnectionError as exc:
                self._fail_pending(str(exc))
            finally:
                lost.set()

        self._watch = asyncio.ensure_future(watch())
        return lost

    def _on_publish(self, _client: Any, _userdata: Any, mid: int, reason: Any, _props: Any) -> None:
        sent = self._pending.get(mid)
        if sent is None or sent.done():
            return
        if reason.is_failure:
            # A PUBACK's error code (not authorized, quota exceeded, topic name invalid,
            # ...) is about this message: the connection goes on.
            sent.set_exception(MessageRefused(f"the MQTT broker refused the message: {reason}"))
        else:
            sent.set_result(None)

    def _fail_pending(self, why: str) -> None:
        for sent in self._pending.values():
            if not sent.done():
                sent.set_exception(ConnectionError(why))

    async def send(self, msg: Message) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        paho = self._paho
        if paho is None:
            raise ConnectionError("not connected to MQTT")
        body, content_type = body_of(msg, self.bridge.spec.format)
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.ContentType = content_type
        pairs = [
            ("tidings-channel", msg.channel),
            ("tidings-id", msg.id),
            # What an MQTT bridge's id_property= reads by default: a tidings on the other
            # side publishes a message forwarded again once.
            ("message-id", f"{msg.channel}:{msg.id}"),
        ]
        if msg.event is not None:
            pairs.append(("tidings-event", msg.event))
        props.UserProperty = pairs
        topic = self.topic.render({"channel": msg.channel})
        # Acquired at once while there is room, and in order when there is none (asyncio's
        # semaphore serves its waiters first come, first served): the sends of a batch
        # reach paho in their order.
        async with self._room:
            info = paho.publish(topic, body, 1, False, props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise ConnectionError(f"the MQTT publish failed: {mqtt.error_string(info.rc)}")
            sent = asyncio.get_running_loop().create_future()
            self._pending[info.mid] = sent
            try:
                await asyncio.wait_for(sent, PUBLISH_TIMEOUT)
            except TimeoutError:
                raise ConnectionError(
                    f"no PUBACK from the MQTT broker within {PUBLISH_TIMEOUT:g} s"
                ) from None
            finally:
                if self._pending.get(info.mid) is sent:
                    del self._pending[info.mid]

    async def disconnect(self) -> None:
        client, paho, watch = self._client, self._paho, self._watch
        self._client = self._paho = self._watch = None
        self._fail_pending("disconnected")
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        if client is not None:
            await _close(client, paho)


BRIDGE = MqttBridge
