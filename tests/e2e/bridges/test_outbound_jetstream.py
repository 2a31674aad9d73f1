"""The NATS JetStream bridge's outbound side (forward=) against the machine's NATS server
and real tidings servers: messages published over HTTP on matching channels are stored
in the stream that captures their subject, in order per channel, with their ids and
headers; through a SIGKILL and a cut connection nothing is lost, and what is forwarded
again at the cut point is dropped by JetStream (same Nats-Msg-Id): the stream holds each
message once."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerFactory
from tests.e2e.bridges.conftest import CuttableProxy, Nats, bridge, unique, wait_for
from tests.e2e.bridges.test_outbound_amqp import _publish
from tidings.server.bridges import BridgeConfigError, parse_bridges

LEASE = "2"


def _stored(nats: Nats, stream: str) -> list[dict[str, Any]]:
    """Every message of `stream`, in stream order."""

    async def go(js: Any) -> list[dict[str, Any]]:
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            msg = await js.get_msg(stream, seq)
            out.append(
                {"subject": msg.subject, "headers": dict(msg.headers or {}), "data": msg.data}
            )
        return out

    result: list[dict[str, Any]] = nats.run(go)
    return result


def _ids(stored: list[dict[str, Any]], channel: str) -> list[int]:
    return [
        int(m["headers"]["Tidings-Id"])
        for m in stored
        if m["headers"].get("Tidings-Channel") == channel
    ]


def _url(forward: str, subject: str, port: int = 4222, **more: str) -> str:
    query = "".join(f"&{k}={v}" for k, v in more.items())
    return (
        f"nats://127.0.0.1:{port}/?forward={forward}&forward_subject={subject}"
        f"&forward_lease={LEASE}{query}"
    )


@pytest.mark.timeout(120)
def test_messages_on_matching_channels_are_stored_in_order_with_ids_and_headers(
    jetstream: Nats, tidings_server: ServerFactory
) -> None:
    stream, prefix = jetstream.stream()
    name = unique("jf")
    srv = tidings_server(
        args=["--bridge", _url("orders.*,audit", f"{prefix}.{{channel}}", name=name)]
    )
    wait_for(lambda: bridge(srv.url, name)["state"] == "running", what="forwarding")
    _publish(srv.url, "orders.eu", 0, 20, event="order")
    _publish(srv.url, "audit", 0, 5)
    _publish(srv.url, "other", 0, 5)  # not forwarded
    _publish(srv.url, "orders.us", 0, 10)
    stored = wait_for(
        lambda: (s := _stored(jetstream, stream)) and len(s) >= 35 and s, what="35 stored"
    )
    assert _ids(stored, "orders.eu") == list(range(1, 21))
    assert _ids(stored, "audit") == list(range(1, 6))
    assert _ids(stored, "orders.us") == list(range(1, 11))
    assert len(stored) == 35
    first = next(m for m in stored if m["headers"]["Nats-Msg-Id"] == "orders.eu:1")
    assert first["subject"] == f"{prefix}.orders.eu"
    assert first["data"] == b'{"n":0}'
    assert first["headers"]["Tidings-Event"] == "order"
    assert first["headers"]["Content-Type"] == "application/json"
    view = wait_for(
        lambda: (b := bridge(srv.url, name))["forward"]["forwarded"] == 35 and b,
        what="the counters",
    )
    assert view["kind"] == "nats"
    assert view["forward"]["target"] == f"subject {prefix}.{{channel}}"


@pytest.mark.timeout(120)
def test_a_subject_no_stream_takes_is_reported_and_forwarded_once_one_does(
    jetstream: Nats, tidings_server: ServerFactory
) -> None:
    prefix = unique("late").lower()
    name = unique("jlate")
    srv = tidings_server(args=["--bridge", _url("feed", f"{prefix}.{{channel}}", name=name)])
    _publish(srv.url, "feed", 0, 5)
    view = wait_for(
        lambda: (b := bridge(srv.url, name))["forward"]["last_error"] and b,
        what="the failure reported",
    )
    assert view["forward"]["forwarded"] == 0
    stream = unique("TL")
    jetstream.streams.append(stream)
    jetstream.run(lambda js: js.add_stream(name=stream, subjects=[f"{prefix}.>"]))
    stored = wait_for(
        lambda: (s := _stored(jetstream, stream)) and len(s) >= 5 and s,
        timeout=60,
        what="5 stored",
    )
    assert _ids(stored, "feed") == [1, 2, 3, 4, 5]


@pytest.mark.timeout(150)
def test_a_sigkill_mid_stream_loses_nothing_and_jetstream_drops_the_replayed_ones(
    jetstream: Nats,
    tidings_server: ServerFactory,
    proxy: Callable[..., CuttableProxy],
    tmp_path: Path,
) -> None:
    stream, prefix = jetstream.stream()
    total = 300
    via = proxy(4222, delay=0.01)
    name = unique("jkill")
    srv = tidings_server(
        store=f"sqlite:///{tmp_path / 't.db'}",
        # One message at a time, each ack slowed down by the proxy: the stream is still
        # going when the kill comes.
        args=[
            "--bridge",
            _url("feed", f"{prefix}.{{channel}}", port=via.port, name=name, forward_batch="1"),
        ],
    )
    _publish(srv.url, "feed", 0, total)
    wait_for(lambda: bridge(srv.url, name)["forward"]["forwarded"] >= 30, what="a first part")
    srv.stop(signal.SIGKILL)
    assert len(_stored(jetstream, stream)) < total, "the kill came too late to test anything"
    srv.start()
    stored = wait_for(
        lambda: (s := _stored(jetstream, stream)) and len(s) >= total and s,
        timeout=60,
        what=f"{total} stored",
    )
    # Replays at the cut point had the ids of stored messages: JetStream dropped them.
    assert _ids(stored, "feed") == list(range(1, total + 1))


@pytest.mark.timeout(150)
def test_a_connection_cut_mid_stream_resumes_without_loss(
    jetstream: Nats, tidings_server: ServerFactory, proxy: Callable[..., CuttableProxy]
) -> None:
    stream, prefix = jetstream.stream()
    total = 300
    # Each round trip slowed (150 batches: >= 4.5 s) so that the cut falls mid-stream even
    # when this test process is held up on a loaded machine.
    via = proxy(4222, delay=0.03)
    name = unique("jcut")
    srv = tidings_server(
        args=[
            "--bridge",
            _url("feed", f"{prefix}.{{channel}}", port=via.port, name=name, forward_batch="2"),
        ]
    )
    _publish(srv.url, "feed", 0, total)
    wait_for(lambda: bridge(srv.url, name)["forward"]["forwarded"] >= 30, what="a first part")
    via.cut()
    assert bridge(srv.url, name)["forward"]["forwarded"] < total, "the cut came too late"
    stored = wait_for(
        lambda: (s := _stored(jetstream, stream)) and len(s) >= total and s,
        timeout=60,
        what=f"{total} stored",
    )
    assert _ids(stored, "feed") == list(range(1, total + 1))
    assert bridge(srv.url, name)["forward"]["leases"] >= 2
    assert via.accepted >= 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("query", "said"),
    [
        ("stream=S&channel=c&forward_subject=a", "give forward= too"),
        ("forward=a&forward_subject=x.*", "without spaces or wildcards"),
        ("forward=a&forward_subject=x.{subject}", "unknown placeholder"),
        (
            "stream=S&subject=s.>&channel=orders.{subject}&forward=orders.*",
            "which this bridge's inbound side writes",
        ),
        ("forward=a&channel=x", "channel= is for consuming"),
    ],
)
def test_a_forward_config_that_cannot_work_is_refused(query: str, said: str) -> None:
    with pytest.raises(BridgeConfigError) as refused:
        parse_bridges(f"nats://127.0.0.1:4222/?{query}", 1 << 20, 64)
    assert said in str(refused.value)


def test_an_outbound_only_nats_bridge_is_named_after_its_subject() -> None:
    ((_, spec),) = parse_bridges(
        "nats://127.0.0.1:4222/?forward=a.*&forward_subject=t.{channel}", 1 << 20, 64
    )
    assert spec.name == "nats.forward.t.channel"
    assert spec.extra["inbound"] is False
