"""Queue limits through the API: `PUT /v1/queues/{type}` sets a job type's rate,
concurrency and group concurrency, `GET /v1/queues(/{type})` shows them with the jobs each
holds back, `DELETE` lifts them; bad values are 422 saying what to fix; leases, and a real
`tidings worker`, never pass them."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.helpers import cli_ok, tidings_cli
from tests.e2e.jobs.helpers import InThread, complete, lease
from tests.e2e.jobs.test_who_sees_tracebacks import _client, _user
from tests.e2e.test_worker_sdk import WorkerFactory, worker_process  # noqa: F401 - a fixture
from tidings.sdk.client import AsyncClient, Client, TidingsHTTPError


def _queue(http: Any, type_: str) -> Any:
    r = http.get(f"/v1/queues/{type_}")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.timeout(60)
def test_put_get_and_delete_a_queues_limits(http, jtype):
    """PUT answers the limits set (rate.per defaults to 1 s); GET /v1/queues/{type} and
    GET /v1/queues show them with what they hold back; PUT with every limit null, or
    DELETE, lifts them."""
    r = http.put(f"/v1/queues/{jtype}", json={"rate": {"limit": 50}, "concurrency": 2})
    assert r.status_code == 200, r.text
    limits = {"rate": {"limit": 50, "per": 1.0}, "concurrency": 2, "group_concurrency": None}
    assert r.json() == {"type": jtype, "limits": limits}
    for n in range(4):
        http.post("/v1/jobs", json={"type": jtype, "payload": n, "group": f"g{n % 2}"})
    assert len(lease(http, jtype, max_=10, wait=0)) == 2
    shown = _queue(http, jtype)
    waiting = {"concurrency": 2, "rate": 0, "group": 0}
    assert shown == {
        "type": jtype,
        "counts": {"queued": 2, "running": 2},
        "limits": {**limits, "waiting": waiting},
    }
    everything = http.get("/v1/queues").json()
    assert everything["limits"][jtype] == {**limits, "waiting": waiting}
    assert everything["queues"][jtype] == {"queued": 2, "running": 2}

    r = http.put(f"/v1/queues/{jtype}", json={"group_concurrency": 1})
    assert r.json()["limits"] == {"rate": None, "concurrency": None, "group_concurrency": 1}
    assert _queue(http, jtype)["limits"]["waiting"] == {"concurrency": 0, "rate": 0, "group": 2}
    r = http.put(f"/v1/queues/{jtype}", json={"rate": None, "concurrency": None})
    assert r.json()["limits"] is None
    assert _queue(http, jtype)["limits"] is None
    http.put(f"/v1/queues/{jtype}", json={"concurrency": 1})
    assert http.delete(f"/v1/queues/{jtype}").status_code == 204
    assert jtype not in http.get("/v1/queues").json()["limits"]
    assert len(lease(http, jtype, max_=10, wait=0)) == 2  # lifted: the rest go


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("body", "says"),
    [
        ({"rate": {"limit": 0, "per": 1}}, '"rate.limit" must be 1 to'),
        ({"rate": {"limit": -5}}, '"rate.limit" must be 1 to'),
        ({"rate": {"limit": 10**12}}, '"rate.limit" must be 1 to'),
        ({"rate": {"limit": 5, "per": 0}}, '"rate.per" must be'),
        ({"rate": {"limit": 5, "per": 1e300}}, '"rate.per" must be'),
        ({"rate": {"per": 5}}, "limit"),
        ({"rate": {"limit": 1.5}}, "limit"),
        ({"concurrency": 0}, '"concurrency" must be 1 to'),
        ({"group_concurrency": 10**9}, '"group_concurrency" must be 1 to'),
        ({"concurency": 3}, "concurency"),
    ],
)
def test_bad_limits_are_422_saying_what_to_fix(http, jtype, body, says):
    """A rate of 0, a negative, absurd or mistyped value, an unknown field: 422 with what
    to fix; nothing is set."""
    r = http.put(f"/v1/queues/{jtype}", json=body)
    assert r.status_code == 422, r.text
    assert says in r.json()["error"]["message"]
    assert _queue(http, jtype)["limits"] is None


@pytest.mark.timeout(60)
def test_a_bad_group_is_422_and_a_good_one_is_shown(http, jtype):
    """`group` on submit: 1-200 printable characters, shown on the job."""
    for bad in ("", "g" * 201, "a\tb"):
        r = http.post("/v1/jobs", json={"type": jtype, "group": bad})
        assert r.status_code == 422, r.text
        assert '"group"' in r.json()["error"]["message"]
    r = http.post("/v1/jobs", json={"type": jtype, "group": "tenant-42"})
    assert r.status_code == 202 and r.json()["group"] == "tenant-42"


@pytest.mark.timeout(60)
def test_a_rate_limited_type_is_leased_at_its_rate(http, jtype):
    """10 per second: a burst of 10, then more to long-polling leases, never more than 10
    plus 10 per second elapsed (only that upper bound is timed: a loaded machine may lease
    fewer)."""
    http.put(f"/v1/queues/{jtype}", json={"rate": {"limit": 10, "per": 1}})
    for n in range(40):
        http.post("/v1/jobs", json={"type": jtype, "payload": n})
    started = time.monotonic()
    taken = 0
    while time.monotonic() - started < 1.5 or taken <= 10:
        jobs = lease(http, jtype, max_=20, wait=1.0)
        taken += len(jobs)
        for job in jobs:
            assert complete(http, job["id"], job["lease_token"], None).status_code == 200
    elapsed = time.monotonic() - started
    assert 10 < taken <= 10 + 10 * elapsed + 1


@pytest.mark.timeout(90)
def test_a_real_worker_never_runs_more_than_the_concurrency_limit(
    server: ServerProcess,
    worker_process: WorkerFactory,  # noqa: F811 - the fixture imported above
):
    """A `tidings worker` with 8 slots, on a type limited to 2 running jobs of 0.5 s: every
    job succeeds, and no more than 2 ran at once — by the running count polled meanwhile,
    and by their start and end times (a lease carried by the request that completes the
    job before it may read the clock before that completion, by more on a loaded machine:
    each job's span is shortened by 0.15 s at both ends, so a third job running alongside
    two others for its whole 0.5 s would still overlap them)."""
    with Client(server.url) as client, httpx.Client(base_url=server.url) as http:
        assert http.put("/v1/queues/quiet", json={"concurrency": 2}).status_code == 200
        handles = [client.submit("quiet", {"seconds": 0.5}) for _ in range(8)]
        proc = worker_process(server.url, ["--concurrency", "8"])
        polled: list[int] = []
        try:
            while len(polled) < 2000 and not all(h.refresh().terminal for h in handles):
                polled.append(_queue(http, "quiet")["counts"].get("running", 0))
            jobs = [handle.wait(timeout=30) for handle in handles]
        finally:
            proc.stop()
            http.delete("/v1/queues/quiet")
    assert {job.status for job in jobs} == {"succeeded"}
    assert 1 <= max(polled) <= 2
    edges = sorted(
        [(job.started_at + 0.15, 1) for job in jobs if job.started_at is not None]
        + [(job.finished_at - 0.15, -1) for job in jobs if job.finished_at is not None],
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert 1 <= most <= 2


@pytest.mark.timeout(90)
def test_only_admins_set_limits_and_only_a_types_users_see_its_queue(
    tidings_server: ServerFactory, tmp_path: Path
):
    """Under --require-auth: a submitter may not PUT or DELETE limits (403); it sees the
    queue of its type, not of others (403)."""
    store = f"sqlite:///{tmp_path / 'auth.db'}"
    ann = _user(store, "ann", "--submit", "resize")
    boss = _user(store, "boss", "--admin")
    url = tidings_server(store, args=["--require-auth"]).url
    with _client(url, ann) as user, _client(url, boss) as admin:
        assert user.put("/v1/queues/resize", json={"concurrency": 1}).status_code == 403
        assert user.delete("/v1/queues/resize").status_code == 403
        assert admin.put("/v1/queues/resize", json={"concurrency": 1}).status_code == 200
        assert admin.put("/v1/queues/secret", json={"concurrency": 1}).status_code == 200
        assert user.get("/v1/queues/resize").json()["limits"]["concurrency"] == 1
        assert user.get("/v1/queues/secret").status_code == 403
        assert list(user.get("/v1/queues").json()["limits"]) == ["resize"]


@pytest.mark.timeout(60)
def test_a_lease_held_by_the_concurrency_limit_is_woken_when_a_job_ends(http, jtype):
    """A lease request parked because the type runs as many jobs as it may is answered as
    soon as the running job completes, not at its next periodic look (5 s)."""
    http.put(f"/v1/queues/{jtype}", json={"concurrency": 1})
    for n in range(2):
        http.post("/v1/jobs", json={"type": jtype, "payload": n})
    [first] = lease(http, jtype, wait=0)
    parked = InThread(lambda: lease(http, jtype, wait=10))
    time.sleep(0.3)
    ended = time.monotonic()
    assert complete(http, first["id"], first["lease_token"], None).status_code == 200
    assert len(parked.join()) == 1
    assert parked.ended_at is not None and parked.ended_at - ended < 2.5


@pytest.mark.timeout(60)
def test_two_redis_nodes_wake_each_others_leases_held_by_a_limit(
    tidings_server: ServerFactory, redis_url: str
):
    """A lease parked on node A under a concurrency limit is answered as soon as the
    running job completes through node B."""
    a, b = tidings_server(redis_url).url, tidings_server(redis_url).url
    with httpx.Client(base_url=a, timeout=30) as on_a, httpx.Client(base_url=b, timeout=30) as on_b:
        on_a.put("/v1/queues/t", json={"concurrency": 1})
        for n in range(2):
            on_a.post("/v1/jobs", json={"type": "t", "payload": n})
        [first] = lease(on_a, "t", wait=0)
        parked = InThread(lambda: lease(on_a, "t", wait=10))
        time.sleep(0.5)
        ended = time.monotonic()
        assert complete(on_b, first["id"], first["lease_token"], None).status_code == 200
        assert len(parked.join()) == 1
        assert parked.ended_at is not None and parked.ended_at - ended < 2.5


@pytest.mark.timeout(60)
def test_the_sdk_and_the_cli_set_show_and_lift_limits(server: ServerProcess, jtype):
    """Client.set_queue_limits / queue / lift_queue_limits (and their async twins), and
    `tidings jobs limit`, which says what to fix for a rate of 0."""
    with Client(server.url) as client:
        limits = client.set_queue_limits(jtype, rate=5, per=2, group_concurrency=1)
        assert limits == {
            "rate": {"limit": 5, "per": 2.0},
            "concurrency": None,
            "group_concurrency": 1,
        }
        assert client.queue(jtype)["limits"]["waiting"] == {"concurrency": 0, "rate": 0, "group": 0}
        client.lift_queue_limits(jtype)
        assert client.queue(jtype)["limits"] is None
        assert client.set_queue_limits(jtype) is None
        with pytest.raises(TidingsHTTPError) as refused:
            client.set_queue_limits(jtype, rate=0)
        assert refused.value.status == 422

    async def async_calls() -> Any:
        async with AsyncClient(server.url) as client:
            await client.set_queue_limits(jtype, concurrency=3)
            shown = await client.queue(jtype)
            await client.lift_queue_limits(jtype)
            return shown["limits"]["concurrency"]

    assert asyncio.run(async_calls()) == 3

    said = cli_ok("jobs", "limit", jtype, "--rate", "50", "--concurrency", "2", "--url", server.url)
    assert said.strip() == f"{jtype}: rate 50 per 1 s; concurrency 2; held back now: none"
    shown = json.loads(cli_ok("jobs", "limit", jtype, "--json", "--url", server.url))
    assert shown["limits"]["rate"] == {"limit": 50, "per": 1.0}
    assert cli_ok("jobs", "limit", jtype, "--lift", "--url", server.url).strip() == (
        f"{jtype}: no limits"
    )
    bad = tidings_cli("jobs", "limit", jtype, "--rate", "0", "--url", server.url)
    assert bad.returncode != 0
    assert '"rate.limit" must be 1 to' in bad.stderr


@pytest.mark.timeout(60)
def test_lifting_a_limit_on_one_redis_node_wakes_the_leases_parked_on_the_other(
    tidings_server: ServerFactory, redis_url: str
):
    """A lease parked on node B under a concurrency limit is answered as soon as node A
    lifts the limit."""
    a, b = tidings_server(redis_url).url, tidings_server(redis_url).url
    with httpx.Client(base_url=a, timeout=30) as on_a, httpx.Client(base_url=b, timeout=30) as on_b:
        on_a.put("/v1/queues/t", json={"concurrency": 1})
        for n in range(2):
            on_a.post("/v1/jobs", json={"type": "t", "payload": n})
        assert len(lease(on_b, "t", wait=0)) == 1
        parked = InThread(lambda: lease(on_b, "t", wait=10))
        time.sleep(0.5)
        lifted = time.monotonic()
        assert on_a.delete("/v1/queues/t").status_code == 204
        assert len(parked.join()) == 1
        assert parked.ended_at is not None and parked.ended_at - lifted < 2.5
