"""RabbitMQ messages as jobs (`job=TYPE`) against the machine's RabbitMQ, real tidings
servers and a real worker: a request's job runs and its outcome comes back to its
`reply_to` queue with its correlation id; a request tidings did not acknowledge before
being killed makes one job and one reply; a message id published twice makes one job; a
malformed body is dead-lettered and the next runs; a job URL that cannot work stops the
start."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.e2e.bridges.conftest import RABBITMQ, Rabbit, bridge, messages, wait_for
from tests.e2e.bridges.job_worker import WorkerProcess, job, jobs_of, workers
from tests.e2e.bridges.test_config import _serve
from tests.e2e.helpers import cli_ok


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[[str], WorkerProcess]]:
    yield from workers(tmp_path)


def _url(rabbit: Rabbit, **params: str) -> str:
    return f"{rabbit.url}?" + "&".join(f"{k}={v}" for k, v in params.items())


def _request(
    rabbit: Rabbit,
    queue: str,
    body: bytes,
    message_id: str | None,
    reply_to: str | None = None,
    correlation_id: str | None = None,
) -> None:
    """Publish one message to `queue` (persistent, confirmed), as a request when it
    names `reply_to`."""
    import aio_pika

    async def go(ch: Any) -> None:
        msg = aio_pika.Message(
            body,
            message_id=message_id,
            reply_to=reply_to,
            correlation_id=correlation_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        await ch.default_exchange.publish(msg, routing_key=queue)

    rabbit._run(go)


def _replies(rabbit: Rabbit, queue: str) -> list[dict[str, Any]]:
    """Take every message waiting on `queue`: body (JSON), correlation id, headers."""

    async def go(ch: Any) -> list[dict[str, Any]]:
        q = await ch.declare_queue(queue, passive=True)
        got: list[dict[str, Any]] = []
        while (msg := await q.get(fail=False)) is not None:
            await msg.ack()
            got.append(
                {
                    "body": json.loads(msg.body),
                    "correlation_id": msg.correlation_id,
                    "content_type": msg.content_type,
                    "headers": dict(msg.headers or {}),
                }
            )
        return got

    result: list[dict[str, Any]] = rabbit._run(go)
    return result


@pytest.mark.timeout(120)
def test_a_request_becomes_a_job_a_worker_runs_and_its_outcome_comes_back_correlated(
    rabbit: Rabbit, tidings_server: ServerFactory, worker: Callable[[str], WorkerProcess]
) -> None:
    queue, failing, replies = rabbit.queue(), rabbit.queue(), rabbit.queue()
    srv = tidings_server(
        args=[
            "--bridge", _url(rabbit, queue=queue, job="echo", name="rpc", priority="5"),
            "--bridge", _url(rabbit, queue=failing, job="fail", name="rpc-fail",
                             max_attempts="1"),
        ],
        env={"TIDINGS_RETRY_BACKOFF": "0.05"},
    )  # fmt: skip
    w = worker(srv.url)
    _request(rabbit, queue, b'{"to": "ada"}', "m1", reply_to=replies, correlation_id="c-1")
    _request(rabbit, queue, b'{"to": "bob"}', "m2")  # one-way: acked once submitted
    _request(rabbit, failing, b"[1, 2]", "f1", reply_to=replies, correlation_id="c-2")
    got: list[dict[str, Any]] = []
    wait_for(
        lambda: got.extend(_replies(rabbit, replies)) or len(got) >= 2,
        timeout=60,
        what=f"two replies (worker log: {w.log()})",
    )
    by = {r["correlation_id"]: r for r in got}
    assert set(by) == {"c-1", "c-2"}
    ok, bad = by["c-1"], by["c-2"]
    assert ok["body"] == {"to": "ada"}
    assert ok["content_type"] == "application/json"
    assert ok["headers"]["tidings-job-status"] == "succeeded"
    done = job(srv.url, ok["headers"]["tidings-job-id"])
    assert (done["type"], done["payload"], done["priority"]) == ("echo", {"to": "ada"}, 5)
    assert done["status"] == "succeeded"
    assert bad["headers"]["tidings-job-status"] == "failed"
    assert "failing on purpose" in bad["body"]["message"]
    assert "traceback" not in bad["body"]
    assert job(srv.url, bad["headers"]["tidings-job-id"])["payload"] == [1, 2]
    # The one-way message made its job too, and every message was acknowledged.
    assert sorted(j["payload"]["to"] for j in jobs_of(srv.url, "echo")) == ["ada", "bob"]
    view = wait_for(lambda: (b := bridge(srv.url, "rpc"))["acknowledged"] == 2 and b, what="2 acks")
    assert (view["job"], view["channel"], view["submitted"], view["replied"]) == (
        "echo", None, 2, 1
    )  # fmt: skip
    assert (view["duplicates"], view["awaiting"], view["published"]) == (0, 0, 0)
    assert rabbit.count(queue) == rabbit.count(failing) == 0
    assert _replies(rabbit, replies) == []
    row = next(line for line in cli_ok("bridges", "--url", srv.url).splitlines() if "rpc " in line)
    assert "job echo" in row
    metrics = httpx.get(f"{srv.url}/metrics", timeout=20).text
    assert 'tidings_bridge_messages_total{bridge="rpc",outcome="submitted"} 2.0' in metrics
    assert 'tidings_bridge_messages_total{bridge="rpc",outcome="replied"} 1.0' in metrics
    assert 'tidings_bridge_awaiting{bridge="rpc"} 0.0' in metrics


@pytest.mark.timeout(150)
def test_a_request_tidings_was_killed_holding_makes_one_job_and_one_reply(
    rabbit: Rabbit,
    tidings_server: ServerFactory,
    worker: Callable[[str], WorkerProcess],
    tmp_path: Path,
) -> None:
    """SIGKILL while the request's job runs: the broker delivers the request again to the
    restarted server, whose submit finds the job by the message id; it replies once the
    job ends. A message id published twice makes one job."""
    queue, replies = rabbit.queue(), rabbit.queue()
    srv = tidings_server(
        store=f"sqlite:///{tmp_path / 't.db'}",
        args=["--bridge", _url(rabbit, queue=queue, job="slow", name="rpc")],
    )
    w = worker(srv.url)
    _request(rabbit, queue, b'{"seconds": 4}', "req-1", reply_to=replies, correlation_id="k")
    running = wait_for(
        lambda: [j for j in jobs_of(srv.url, "slow") if j["status"] == "running"],
        what=f"the job running (worker log: {w.log()})",
    )
    wait_for(lambda: bridge(srv.url, "rpc")["awaiting"] == 1, what="the reply awaited")
    assert rabbit.count(queue) == 0  # delivered, not acknowledged
    srv.stop(signal.SIGKILL)
    srv.start()
    got = wait_for(lambda: _replies(rabbit, replies), timeout=60, what="the reply")
    (reply,) = got
    assert reply["correlation_id"] == "k"
    assert reply["headers"]["tidings-job-id"] == running[0]["id"]
    assert reply["body"]["slept"] == 4
    view = wait_for(lambda: (b := bridge(srv.url, "rpc"))["acknowledged"] == 1 and b, what="ack")
    assert (view["submitted"], view["duplicates"], view["replied"]) == (0, 1, 1)
    # The same message id twice (a producer's retry): one job.
    _request(rabbit, queue, b'{"seconds": 0}', "req-2")
    _request(rabbit, queue, b'{"seconds": 0}', "req-2")
    wait_for(lambda: bridge(srv.url, "rpc")["acknowledged"] == 3, what="3 acks")
    assert len(jobs_of(srv.url, "slow")) == 2
    assert rabbit.count(queue) == 0
    assert _replies(rabbit, replies) == []


@pytest.mark.timeout(120)
def test_a_malformed_body_is_dead_lettered_and_the_next_request_still_runs(
    rabbit: Rabbit, tidings_server: ServerFactory, worker: Callable[[str], WorkerProcess]
) -> None:
    queue, replies = rabbit.queue(), rabbit.queue()
    srv = tidings_server(
        args=["--bridge", _url(rabbit, queue=queue, job="echo", name="rpc", max_bytes="100")]
    )
    worker(srv.url)
    _request(rabbit, queue, b"{not json", "bad", reply_to=replies, correlation_id="1")
    _request(rabbit, queue, b'"' + b"x" * 200 + b'"', "big", reply_to=replies)
    _request(rabbit, queue, b'{"ok": true}', "good", reply_to=replies, correlation_id="3")
    (reply,) = wait_for(lambda: _replies(rabbit, replies), timeout=60, what="the reply")
    assert (reply["correlation_id"], reply["body"]) == ("3", {"ok": True})
    errors = [e["data"] for e in messages(srv.url, "bridge.errors")]
    assert [e["bus_id"] for e in errors] == ["bad", "big"]
    assert "not JSON" in errors[0]["reason"]
    assert "max_bytes=100" in errors[1]["reason"]
    assert [j["payload"] for j in jobs_of(srv.url, "echo")] == [{"ok": True}]
    view = wait_for(lambda: (b := bridge(srv.url, "rpc"))["acknowledged"] == 3 and b, what="acks")
    assert (view["dead_lettered"], view["submitted"], view["replied"]) == (2, 1, 1)


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("url", "said"),
    [
        (f"{RABBITMQ}?queue=q&job=mail&channel=c", "job= and channel= exclude each other"),
        (f"{RABBITMQ}?queue=q&job=mail&max_attempts=0", "max_attempts=0 is out of range: use"),
        (f"{RABBITMQ}?queue=q&job=mail&max_replies=x", "max_replies='x' is not an integer"),
        (f"{RABBITMQ}?queue=q&channel=c&priority=1", "priority= is a job bridge's: give job="),
        ("nats://127.0.0.1:4222/?stream=S&job=a&event=e", "job= and event= exclude each other"),
        ("postgresql://postgres@127.0.0.1/test?job=a%20b", "job='a b': a job type is 1-200"),
    ],
)
def test_a_job_bridge_url_that_cannot_work_stops_the_start_saying_what_to_fix(
    url: str, said: str
) -> None:
    done = _serve(url)
    assert done.returncode == 2, done.stderr
    assert said in " ".join(done.stderr.split()), done.stderr


@pytest.mark.timeout(120)
def test_a_server_stopping_while_it_awaits_a_reply_stops_at_once_leaving_the_request_queued(
    rabbit: Rabbit, tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """No worker: the job stays queued. SIGTERM ends the wait; the request, never
    acknowledged, is ready on its queue again, and the restarted server awaits the same
    job."""
    queue, replies = rabbit.queue(), rabbit.queue()
    srv = tidings_server(
        store=f"sqlite:///{tmp_path / 't.db'}",
        args=["--bridge", _url(rabbit, queue=queue, job="echo", name="rpc")],
    )
    _request(rabbit, queue, b'{"n": 1}', "req-1", reply_to=replies, correlation_id="k")
    wait_for(lambda: bridge(srv.url, "rpc")["awaiting"] == 1, what="the reply awaited")
    started = time.monotonic()
    # uvicorn re-raises the signal after a clean shutdown.
    assert srv.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert time.monotonic() - started < 10
    wait_for(lambda: rabbit.count(queue) == 1, what="the request back on its queue")
    srv.start()
    wait_for(lambda: bridge(srv.url, "rpc")["awaiting"] == 1, what="the reply awaited again")
    (queued,) = jobs_of(srv.url, "echo")
    assert queued["status"] == "queued"
    assert bridge(srv.url, "rpc")["duplicates"] == 1
    assert _replies(rabbit, replies) == []
