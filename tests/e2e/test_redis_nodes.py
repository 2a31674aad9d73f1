"""Several tidings nodes on one private Redis act as one (issue 6, end to end).

Two real `tidings serve --store redis://…` processes share a private `redis-server` (a key
prefix of the test's own); clients, workers and the CLI talk to them over loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RedisProcess, free_port
from tests.e2e.test_channels_api import RawSSE, parse_frame
from tests.e2e.test_jobs_workers import WorkerProcess

ServerFactory = Any
REPO = Path(__file__).resolve().parents[2]


def node(factory: ServerFactory, url: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return factory(store=url, args=list(args), env={"TIDINGS_RETRY_BACKOFF": "0.05", **(env or {})})


def publish(base: str, channel: str, data: Any, headers: dict[str, str] | None = None) -> str:
    r = httpx.post(
        f"{base}/v1/channels/{channel}/messages", json={"data": data}, headers=headers, timeout=10
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.mark.timeout(40)
def test_a_message_published_on_one_node_reaches_an_sse_subscriber_on_the_other(
    tidings_server: ServerFactory, redis_url: str
) -> None:
    a, b = node(tidings_server, redis_url), node(tidings_server, redis_url)
    sse = RawSSE(b.port, "/v1/channels/news.x/events")
    try:
        assert sse.status == 200
        time.sleep(0.3)  # the stream is registered; the relay follows the channel
        for i in range(5):
            started = time.monotonic()
            mid = publish(a.url, "news.x", f"hello {i}")
            frame = parse_frame(sse.event(timeout=5))
            assert time.monotonic() - started < 1.0
            assert frame["id"] == mid
            assert frame["data"] == f"hello {i}"
        # And the other way round, on B's own publish: one order for both nodes.
        mid = publish(b.url, "news.x", "from b")
        assert parse_frame(sse.event(timeout=5))["id"] == mid
    finally:
        sse.close()


@pytest.mark.timeout(60)
def test_a_job_submitted_on_a_is_worked_through_b_and_a_long_poll_on_a_sees_it_end(
    tidings_server: ServerFactory, redis_url: str, tmp_path: Path
) -> None:
    a, b = node(tidings_server, redis_url), node(tidings_server, redis_url)
    r = httpx.post(f"{a.url}/v1/jobs", json={"type": "noop", "payload": {"n": 1}}, timeout=10)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    worker = WorkerProcess(b.url, tmp_path / "worker.log", 2)
    try:
        done = httpx.get(f"{a.url}/v1/jobs/{job_id}?wait=20", timeout=30)
        assert done.status_code == 200
        assert done.json()["status"] == "succeeded", worker.log()
        assert done.json()["result"] == {"n": 1}
        # Submitted after the worker is parked on B: B's lease wakes for A's submit.
        started = time.monotonic()
        r = httpx.post(f"{a.url}/v1/jobs?wait=10", json={"type": "noop", "payload": 2}, timeout=20)
        assert r.status_code == 200, r.text
        assert r.json()["result"] == 2
        assert time.monotonic() - started < 2.0
    finally:
        worker.kill()


@pytest.mark.timeout(60)
def test_a_session_made_on_a_is_valid_on_b(tidings_server: ServerFactory, redis_url: str) -> None:
    password = os.urandom(12).hex()
    made = subprocess.run(
        [
            sys.executable, "-m", "tidings", "users", "add", "bob", "--store", redis_url,
            "--password-stdin", "--publish", "*", "--subscribe", "*", "--submit", "*",
            "--work", "*",
        ],
        input=password + "\n", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    args = ("--require-auth", "--sessions", "database")
    a, b = node(tidings_server, redis_url, *args), node(tidings_server, redis_url, *args)
    login = httpx.post(
        f"{a.url}/v1/auth/login", json={"username": "bob", "password": password}, timeout=10
    )
    assert login.status_code == 200, login.text
    auth = {"Authorization": f"Bearer {login.json()['token']}"}
    me = httpx.get(f"{b.url}/v1/auth/me", headers=auth, timeout=10)
    assert me.status_code == 200, me.text
    assert me.json()["user"] == "bob"
    publish(b.url, "any.thing", 1, auth)
    assert httpx.get(f"{b.url}/v1/auth/me", timeout=10).status_code == 401
    # Logout on B ends the session on A too.
    assert httpx.post(f"{b.url}/v1/auth/logout", headers=auth, timeout=10).status_code == 200
    deadline = time.monotonic() + 3
    while httpx.get(f"{a.url}/v1/auth/me", headers=auth, timeout=10).status_code != 401:
        assert time.monotonic() < deadline, "the session outlived its logout on the other node"
        time.sleep(0.1)


@pytest.mark.timeout(60)
def test_after_node_a_is_killed_b_serves_what_a_acknowledged_and_redelivers_its_leases(
    tidings_server: ServerFactory, redis_url: str, tmp_path: Path
) -> None:
    a, b = node(tidings_server, redis_url), node(tidings_server, redis_url)
    acked = [publish(a.url, "orders", {"n": i}) for i in range(50)]
    # Jobs leased by a worker of A, which then dies with A.
    ids = [
        httpx.post(f"{a.url}/v1/jobs", json={"type": "sleepy", "payload": 30}, timeout=10).json()[
            "id"
        ]
        for _ in range(3)
    ]
    doomed = WorkerProcess(a.url, tmp_path / "doomed.log", 4)
    deadline = time.monotonic() + 15
    while any(
        httpx.get(f"{b.url}/v1/jobs/{i}", timeout=10).json()["status"] != "running" for i in ids
    ):
        assert time.monotonic() < deadline, doomed.log()
        time.sleep(0.1)
    a.kill()
    doomed.kill()

    page = httpx.get(f"{b.url}/v1/channels/orders/messages?after=0&limit=100", timeout=10).json()
    assert [m["id"] for m in page["messages"]] == acked
    assert [m["data"] for m in page["messages"]] == [{"n": i} for i in range(50)]

    # Leases of 2 s expire; B takes them back; a worker of B finishes them (attempt 2).
    rescuer = WorkerProcess(b.url, tmp_path / "rescuer.log", 4)
    try:
        for job_id in ids:
            # Redelivered: leased again (attempt 2) by the rescuer, which sleeps on it.
            deadline = time.monotonic() + 20
            while True:
                job = httpx.get(f"{b.url}/v1/jobs/{job_id}", timeout=10).json()
                if job["attempt"] >= 2 and job["status"] in ("running", "succeeded"):
                    break
                assert time.monotonic() < deadline, (job, rescuer.log())
                time.sleep(0.2)
    finally:
        rescuer.kill()


@pytest.mark.timeout(90)
def test_acknowledged_messages_and_accepted_jobs_survive_a_redis_restart_with_aof(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    redis = RedisProcess(tmp_path, aof=True).start()
    try:
        url = f"{redis.url}?prefix=aof:"
        srv = node(tidings_server, url)
        acked = [publish(srv.url, "ledger", i) for i in range(30)]
        jobs = [
            httpx.post(f"{srv.url}/v1/jobs", json={"type": "later", "payload": i}, timeout=10)
            for i in range(10)
        ]
        assert all(j.status_code == 202 for j in jobs)
        srv.stop()
        redis.stop(signal.SIGKILL)  # no shutdown save: only the AOF (appendfsync always)
        redis.start()
        srv = node(tidings_server, url)
        page = httpx.get(f"{srv.url}/v1/channels/ledger/messages?after=0", timeout=10).json()
        assert [m["id"] for m in page["messages"]] == acked
        assert [m["data"] for m in page["messages"]] == list(range(30))
        for j in jobs:
            got = httpx.get(f"{srv.url}/v1/jobs/{j.json()['id']}", timeout=10)
            assert got.status_code == 200
            assert got.json()["status"] == "queued"
    finally:
        redis.stop()


@pytest.fixture
def multi(tmp_path: Path, redis_url: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    log = (tmp_path / "multi.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tidings", "serve", "--port", str(port), "--store", redis_url,
            "--workers", "2", "--log-level", "warning",
        ],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.mark.timeout(60)
def test_serve_workers_runs_several_processes_on_one_port_and_drains_on_sigterm(
    multi: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = multi
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, "tidings serve --workers exited"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    children = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) >= 2, children
    # Many connections: both processes answer, and every message is in one history.
    ids = []
    for i in range(20):
        with httpx.Client(base_url=base, timeout=10) as fresh:  # a new connection each
            r = fresh.post("/v1/channels/multi/messages", json={"data": i})
            assert r.status_code == 201
            ids.append(r.json()["id"])
    assert ids == [str(i) for i in range(1, 21)]
    sse = RawSSE(port, "/v1/channels/multi/events?after=0")
    try:
        got = [parse_frame(sse.event(timeout=5))["id"] for _ in range(20)]
        assert got == ids
        proc.send_signal(signal.SIGTERM)
        while True:
            frame = parse_frame(sse.event(timeout=10))
            if frame.get("event") == "close":
                break
        assert json.loads(frame["data"])["type"] == "close"
    finally:
        sse.close()
    assert proc.wait(20) == 0


# -- regressions found in review: a live view with a hole is never silent --------------------


def frames_until_close(sse: RawSSE, timeout: float = 10) -> tuple[list[dict[str, str]], bool]:
    """The event frames of a stream until its `event: close` (True) or until it is quiet."""
    out: list[dict[str, str]] = []
    while True:
        try:
            frame = parse_frame(sse.event(timeout=timeout))
        except (TimeoutError, OSError, EOFError):
            return out, False
        if frame.get("event") == "close":
            return out, True
        out.append(frame)


@pytest.mark.timeout(60)
def test_messages_trimmed_before_a_node_read_them_end_its_streams_and_the_resume_says_reset(
    tidings_server: ServerFactory, redis_url: str
) -> None:
    """Retention 5 and a burst of 60 concurrent publishes on A: B's subscriber gets an
    unbroken run of ids and then, if B missed some to the trim, `event: close`; resuming
    from its last id then starts with `event: reset`. Never a silent jump."""
    a, b = node(tidings_server, redis_url), node(tidings_server, redis_url)
    r = httpx.put(
        f"{a.url}/v1/channels/tiny",
        json={"retention": {"max_messages": 5, "max_age": 3600}},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    sse = RawSSE(b.port, "/v1/channels/tiny/events")
    try:
        time.sleep(0.3)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: publish(a.url, "tiny", i), range(60)))
        frames, closed = frames_until_close(sse, timeout=3)
    finally:
        sse.close()
    ids = [int(f["id"]) for f in frames]
    assert ids == list(range(1, len(ids) + 1)), f"a silent jump in {ids}"
    if len(ids) == 60:
        return  # B read every message before the trim: nothing was missed
    assert closed, f"B missed messages {len(ids) + 1}.. without ending the stream"
    resumed = RawSSE(b.port, f"/v1/channels/tiny/events?after={ids[-1] if ids else 0}")
    try:
        first = parse_frame(resumed.event(timeout=5))
        if ids:  # from the start (after=0) the oldest retained is no gap
            assert first.get("event") == "reset", first
    finally:
        resumed.close()


@pytest.mark.timeout(60)
def test_a_channel_deleted_and_made_again_on_a_is_followed_afresh_on_b(
    tidings_server: ServerFactory, redis_url: str
) -> None:
    """B keeps a stream on `phoenix`; A deletes it and publishes ids 1..3 of its new life:
    B's old stream is closed, and a stream opened on B from the start gets 1..3 and
    what follows — not only the ids past the old life's end."""
    a, b = node(tidings_server, redis_url), node(tidings_server, redis_url)
    for i in range(5):
        publish(a.url, "phoenix", {"old": i})
    old = RawSSE(b.port, "/v1/channels/phoenix/events")
    try:
        time.sleep(0.3)
        assert httpx.delete(f"{a.url}/v1/channels/phoenix", timeout=10).status_code == 204
        new_ids = [publish(a.url, "phoenix", {"new": i}) for i in range(3)]
        assert new_ids == ["1", "2", "3"]
        frames, closed = frames_until_close(old, timeout=5)
        assert closed, frames
    finally:
        old.close()
    fresh = RawSSE(b.port, "/v1/channels/phoenix/events?after=0")
    try:
        got = [parse_frame(fresh.event(timeout=5))["id"] for _ in range(3)]
        assert got == new_ids
        later = [publish(a.url, "phoenix", {"new": i}) for i in range(3, 6)]
        assert [parse_frame(fresh.event(timeout=5))["id"] for _ in range(3)] == later
    finally:
        fresh.close()


@pytest.mark.timeout(60)
def test_connections_redis_closed_while_idle_do_not_fail_requests(
    tidings_server: ServerFactory, redis_proc: RedisProcess, redis_url: str
) -> None:
    """After Redis drops the node's idle connections (CLIENT KILL, as an idle timeout or a
    proxy would), the next requests still succeed."""
    srv = node(tidings_server, redis_url)
    with ThreadPoolExecutor(8) as pool:  # open several pooled connections
        list(pool.map(lambda i: publish(srv.url, "idle", i), range(16)))
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", redis_proc.port), timeout=5) as conn:
            conn.sendall(b"CLIENT KILL TYPE normal SKIPME yes\r\n")
            assert conn.recv(64).startswith(b":")
        time.sleep(0.2)
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: publish(srv.url, "idle", i), range(8)))


@pytest.mark.timeout(60)
def test_a_publish_during_a_redis_stall_longer_than_5_s_is_applied_once(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """Redis stops answering for 6 s (SIGSTOP: the kernel still takes the bytes). The
    publish sent meanwhile waits, is answered 201 and is applied once. With redis-py 8's
    default 5 s socket timeout it was answered 503 after 5 s, and Redis, once resumed, ran
    the command anyway: a publish reported failed that was in fact applied."""
    redis = RedisProcess(tmp_path).start()
    assert redis.proc is not None
    try:
        srv = node(tidings_server, f"{redis.url}?prefix=stall:")
        publish(srv.url, "stall", "before")  # the node's connection is open
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(1) as pool:
                sent = pool.submit(
                    httpx.post,
                    f"{srv.url}/v1/channels/stall/messages",
                    json={"data": "during"},
                    timeout=30,
                )
                time.sleep(6.5)
                assert not sent.done()  # waiting for Redis, not failed
                redis.proc.send_signal(signal.SIGCONT)
                r = sent.result(timeout=20)
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        assert r.status_code == 201, r.text
        page = httpx.get(f"{srv.url}/v1/channels/stall/messages?after=0", timeout=10).json()
        assert [m["data"] for m in page["messages"]] == ["before", "during"]
    finally:
        redis.stop()
