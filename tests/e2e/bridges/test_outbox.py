"""The PostgreSQL outbox bridge against the machine's PostgreSQL and real tidings servers:
rows reach SSE and long-poll subscribers and leave the table only once published; a row
published before a crash is not published again; a malformed row is dead-lettered and
the next delivered; two nodes on one outbox publish each row once."""

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
    Postgres,
    bridge,
    messages,
    sse_and_long_poll,
    wait_for,
)
from tidings.server.bridges.base import Bridge
from tidings.server.bridges.postgres import row_bus_id


def _url(pg: Postgres, table: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"table": table, **params}.items())
    return f"{pg.url}?{query}"


@pytest.mark.timeout(120)
def test_rows_reach_an_sse_and_a_long_poll_subscriber_and_leave_the_table(
    postgres: Postgres, tidings_server: ServerFactory
) -> None:
    table = postgres.outbox()
    # A long poll interval: only the NOTIFY can wake the bridge within the test's wait.
    srv = tidings_server(args=["--bridge", _url(postgres, table, poll="60")])
    name = f"outbox.{table}"
    wait_for(lambda: bridge(srv.url, name)["state"] == "running", what="running")
    channel = f"orders.{table}"

    streamed, polled = sse_and_long_poll(
        srv.url,
        channel,
        2,
        lambda: postgres.insert(
            table, [(channel, "paid", '{"id": 1}'), (channel, None, '{"id": 2}')]
        ),
    )
    assert streamed == [("paid", {"id": 1}), ("", {"id": 2})]
    assert polled[0] == {"id": 1}
    wait_for(lambda: postgres.count(table) == 0, what="the rows deleted")
    view = bridge(srv.url, name)
    assert (view["acknowledged"], view["published"], view["lag"]) == (2, 2, 0)


@pytest.mark.timeout(120)
def test_a_row_published_before_a_crash_is_deleted_without_being_published_again(
    postgres: Postgres, tidings_server: ServerFactory, tmp_path: Path
) -> None:
    table = postgres.outbox()
    (row,) = postgres.insert(table, [("ledger", "entry", '{"n": 1}')])
    srv = tidings_server(store=f"sqlite:///{tmp_path / 't.db'}")
    # What a node committed before dying between its publish and its DELETE's commit.
    key = Bridge.key_for("ob", row_bus_id(table, row["id"], row["created_at"]))
    r = httpx.post(
        f"{srv.url}/v1/channels/ledger/messages",
        json={"data": {"n": 1}, "event": "entry"},
        headers={"idempotency-key": key},
    )
    assert r.status_code == 201
    srv.stop()
    srv.extra_args = ["--bridge", _url(postgres, table, name="ob")]
    srv.start()
    wait_for(lambda: postgres.count(table) == 0, what="the row deleted")
    assert [m["data"] for m in messages(srv.url, "ledger")] == [{"n": 1}]
    view = bridge(srv.url, "ob")
    assert (view["acknowledged"], view["published"], view["duplicates"]) == (1, 0, 1)


@pytest.mark.timeout(120)
def test_a_malformed_row_is_dead_lettered_and_deleted_and_the_next_row_delivered(
    postgres: Postgres, tidings_server: ServerFactory
) -> None:
    table = postgres.outbox()
    srv = tidings_server(args=["--bridge", _url(postgres, table, name="ob", poll="0.2")])
    postgres.insert(
        table,
        [
            ("not a channel!", None, '{"n": 1}'),
            ("job.x", None, '{"n": 2}'),
            ("fine", "ev\nil", '{"n": 3}'),
            ("fine", None, '{"n": 4}'),
        ],
    )
    wait_for(lambda: postgres.count(table) == 0, what="every row deleted")
    assert [m["data"] for m in messages(srv.url, "fine")] == [{"n": 4}]
    reasons = [m["data"]["reason"] for m in messages(srv.url, "bridge.errors")]
    assert len(reasons) == 3
    assert "invalid channel name" in reasons[0]
    assert "job system" in reasons[1]
    assert "line breaks" in reasons[2]
    view = bridge(srv.url, "ob")
    assert (view["acknowledged"], view["published"], view["dead_lettered"]) == (4, 1, 3)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("order", ["strict", "none"])
def test_two_nodes_on_one_outbox_publish_each_row_once(
    postgres: Postgres, tidings_server: ServerFactory, tmp_path: Path, order: str
) -> None:
    table = postgres.outbox()
    url = _url(postgres, table, name="ob", batch="10", poll="0.1", order=order)
    nodes = [
        tidings_server(store=f"sqlite:///{tmp_path / f'n{i}.db'}", args=["--bridge", url])
        for i in range(2)
    ]
    total = 300
    for start in range(0, total, 50):
        postgres.insert(
            table, [(f"c{n % 3}", None, json.dumps({"n": n})) for n in range(start, start + 50)]
        )
    wait_for(lambda: postgres.count(table) == 0, timeout=60, what="the outbox drained")
    seen: list[int] = []
    for node in nodes:
        for c in range(3):
            got = [m["data"]["n"] for m in messages(node.url, f"c{c}")]
            assert got == sorted(got), "each node publishes a channel's rows in table order"
            seen += got
    assert sorted(seen) == list(range(total))
    acked = [bridge(node.url, "ob")["acknowledged"] for node in nodes]
    assert sum(acked) == total


@pytest.mark.timeout(90)
def test_a_missing_table_is_reported_and_retried(
    postgres: Postgres, tidings_server: ServerFactory
) -> None:
    srv = tidings_server(args=["--bridge", _url(postgres, "no_such_outbox", name="ob")])
    view = wait_for(lambda: (b := bridge(srv.url, "ob"))["last_error"] and b, what="an error")
    assert "no_such_outbox does not exist" in view["last_error"]
    assert "outbox-ddl" in view["last_error"]


@pytest.mark.timeout(150)
def test_a_sigkill_or_a_cut_connection_mid_drain_loses_no_row_and_publishes_none_twice(
    postgres: Postgres,
    tidings_server: ServerFactory,
    tmp_path: Path,
    proxy: Callable[..., CuttableProxy],
) -> None:
    table = postgres.outbox()
    total = 300
    postgres.insert(table, [("feed", None, json.dumps({"n": n})) for n in range(total)])
    # Cut once ~6 kB came from PostgreSQL (a few batches); each chunk delayed 5 ms, so
    # that the drain after the cut lasts long enough to be killed in the middle.
    via = proxy(5432, cut_after=6000, delay=0.005)
    url = f"postgresql://postgres@127.0.0.1:{via.port}/test?table={table}&batch=10&name=ob"
    srv = tidings_server(store=f"sqlite:///{tmp_path / 't.db'}", args=["--bridge", url])
    wait_for(lambda: via.cuts and via.accepted >= 2, what="the cut and a reconnect")
    wait_for(lambda: len(messages(srv.url, "feed")) >= 100, what="more after the cut")
    srv.stop(signal.SIGKILL)
    assert postgres.count(table) > 0, "the kill came too late to test anything"
    srv.start()
    wait_for(lambda: postgres.count(table) == 0, timeout=60, what="the outbox drained")
    assert [m["data"]["n"] for m in messages(srv.url, "feed")] == list(range(total))
    assert via.accepted >= 3
