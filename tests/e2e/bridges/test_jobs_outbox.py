"""Outbox rows as jobs (`job=TYPE`) against the machine's PostgreSQL, real tidings
servers and a real worker: each row's data becomes a job's payload and the row leaves the
table once the job is committed; a row whose job was committed before a crash makes no
second job; a row over max_bytes is dead-lettered and the next still runs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.e2e.bridges.conftest import Postgres, bridge, messages, wait_for
from tests.e2e.bridges.job_worker import WorkerProcess, jobs_of, workers
from tidings.server.bridges.base import Bridge
from tidings.server.bridges.postgres import row_bus_id


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[[str], WorkerProcess]]:
    yield from workers(tmp_path)


def _url(pg: Postgres, table: str, **params: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"table": table, **params}.items())
    return f"{pg.url}?{query}"


@pytest.mark.timeout(120)
def test_rows_become_jobs_a_worker_runs_and_leave_the_table_once_committed(
    postgres: Postgres, tidings_server: ServerFactory, worker: Callable[[str], WorkerProcess]
) -> None:
    table = postgres.outbox()
    srv = tidings_server(
        args=["--bridge", _url(postgres, table, name="ob", job="echo", priority="2", poll="60")]
    )
    wait_for(lambda: bridge(srv.url, "ob")["state"] == "running", what="running")
    w = worker(srv.url)
    # The channel and event columns are not read by a job bridge.
    postgres.insert(table, [("mail", None, json.dumps({"n": n})) for n in range(5)])
    wait_for(lambda: postgres.count(table) == 0, what="the rows deleted (woken by NOTIFY)")
    done = wait_for(
        lambda: (
            (js := jobs_of(srv.url, "echo")) and all(j["status"] == "succeeded" for j in js) and js
        ),
        what=f"the jobs run ({w.log()})",
    )
    assert sorted(j["payload"]["n"] for j in done) == list(range(5))
    assert {(j["result"]["n"] == j["payload"]["n"], j["priority"]) for j in done} == {(True, 2)}
    view = bridge(srv.url, "ob")
    assert (view["acknowledged"], view["submitted"], view["replied"]) == (5, 5, 0)
    assert (view["job"], view["channel"], view["event"], view["lag"]) == ("echo", None, None, 0)
    assert messages(srv.url, "mail") == []


@pytest.mark.timeout(120)
def test_a_row_whose_job_was_committed_before_a_crash_is_deleted_without_a_second_job(
    postgres: Postgres, tidings_server: ServerFactory, tmp_path: Path
) -> None:
    table = postgres.outbox()
    (row,) = postgres.insert(table, [("-", None, '{"n": 1}')])
    srv = tidings_server(store=f"sqlite:///{tmp_path / 't.db'}")
    # What a node committed before dying between its submit and its DELETE's commit.
    key = Bridge.key_for("ob", row_bus_id(table, row["id"], row["created_at"]))
    r = httpx.post(
        f"{srv.url}/v1/jobs",
        json={"type": "ingest", "payload": {"n": 1}},
        headers={"idempotency-key": key},
    )
    assert r.status_code == 202, r.text
    srv.stop()
    srv.extra_args = ["--bridge", _url(postgres, table, name="ob", job="ingest")]
    srv.start()
    wait_for(lambda: postgres.count(table) == 0, what="the row deleted")
    assert [j["id"] for j in jobs_of(srv.url, "ingest")] == [r.json()["id"]]
    view = bridge(srv.url, "ob")
    assert (view["acknowledged"], view["submitted"], view["duplicates"]) == (1, 0, 1)


@pytest.mark.timeout(120)
def test_a_row_over_max_bytes_is_dead_lettered_and_deleted_and_the_next_becomes_a_job(
    postgres: Postgres, tidings_server: ServerFactory
) -> None:
    table = postgres.outbox()
    srv = tidings_server(
        args=["--bridge", _url(postgres, table, name="ob", job="ingest", max_bytes="64",
                               poll="0.2")]
    )  # fmt: skip
    postgres.insert(
        table, [("-", None, json.dumps({"big": "x" * 100})), ("-", None, '{"small": 1}')]
    )
    wait_for(lambda: postgres.count(table) == 0, what="every row deleted")
    assert [j["payload"] for j in jobs_of(srv.url, "ingest")] == [{"small": 1}]
    (error,) = [m["data"] for m in messages(srv.url, "bridge.errors")]
    assert "max_bytes=64" in error["reason"]
    view = bridge(srv.url, "ob")
    assert (view["acknowledged"], view["submitted"], view["dead_lettered"]) == (2, 1, 1)
