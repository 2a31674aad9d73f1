"""The worker list (`GET /v1/workers`, `tidings workers`) against real servers.

Real `python -m tidings worker tests.e2e.jobs_worker_app:worker` processes show up with
their types, concurrency and running jobs; raw lease requests show what the protocol says
(a `worker` body refused with 422, jobs of workers that say nothing under `unidentified`);
who may see whom is checked with real users and tokens. The window a worker stays listed
is the server's constant (WORKER_WINDOW, 60 s): one test waits it out.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.helpers import tidings_cli
from tidings.protocol.codecs import parse_time
from tidings.sdk.worker import ASYNC_CONCURRENCY, MAX_LEASE_BATCH, SYNC_CONCURRENCY
from tidings.server.constants import WORKER_MARK_INTERVAL, WORKER_WINDOW

Json = dict[str, Any]
REPO = Path(__file__).resolve().parents[2]
APP = "tests.e2e.jobs_worker_app:worker"
APP_TYPES = ["noop", "progressive", "sleepy"]


class WorkerProcess:
    """One `python -m tidings worker` process, its output in a log file."""

    def __init__(
        self,
        url: str,
        log_path: Path,
        concurrency: int | None,
        token: str | None,
        env_extra: dict[str, str] | None = None,
        app: str = APP,
    ) -> None:
        cmd = [
            sys.executable, "-m", "tidings", "worker", app, "--url", url, "--log-level", "info",
        ]  # fmt: skip
        if concurrency is not None:
            cmd += ["--concurrency", str(concurrency)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(env_extra or {})
        if token is not None:
            env["TIDINGS_TOKEN"] = token
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM, and wait for the drain to end."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(20)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: `start_worker(url, concurrency=2, token=None, env=None, app=APP)`
    (concurrency None: no --concurrency); all are killed after."""
    started: list[WorkerProcess] = []

    def start(
        url: str,
        concurrency: int | None = 2,
        token: str | None = None,
        env: dict[str, str] | None = None,
        app: str = APP,
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started)}.log"
        w = WorkerProcess(url, log, concurrency, token, env, app)
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """`check()`'s first truthy answer, polled until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def listed(http: httpx.Client, **kw: Any) -> Json:
    r = http.get("/v1/workers", **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body: Json = r.json()
    return body


def by_pid(http: httpx.Client, pid: int) -> Json | None:
    """The listed worker whose default name ends with `:pid`, or None."""
    return next((w for w in listed(http)["workers"] if w["name"].endswith(f":{pid}")), None)


def submit(http: httpx.Client, type_: str, payload: Any, **kw: Any) -> Json:
    r = http.post("/v1/jobs", json={"type": type_, "payload": payload}, **kw)
    assert r.status_code == 202, r.text
    body: Json = r.json()
    return body


def lease(http: httpx.Client, body: Json, **kw: Any) -> httpx.Response:
    return http.post("/v1/workers/lease", json={"wait": 0, "lease": 30, **body}, **kw)


@pytest.mark.timeout(60)
def test_a_running_worker_is_listed_with_its_types_concurrency_and_running_job(
    tidings_server: ServerFactory, store_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        worker = start_worker(srv.url, concurrency=3)
        w = wait_until(lambda: by_pid(http, worker.pid), 15, f"the worker:\n{worker.log()}")
        assert w["name"] == f"{socket.gethostname()}:{worker.pid}"
        assert w["types"] == APP_TYPES
        assert w["concurrency"] == 3
        assert w["user"] is None  # anonymous
        assert w["running"] == []
        assert parse_time(w["first_seen"]) <= parse_time(w["last_seen"]) <= time.time() + 1
        assert f"id {w['id']}" in worker.log()  # the worker logs the id it is listed under

        job = submit(http, "progressive", 20)  # 2 s, reporting progress every 0.1 s
        running = wait_until(
            lambda: by_pid(http, worker.pid)["running"], 10, "the job to run on the worker"
        )
        assert [(j["id"], j["type"], j["attempt"]) for j in running] == [
            (job["id"], "progressive", 1)
        ]
        assert set(running[0]) == {
            "id", "type", "attempt", "started_at", "lease_expires_at", "progress", "message",
        }  # fmt: skip
        assert http.get(f"/v1/jobs/{job['id']}").json()["worker"] == w["id"]
        assert listed(http)["unidentified"] == []

        done = http.get(f"/v1/jobs/{job['id']}", params={"wait": 20}).json()
        assert done["status"] == "succeeded"
        assert done["worker"] == w["id"]  # who held it last, kept after it ended
        wait_until(lambda: by_pid(http, worker.pid)["running"] == [], 5, "the job to leave")

        worker.stop()
        gone = by_pid(http, worker.pid)
        time.sleep(WORKER_MARK_INTERVAL + 1)
        still = by_pid(http, worker.pid)
        # Stopped: listed until the window ends, no longer seen meanwhile.
        assert still is not None
        assert still["last_seen"] == gone["last_seen"]


@pytest.mark.timeout(60)
def test_tidings_worker_is_listed_under_the_name_it_was_given(
    tidings_server: ServerFactory, start_worker: Callable[..., WorkerProcess]
) -> None:
    """`TIDINGS_WORKER_NAME` (the twin of `tidings worker --name`) names the worker in the
    list; a name the server would refuse stops the command before it leases anything."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        worker = start_worker(srv.url, env={"TIDINGS_WORKER_NAME": "encoder on gpu-3"})
        named = wait_until(
            lambda: [w for w in listed(http)["workers"] if w["name"] == "encoder on gpu-3"],
            15,
            f"the named worker:\n{worker.log()}",
        )
        assert named[0]["types"] == APP_TYPES

        bad = start_worker(srv.url, env={"TIDINGS_WORKER_NAME": "two\nlines"})
        assert bad.proc.wait(20) == 2
        assert "--name:" in bad.log() and "printable" in bad.log()


DEFAULTS_APP = "tests.e2e.default_worker_app"


def naps(http: httpx.Client, n: int, seconds: float) -> list[str]:
    """Submit `n` jobs of `nap` (the defaults app's handler); their ids."""
    return [submit(http, "nap", seconds)["id"] for _ in range(n)]


def most_at_once(http: httpx.Client, ids: list[str]) -> int:
    """Wait for these `nap` jobs to succeed; how many of them ran at the same moment."""
    edges = []
    for job_id in ids:
        job = http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).json()
        assert job["status"] == "succeeded", job
        edges += [(job["result"]["started"], 1), (job["result"]["ended"], -1)]
    depth = deepest = 0
    for _, step in sorted(edges):  # an end sorts before a start at the same instant
        depth += step
        deepest = max(deepest, depth)
    return deepest


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("app", "expected"),
    [("sync_worker", SYNC_CONCURRENCY), ("async_worker", ASYNC_CONCURRENCY)],
)
def test_tidings_worker_without_concurrency_runs_as_many_jobs_as_its_handlers_kind_allows(
    tidings_server: ServerFactory,
    start_worker: Callable[..., WorkerProcess],
    app: str,
    expected: int,
) -> None:
    """No `--concurrency`, no `Worker(concurrency=)`: plain-function handlers run
    SYNC_CONCURRENCY jobs at once (a thread each), `async def` ones ASYNC_CONCURRENCY; the
    worker list shows that number, and that many jobs do run at once."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=40) as http:
        ids = naps(http, expected + 8, 2.0)
        worker = start_worker(srv.url, concurrency=None, app=f"{DEFAULTS_APP}:{app}")
        w = wait_until(lambda: by_pid(http, worker.pid), 15, f"the worker:\n{worker.log()}")
        assert w["concurrency"] == expected
        assert most_at_once(http, ids) == expected
        assert f"concurrency {expected}," in worker.log_path.read_text()


@pytest.mark.timeout(60)
def test_tidings_worker_concurrency_overrides_the_default_even_past_one_lease_batch(
    tidings_server: ServerFactory, start_worker: Callable[..., WorkerProcess]
) -> None:
    """`--concurrency` (and TIDINGS_CONCURRENCY) win over the default, also past the jobs
    one lease may carry (MAX_LEASE_BATCH, the server's limit: the worker leases the rest
    in the next round trip); a worker with both kinds of handlers takes the sync default."""
    srv = tidings_server()
    wide = MAX_LEASE_BATCH + 50
    with httpx.Client(base_url=srv.url, timeout=40) as http:
        ids = naps(http, wide, 3.0)
        worker = start_worker(srv.url, concurrency=wide, app=f"{DEFAULTS_APP}:async_worker")
        w = wait_until(lambda: by_pid(http, worker.pid), 15, f"the worker:\n{worker.log()}")
        assert w["concurrency"] == wide
        assert most_at_once(http, ids) == wide
        assert "lease failed" not in worker.log()
        worker.stop()

        mixed = f"{DEFAULTS_APP}:mixed_worker"
        told = start_worker(srv.url, concurrency=None, app=mixed, env={"TIDINGS_CONCURRENCY": "3"})
        plain = start_worker(srv.url, concurrency=None, app=mixed)
        for proc, expected in ((told, 3), (plain, SYNC_CONCURRENCY)):
            w = wait_until(lambda p=proc: by_pid(http, p.pid), 15, f"the worker:\n{proc.log()}")
            assert (w["concurrency"], w["types"]) == (expected, ["nap", "sync_nap"])


@pytest.mark.slow
@pytest.mark.timeout(WORKER_WINDOW + 60)
def test_a_stopped_worker_leaves_the_list_a_window_after_it_was_last_seen(
    tidings_server: ServerFactory, start_worker: Callable[..., WorkerProcess]
) -> None:
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        worker = start_worker(srv.url)
        wait_until(lambda: by_pid(http, worker.pid), 15, f"the worker:\n{worker.log()}")
        worker.stop()
        last_seen = parse_time(by_pid(http, worker.pid)["last_seen"])
        wait_until(
            lambda: by_pid(http, worker.pid) is None,
            WORKER_WINDOW + 15,
            "the stopped worker to leave the list",
        )
        left = time.time()
        assert WORKER_WINDOW - 1 <= left - last_seen <= WORKER_WINDOW + 5


@pytest.mark.timeout(30)
def test_leases_say_who_holds_a_job_and_heartbeats_keep_its_worker_listed(
    tidings_server: ServerFactory, store_url: str
) -> None:
    srv = tidings_server(store=store_url)
    me = {"id": "box-7.a:1", "name": "box-7 (pid 1)", "concurrency": 2}
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        named = submit(http, "t.named", {"n": 1})
        r = lease(http, {"types": ["t.named"], "worker": me})
        assert r.status_code == 200, r.text
        [leased] = r.json()["jobs"]
        assert leased["id"] == named["id"]
        nameless = submit(http, "t.nameless", None)
        r = lease(http, {"types": ["t.nameless"]})
        assert [j["id"] for j in r.json()["jobs"]] == [nameless["id"]]

        answer = listed(http)
        [w] = answer["workers"]
        assert {k: w[k] for k in ("id", "name", "concurrency", "types", "user")} == {
            **me,
            "types": ["t.named"],
            "user": None,
        }
        assert [j["id"] for j in w["running"]] == [named["id"]]
        assert [j["id"] for j in answer["unidentified"]] == [nameless["id"]]
        assert http.get(f"/v1/jobs/{nameless['id']}").json()["worker"] is None

        # A heartbeat (progress) shows in the list, and keeps the worker seen.
        time.sleep(WORKER_MARK_INTERVAL + 0.5)
        beat = http.post(
            f"/v1/jobs/{named['id']}/heartbeat",
            json={"lease_token": leased["lease_token"], "progress": 40, "message": "half"},
        )
        assert beat.status_code == 200, beat.text
        [w2] = listed(http)["workers"]
        assert (w2["first_seen"], w2["running"][0]["progress"]) == (w["first_seen"], 40)
        assert w2["running"][0]["message"] == "half"
        assert parse_time(w2["last_seen"]) >= parse_time(w["last_seen"]) + WORKER_MARK_INTERVAL


# A malformed `worker` of a lease request, and what the 422 says about it.
MALFORMED_WORKERS: list[tuple[Any, str]] = [
    ({"id": ""}, '"id" must be 1-64 characters'),
    ({"id": "has space"}, '"id" must be 1-64 characters'),
    ({"id": "x" * 65}, '"id" must be 1-64 characters'),
    ({"id": "w1", "name": "two\nlines"}, '"name" must be at most 128 printable'),
    ({"id": "w1", "name": "n" * 129}, '"name" must be at most 128 printable'),
    ({"id": "w1", "concurrency": 0}, '"concurrency" must be 1 to 10000'),
    ({"id": "w1", "concurrency": 10_001}, '"concurrency" must be 1 to 10000'),
    ({"id": "w1", "concurrency": "4"}, "$.worker.concurrency"),
    ({"id": "w1", "colour": "red"}, "unknown field `colour`"),
    ({"name": "no id"}, "missing required field `id`"),
    ("w1", "$.worker"),
]


@pytest.mark.timeout(30)
def test_a_lease_with_a_malformed_worker_is_refused_with_422_saying_what_to_fix(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        job = submit(http, "t", None)
        for worker, says in MALFORMED_WORKERS:
            r = lease(http, {"types": ["t"], "worker": worker})
            assert r.status_code == 422, (worker, r.text)
            assert r.json()["error"]["code"] == "invalid_body"
            assert says in r.json()["error"]["message"], (worker, r.text)
        # Nothing was leased, and no worker listed.
        assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
        assert listed(http)["workers"] == []


def make_user(http: httpx.Client, name: str, **permissions: list[str]) -> str:
    """A user with `permissions` (as the admin API takes them), and an API token of theirs."""
    r = http.put(f"/v1/admin/users/{name}", json={"permissions": permissions})
    assert r.status_code in (200, 201), r.text
    r = http.post(f"/v1/admin/users/{name}/tokens", json={"name": "test"})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


@pytest.mark.timeout(60)
def test_a_worker_id_in_use_is_not_another_users_to_take(tidings_server: ServerFactory) -> None:
    """Jobs show their worker's id. Carol leasing under the id of alice's worker neither
    takes over its record nor sees alice's running job through it."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=30) as admin:
        alice = {"Authorization": f"Bearer {make_user(admin, 'alice', work=['t.a'])}"}
        carol = {"Authorization": f"Bearer {make_user(admin, 'carol', work=['t.c'])}"}
        job = submit(admin, "t.a", {"secret": 1})
        ident = {"id": "shared-1", "name": "alice's box", "concurrency": 1}
        r = lease(admin, {"types": ["t.a"], "worker": ident}, headers=alice)
        assert [j["id"] for j in r.json()["jobs"]] == [job["id"]], r.text
        assert admin.get(f"/v1/jobs/{job['id']}").json()["worker"] == "shared-1"

        theirs = submit(admin, "t.c", None)
        taken = {**ident, "name": "carol's box"}
        r = lease(admin, {"types": ["t.c"], "worker": taken}, headers=carol)
        assert [j["id"] for j in r.json()["jobs"]] == [theirs["id"]], r.text

        [w] = listed(admin)["workers"]
        assert (w["id"], w["user"], w["name"]) == ("shared-1", "alice", "alice's box")
        assert {j["id"] for j in w["running"]} == {job["id"], theirs["id"]}
        # Alice sees her worker with her job only: carol's job is not hers to follow.
        [mine] = listed(admin, headers=alice)["workers"]
        assert [j["id"] for j in mine["running"]] == [job["id"]]
        assert listed(admin, headers=carol)["workers"] == []


@pytest.mark.timeout(60)
def test_admins_see_every_worker_a_work_grant_its_own_and_others_are_refused(
    tidings_server: ServerFactory, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Loopback without --require-auth: anonymous requests act as an admin.
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=30) as admin:
        ann = make_user(admin, "ann", work=APP_TYPES)
        bob = make_user(admin, "bob", work=["*"])
        sue = make_user(admin, "sue", submit=["*"])
        workers = {
            "ann": start_worker(srv.url, token=ann),
            "bob": start_worker(srv.url, token=bob),
            None: start_worker(srv.url),
        }
        seen = {
            user: wait_until(lambda w=w: by_pid(admin, w.pid), 15, f"{user}'s worker:\n{w.log()}")
            for user, w in workers.items()
        }
        assert {user: w["user"] for user, w in seen.items()} == {u: u for u in workers}
        assert {w["id"] for w in listed(admin)["workers"]} == {w["id"] for w in seen.values()}

        job = submit(admin, "sleepy", 3)
        holder = wait_until(
            lambda: admin.get(f"/v1/jobs/{job['id']}").json()["worker"], 10, "a worker to take it"
        )
        for user, token in (("ann", ann), ("bob", bob)):
            mine = listed(admin, headers={"Authorization": f"Bearer {token}"})
            assert [w["id"] for w in mine["workers"]] == [seen[user]["id"]]
            running = [j["id"] for w in mine["workers"] for j in w["running"]]
            assert running == ([job["id"]] if holder == seen[user]["id"] else [])
            # Another worker's job is not "unidentified": it has a worker.
            assert mine["unidentified"] == []

        r = admin.get("/v1/workers", headers={"Authorization": f"Bearer {sue}"})
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "forbidden"
        assert "work grant" in r.json()["error"]["message"]
        r = admin.get("/v1/workers", headers={"Authorization": "Bearer tdt_not-a-token"})
        assert r.status_code == 401, r.text


@pytest.mark.timeout(60)
def test_tidings_workers_prints_a_table_and_json(
    tidings_server: ServerFactory, start_worker: Callable[..., WorkerProcess]
) -> None:
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        worker = start_worker(srv.url, concurrency=2)
        w = wait_until(lambda: by_pid(http, worker.pid), 15, f"the worker:\n{worker.log()}")
        job = submit(http, "sleepy", 20)  # still running when the slow CLI starts
        wait_until(lambda: by_pid(http, worker.pid)["running"], 10, "the job to run")

        done = tidings_cli("workers", "--url", srv.url, "--json")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        [shown] = answer["workers"]
        assert (shown["id"], shown["types"]) == (w["id"], APP_TYPES)
        assert [j["id"] for j in shown["running"]] == [job["id"]]
        assert answer["unidentified"] == []

        done = tidings_cli("workers", "--url", srv.url)
        assert done.returncode == 0, done.stderr
        table = done.stdout
        for cell in (w["name"], w["id"], "noop, progressive, sleepy", "1/2", f"sleepy {job['id']}"):
            assert cell in table, table

        helped = tidings_cli("workers", "--help")
        assert "\n  Examples:\n    tidings workers" in helped.stdout, helped.stdout


@pytest.mark.timeout(30)
def test_tidings_workers_says_what_to_do_when_refused(tidings_server: ServerFactory) -> None:
    srv: ServerProcess = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=30) as admin:
        sue = make_user(admin, "sue", submit=["*"])
    done = tidings_cli("workers", "--url", srv.url, "--token", sue)
    assert done.returncode == 1
    assert "may not see workers" in done.stderr
    assert "tidings users grant" in done.stderr
