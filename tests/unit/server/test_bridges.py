"""Bridge URLs, templates and the reconnect backoff: the pure parts of tidings.server.bridges."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tidings.server.bridges import BridgeConfigError, parse_bridges
from tidings.server.bridges.base import Backoff, BridgeSpec, Template
from tidings.server.bridges.mqtt import _connection_lost
from tidings.server.bridges.postgres import outbox_ddl
from tidings.server.http.admin import redacted_settings
from tidings.server.settings import Settings

AMQP = "amqp://guest:secret@127.0.0.1:5672/vhost"


def _one(url: str, max_bytes: int = 1000, max_depth: int = 8) -> BridgeSpec:
    ((_, spec),) = parse_bridges(url, max_bytes, max_depth)
    return spec


def test_the_backoff_grows_doubling_to_its_cap_with_jitter_and_starts_over_after_a_success():
    backoff = Backoff(first=0.1, cap=1.0)
    waits = [backoff.next() for _ in range(8)]
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for wait, ceiling in zip(waits, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling
    backoff.reset()
    assert backoff.next() <= 0.1


def test_the_jitter_spreads_the_waits_of_nodes_that_failed_together():
    waits = {round(Backoff(first=1.0, cap=8.0).next(), 6) for _ in range(50)}
    assert len(waits) > 40


def test_a_template_fills_its_placeholders_and_refuses_unknown_ones():
    t = Template("orders.{routing_key}.{type}", frozenset({"routing_key", "type"}), "channel")
    assert t.render({"routing_key": "eu", "type": "paid"}) == "orders.eu.paid"
    with pytest.raises(BridgeConfigError, match=r"unknown placeholder \{subject\}"):
        Template("a.{subject}", frozenset({"routing_key"}), "channel")
    with pytest.raises(BridgeConfigError, match="unknown placeholder"):
        Template("a.{routing_key!r}", frozenset({"routing_key"}), "channel")
    with pytest.raises(BridgeConfigError, match="write placeholders as"):
        Template("a.{routing_key", frozenset({"routing_key"}), "channel")


def test_an_amqp_url_keeps_the_drivers_own_parameters_and_takes_tidings_ones():
    spec = _one(f"{AMQP}?queue=q&channel=c.{{routing_key}}&heartbeat=5&prefetch=7&name=n1")
    assert spec.connect_url == f"{AMQP}?heartbeat=5"
    assert spec.name == "n1"
    assert spec.extra["prefetch"] == 7
    assert "secret" not in spec.shown_url
    assert spec.max_bytes == 1000


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (f"{AMQP}?queue=q&channel=c&max_bytes=1001", "max_bytes=1001 is out of range: use 1-1000"),
        (f"{AMQP}?queue=q&channel=c&max_depth=x", "max_depth='x' is not an integer"),
        (f"{AMQP}?queue=q&channel=c&event=a%0Ab", "must not contain line breaks"),
        (f"{AMQP}?queue=q&channel=c&errors=job.e", "errors='job.e': channels job.*"),
        (f"{AMQP}?queue=q&channel=c&name=a%20b", "name='a b': use 1-64 characters"),
        (f"{AMQP}?queue=q&channel=c&dead_letter=drop", "dead_letter='drop': use channel"),
        (f"{AMQP}?queue=q&channel=c&binding=a.*", "binding= binds to an exchange"),
        ("postgresql://h/db?poll=0", "poll=0.0 is out of range"),
        ("postgresql://h/db?batch=1&batch=2", "batch= is given twice"),
        ("kafka://h:9092/?topic=a", "unknown kind kafka://"),
        ("mqtt://h/?channel=c", "needs topic=FILTER"),
        ("mqtt://h/?topic=a&job=mail", "job= is not available on an mqtt bridge"),
        (f"{AMQP}?forward=a&forward_exchange=x&prefetch=5", "prefetch= is a setting of consuming"),
        ("nats://h:4222/?forward=a&subject=foo", "subject= is a setting of consuming"),
        ("nats://h:4222/?forward=a&durable=d", "durable= is a setting of consuming"),
        ("mqtt://h/?forward=a&forward_topic=x/+", "without wildcards (+ #)"),
        ("mqtt://h/?forward=a&forward_topic=x/%23/{channel}", "without wildcards (+ #)"),
        ("mqtt://h/?forward=a&forward_topic=x/{id}", "unknown placeholder {id}"),
        ("mqtt://h/?forward=a&forward_topic=$x/{channel}", "not starting with $"),
        ("mqtt://h/?forward=a&session_expiry=5", "session_expiry= is a setting of the subscr"),
        ("mqtt://h/?topic=a&channel=c&forward_topic=t", "forward_topic= says where forward="),
        ("mqtt://h/?topic=a&channel=c&forward_lease=5", "forward_lease= is a setting of forward="),
        ("nats://h:4222/?subject=a&channel=c", "needs stream=NAME"),
        ("nats://h:4222/?stream=a.b&channel=c", "stream='a.b': use 1-64 characters"),
        ("nats://h:4222/?stream=S&channel=c&dead_letter=x", "dead_letter='x': use channel"),
        ("no-scheme", "unknown kind (no scheme)"),
        (f"{AMQP}?queue=q&job=mail&channel=c", "job= and channel= exclude each other"),
        (f"{AMQP}?queue=q&job=mail&event=e", "job= and event= exclude each other"),
        (f"{AMQP}?queue=q&job=", "job='': a job type is 1-200 characters"),
        (f"{AMQP}?queue=q&job=a%20b", "job='a b': a job type is"),
        (f"{AMQP}?queue=q&job=m&max_attempts=0", "max_attempts=0 is out of range: use 1-100"),
        (f"{AMQP}?queue=q&job=m&max_attempts=x", "max_attempts='x' is not an integer"),
        (f"{AMQP}?queue=q&job=m&priority=99999999999", "priority=99999999999 is out of range"),
        (f"{AMQP}?queue=q&job=m&job_timeout=0", "job_timeout=0.0 is out of range"),
        (f"{AMQP}?queue=q&job=m&max_replies=0", "max_replies=0 is out of range: use 1-100000"),
        (f"{AMQP}?queue=q&channel=c&max_attempts=2", "max_attempts= is a job bridge's"),
        ("nats://h:4222/?stream=S&job=m&channel=c", "job= and channel= exclude each other"),
        ("postgresql://h/db?job=m&event=e", "job= and event= exclude each other"),
    ],
)
def test_a_url_that_cannot_work_is_refused_saying_what_to_fix(url: str, said: str):
    with pytest.raises(BridgeConfigError) as info:
        parse_bridges(url, 1000, 8)
    assert said in str(info.value)
    assert "secret" not in str(info.value)


def test_a_plus_in_a_query_value_is_a_plus_an_mqtt_wildcard_not_a_space():
    spec = _one("mqtts://u:p%40ss@broker:8883/?topic=home/+/temp&channel=h.{topic}")
    assert spec.extra["topic"] == "home/+/temp"
    assert (spec.extra["host"], spec.extra["port"], spec.extra["tls"]) == ("broker", 8883, True)
    assert spec.extra["password"] == "p@ss"  # noqa: S105 (a test URL's)
    assert spec.extra["client_id"] == f"tidings-{spec.name}"
    assert "p%40ss" not in spec.shown_url


def test_an_mqtt_bridge_is_refused_in_a_server_of_several_processes():
    url = "mqtt://h/?topic=a&channel=c"
    assert len(parse_bridges(url, 10, 2, processes=1)) == 1
    with pytest.raises(BridgeConfigError, match="an MQTT session belongs to one client id"):
        parse_bridges(url, 10, 2, processes=4)
    assert len(parse_bridges(f"{AMQP}?queue=a&channel=x", 10, 2, processes=4)) == 1
    with pytest.raises(BridgeConfigError, match="an MQTT session belongs to one client id"):
        parse_bridges("mqtt://h/?forward=a", 10, 2, processes=4)


def test_an_mqtt_bridge_that_only_forwards_publishes_to_its_channel_by_default():
    spec = _one("mqtt://h/?forward=orders.*")
    assert spec.extra["inbound"] is False
    assert spec.extra["forward_topic"].render({"channel": "orders.eu"}) == "orders.eu"
    assert spec.name == "mqtt.forward.channel"
    assert spec.extra["client_id"] == "tidings-mqtt.forward.channel"


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A connected loopback TCP pair (client, the listener's end), closed at the end."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=5)
        server, _ = listener.accept()
    yield client, server
    client.close()
    server.close()


def _until_lost(sock: socket.socket) -> str | None:
    """_connection_lost of `sock`, asked for up to 2 s until it names a loss."""
    deadline = time.monotonic() + 2.0
    while (why := _connection_lost(sock)) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return why


linux_tcp_info = pytest.mark.skipif(
    not hasattr(socket, "TCP_INFO"),
    reason="no TCP_INFO (not Linux): there the watch falls back to a peek",
)


@linux_tcp_info
@pytest.mark.parametrize(
    ("reset", "state"), [(True, "CLOSE"), (False, "CLOSE_WAIT")], ids=["reset", "closed"]
)
def test_a_lost_mqtt_connection_is_seen_even_behind_bytes_the_client_has_not_read(
    tcp_pair: tuple[socket.socket, socket.socket], reset: bool, state: str
) -> None:
    client, server = tcp_pair
    server.sendall(b"x" * 672)
    time.sleep(0.05)
    assert _connection_lost(client) is None
    if reset:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()
    assert _until_lost(client) == f"its TCP state is {state}"
    # A peek alone still reads a byte: it would take the connection for open.
    assert client.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"x"


def test_bridges_are_separated_by_white_space_and_their_names_must_differ():
    specs = parse_bridges(f"{AMQP}?queue=a&channel=x\n\t{AMQP}?queue=b&channel=y  ", 10, 2)
    assert [s.name for _, s in specs] == ["amqp.a", "amqp.b"]
    with pytest.raises(BridgeConfigError, match=r"two bridges are named 'amqp\.a'"):
        parse_bridges(f"{AMQP}?queue=a&channel=x {AMQP}?queue=a&channel=y", 10, 2)
    assert parse_bridges("", 10, 2) == []


def test_the_outbox_defaults_its_table_channel_and_event_to_the_rows_own():
    spec = _one("postgresql://app@127.0.0.1/app")
    assert spec.extra == {
        "table": "tidings_outbox", "batch": 100, "poll": 2.0, "order": "strict"
    }  # fmt: skip
    assert spec.channel.text == "{channel}"
    assert spec.event is not None
    assert spec.event.text == "{event}"


def test_the_outbox_ddl_names_its_table_and_refuses_what_is_not_a_plain_sql_name():
    ddl = outbox_ddl("app.events_outbox")
    assert "CREATE TABLE IF NOT EXISTS app.events_outbox (" in ddl
    assert "pg_notify('app_events_outbox', '')" in ddl
    for bad in ("Outbox", "a;drop table x", "a.b.c", "x" * 64, ""):
        with pytest.raises(BridgeConfigError):
            outbox_ddl(bad)


def test_the_admin_view_of_the_settings_hides_every_bridges_password():
    settings = Settings(bridges=f"{AMQP}?queue=a&channel=x postgresql://u:pw@h/db?password=p2")
    shown = redacted_settings(settings)["bridges"]
    assert "secret" not in shown
    assert "pw@" not in shown
    assert "p2" not in shown
    assert shown.count("***") == 3


def test_a_job_bridge_has_no_channel_and_takes_its_jobs_fields_from_the_url():
    spec = _one(f"{AMQP}?queue=q&job=mail.send&max_attempts=5&priority=-3&job_timeout=2.5")
    assert spec.channel is None
    assert spec.event is None
    assert spec.job is not None
    assert (spec.job.type, spec.job.max_attempts, spec.job.priority) == ("mail.send", 5, -3)
    assert (spec.job.timeout, spec.job.max_replies) == (2.5, 1000)
    assert spec.connect_url == AMQP
    outbox = _one("postgresql://app@127.0.0.1/app?job=ingest&max_replies=7")
    assert (outbox.channel, outbox.event) == (None, None)
    assert outbox.job is not None
    assert (outbox.job.timeout, outbox.job.max_replies) == (None, 7)
