"""The NATS JetStream bridge against the machine's NATS server and real tidings servers:
delivery into SSE and long-poll subscribers, a redelivery not published twice, dead
letters, a cut connection and a SIGKILL mid-stream losing and duplicating nothing."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.e2e.bridges.conftest import (
    CuttableProxy,
    Nats,
    bridge,
    messages,
    sse_and_long_poll,
    wait_for,
)
from tidings.server.bridges.base import Bridge


def _url(base: str, **params: str) -> str:
    return f"{base}/?" + "&".join(f"{k}={v}" for k, v in params.items())


@pytest.mark.timeout(120)
def test_messages_reach_an_sse_and_a_long_poll_subscriber_by_subject(
    jetstream: Nats, tidings_server: ServerFactory
) -> None:
    stream, prefix = jetstream.stream()
    srv = tidings_server(
        args=[
            "--bridge",
            _url(jetstream.url, stream=stream, subject=f"{prefix}.orders.*",
                 channel="{subject}", event="{stream}", name="js"),
        ]
    )  # fmt: skip
    wait_for(lambda: bridge(srv.url, "js")["state"] == "running", what="running")
    channel = f"{prefix}.orders.eu"

    def publish() -> None:
        jetstream.publish(channel, [b'{"n": 1}', b'{"n": 2}'])
        # Not in the consumer's filter: never bridged.
        jetstream.publish(f"{prefix}.other", [b'{"n": 3}'])

    streamed, polled = sse_and_long_poll(srv.url, channel, 2, publish)
    assert streamed == [(stream, {"n": 1}), (stream, {"n": 2})]
    assert polled[0] == {"n": 1}
    wait_for(lambda: bridge(srv.url, "js")["acknowledged"] == 2, what="2 acks")
    assert messages(srv.url, f"{prefix}.other") == []
    view = wait_for(lambda: (b := bridge(srv.url, "js"))["lag"] == 0 and b, what="lag 0")
    assert (view["kind"], view["published"]) == ("nats", 2)


@pytest.mark.timeout(120)
def test_a_redelivered_message_tidings_already_committed_is_acked_not_published_again(
    jetstream: Nats, tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """The state a crash between the commit and the ack leaves: the message is in the
    channel under its stream sequence's key, and JetStream delivers it again."""
    stream, prefix = jetstream.stream()
    (seq,) = jetstream.publish(f"{prefix}.a", [b'{"n": 1}'])
    srv = tidings_server(store=f"sqlite:///{tmp_path / 't.db'}")
    key = Bridge.key_for("js", f"{stream}:{jetstream.created(stream)}:{seq}")
    r = httpx.post(
        f"{srv.url}/v1/channels/feed/messages",
        json={"data": {"n": 1}},
        headers={"idempotency-key": key},
    )
    assert r.status_code == 201
    srv.stop()
    srv.extra_args = ["--bridge", _url(jetstream.url, stream=stream, channel="feed", name="js")]
    srv.start()
    jetstream.publish(f"{prefix}.a", [b'{"n": 2}'])
    wait_for(lambda: bridge(srv.url, "js")["acknowledged"] == 2, what="2 acks")
    assert [m["data"] for m in messages(srv.url, "feed")] == [{"n": 1}, {"n": 2}]
    view = bridge(srv.url, "js")
    assert (view["published"], view["duplicates"]) == (1, 1)


@pytest.mark.timeout(120)
def test_a_malformed_message_is_dead_lettered_and_the_next_delivered(
    jetstream: Nats, tidings_server: ServerFactory
) -> None:
    stream, prefix = jetstream.stream()
    srv = tidings_server(
        args=["--bridge", _url(jetstream.url, stream=stream, channel="{subject}", name="js")]
    )
    jetstream.publish(f"{prefix}.x", [b"{oops", b'{"ok": 1}'])
    wait_for(lambda: bridge(srv.url, "js")["acknowledged"] == 2, what="2 acks")
    assert [m["data"] for m in messages(srv.url, f"{prefix}.x")] == [{"ok": 1}]
    (error,) = messages(srv.url, "bridge.errors")
    assert error["data"]["body"] == "{oops"
    assert error["data"]["fields"] == {"subject": f"{prefix}.x", "stream": stream}
    assert bridge(srv.url, "js")["dead_lettered"] == 1


@pytest.mark.timeout(150)
def test_a_cut_connection_and_a_sigkill_mid_stream_lose_nothing_and_duplicate_nothing(
    jetstream: Nats,
    tidings_server: ServerFactory,
    tmp_path: Path,
    proxy: Callable[..., CuttableProxy],
) -> None:
    stream, prefix = jetstream.stream()
    total = 300
    jetstream.publish(f"{prefix}.feed", [json.dumps({"n": n}).encode() for n in range(total)])
    # Cut once ~8 kB of the ~50 kB of deliveries came: mid-stream.
    via = proxy(4222, cut_after=8000)
    # ack_wait=1: what a killed node had fetched but not acked comes back within a second.
    url = _url(
        f"nats://127.0.0.1:{via.port}", stream=stream, channel="feed", name="js",
        batch="20", ack_wait="1",
    )  # fmt: skip
    srv = tidings_server(store=f"sqlite:///{tmp_path / 't.db'}", args=["--bridge", url])
    wait_for(lambda: via.cuts and via.accepted >= 2, what="the cut and a reconnect")
    wait_for(lambda: len(messages(srv.url, "feed")) >= 30, what="more after the cut")
    srv.stop(signal.SIGKILL)
    srv.start()
    got = wait_for(
        lambda: (m := messages(srv.url, "feed")) and len(m) >= total and m,
        timeout=60,
        what=f"{total} messages",
    )
    # Each once. Not in order: JetStream sends what was in flight at the cut or the kill
    # again after ack_wait, once later messages were delivered (the bridge's docstring).
    assert sorted(m["data"]["n"] for m in got) == list(range(total))
    assert via.accepted >= 3
