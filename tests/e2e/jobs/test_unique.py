"""Unique jobs through the API: a submit whose `unique_key` a queued or running job of its
type holds answers that job (200, `deduplicated: true`, Tidings-Deduplicated: true)
instead of queuing another; concurrent submits make one job, on one server and on two
nodes sharing Redis; a retry that would take a held key is 409; a bad key is 422; the SDK
and the CLI say when a submit was deduplicated."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.helpers import cli_ok, tidings_cli
from tests.e2e.jobs.helpers import complete, lease_one
from tests.e2e.jobs.test_who_sees_tracebacks import _client, _user
from tidings import AsyncClient, Client


@pytest.mark.timeout(60)
def test_a_held_unique_key_answers_the_job_holding_it(http, jtype):
    """The first submit queues (202, deduplicated false); a second with the same key is
    answered 200 with the first job, its header and field say so, and its payload is
    not stored; once the job ended the key makes a new job."""
    first = http.post("/v1/jobs", json={"type": jtype, "payload": 1, "unique_key": "shop-42"})
    assert first.status_code == 202, first.text
    assert first.json()["deduplicated"] is False
    assert first.json()["unique_key"] == "shop-42"
    assert "tidings-deduplicated" not in first.headers
    job = first.json()
    again = http.post("/v1/jobs", json={"type": jtype, "payload": 2, "unique_key": "shop-42"})
    assert again.status_code == 200, again.text
    assert again.headers["tidings-deduplicated"] == "true"
    assert again.headers["location"] == f"/v1/jobs/{job['id']}"
    assert again.json()["deduplicated"] is True
    assert again.json()["id"] == job["id"] and again.json()["payload"] == 1
    assert http.get("/v1/queues").json()["queues"][jtype] == {"queued": 1}

    leased = lease_one(http, jtype)
    running = http.post("/v1/jobs", json={"type": jtype, "unique_key": "shop-42"})
    assert running.status_code == 200 and running.json()["status"] == "running"
    assert complete(http, job["id"], leased["lease_token"], "ok").status_code == 200
    fresh = http.post("/v1/jobs", json={"type": jtype, "unique_key": "shop-42"})
    assert fresh.status_code == 202 and fresh.json()["id"] != job["id"]
    # Fetched on its own, a job has its key but no `deduplicated`.
    shown = http.get(f"/v1/jobs/{job['id']}").json()
    assert shown["unique_key"] == "shop-42" and "deduplicated" not in shown


@pytest.mark.timeout(60)
def test_twenty_submits_of_one_key_at_once_make_one_job(server: ServerProcess, jtype):
    """Twenty clients submit one type and key at the same moment: one 202, nineteen 200
    deduplicated answers, all naming the same job."""

    def post(n: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            return client.post("/v1/jobs", json={"type": jtype, "payload": n, "unique_key": "k"})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))
    assert sorted(r.status_code for r in answers) == [200] * 19 + [202]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.json()["deduplicated"] for r in answers) == 19
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/v1/queues").json()["queues"][jtype] == {"queued": 1}


@pytest.mark.timeout(60)
def test_twenty_submits_of_one_key_on_two_redis_nodes_make_one_job(
    tidings_server: ServerFactory, redis_url: str
):
    """Two nodes sharing Redis, ten submits of one key on each at once: one job."""
    nodes = [tidings_server(redis_url).url, tidings_server(redis_url).url]

    def post(n: int) -> httpx.Response:
        with httpx.Client(base_url=nodes[n % 2], timeout=30) as client:
            return client.post("/v1/jobs", json={"type": "t", "payload": n, "unique_key": "k"})

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(post, range(20)))
    assert sorted(r.status_code for r in answers) == [200] * 19 + [202]
    assert len({r.json()["id"] for r in answers}) == 1


@pytest.mark.timeout(60)
def test_retrying_a_job_whose_key_another_job_holds_is_409(http, jtype):
    """A failed job retried while a newer job holds its key: 409 naming the holder, the
    failed job unchanged; once the holder is cancelled the retry goes through."""
    old = http.post("/v1/jobs", json={"type": jtype, "max_attempts": 1, "unique_key": "k"})
    leased = lease_one(http, jtype)
    r = http.post(
        f"/v1/jobs/{old.json()['id']}/fail",
        json={"lease_token": leased["lease_token"], "error": "x", "retry": False},
    )
    assert r.json()["status"] == "failed"
    holder = http.post("/v1/jobs", json={"type": jtype, "unique_key": "k"}).json()
    r = http.post(f"/v1/jobs/{old.json()['id']}/retry")
    assert r.status_code == 409, r.text
    assert holder["id"] in r.json()["error"]["message"]
    assert http.get(f"/v1/jobs/{old.json()['id']}").json()["status"] == "failed"
    assert http.post(f"/v1/jobs/{holder['id']}/cancel").status_code == 200
    r = http.post(f"/v1/jobs/{old.json()['id']}/retry")
    assert r.status_code == 200 and r.json()["status"] == "queued"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", ["", "k" * 201, "a\nb", 7, ["k"]])
def test_a_bad_unique_key_is_422_saying_what_to_fix(http, jtype, bad):
    """An empty, overlong, unprintable or non-string key: 422 naming `unique_key`; no job."""
    r = http.post("/v1/jobs", json={"type": jtype, "unique_key": bad})
    assert r.status_code == 422, r.text
    assert "unique_key" in r.json()["error"]["message"]
    assert jtype not in http.get("/v1/queues").json()["queues"]


@pytest.mark.timeout(60)
def test_the_sdk_and_the_cli_say_when_a_submit_was_deduplicated(server: ServerProcess, jtype):
    """Client.submit and AsyncClient.submit take `unique_key` and their handle's
    `deduplicated` tells; `tidings jobs submit --unique-key` prints the holder's id and
    says so on stderr."""
    with Client(server.url) as client:
        first = client.submit(jtype, 1, unique_key="k")
        again = client.submit(jtype, 2, unique_key="k")
    assert not first.deduplicated and first.job.unique_key == "k"
    assert again.deduplicated and again.id == first.id

    async def async_submit() -> tuple[bool, str]:
        async with AsyncClient(server.url) as client:
            handle = await client.submit(jtype, 3, unique_key="k")
            return handle.deduplicated, handle.id

    assert asyncio.run(async_submit()) == (True, first.id)
    result = tidings_cli("jobs", "submit", jtype, "4", "--unique-key", "k", "--url", server.url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == first.id
    assert "holds unique key 'k'" in result.stderr
    assert cli_ok("jobs", "submit", jtype, "--unique-key", "other", "--url", server.url).strip()


@pytest.mark.timeout(90)
def test_a_key_held_by_someone_elses_job_is_409_without_the_job(
    tidings_server: ServerFactory, tmp_path: Path
):
    """Under --require-auth, a submitter whose key is held by another user's job gets 409
    and none of that job; the job's own submitter gets it deduplicated."""
    store = f"sqlite:///{tmp_path / 'auth.db'}"
    ann = _user(store, "ann", "--submit", "resize")
    bob = _user(store, "bob", "--submit", "resize")
    url = tidings_server(store, args=["--require-auth"]).url
    with _client(url, ann) as a, _client(url, bob) as b:
        held = a.post("/v1/jobs", json={"type": "resize", "payload": "secret", "unique_key": "k"})
        assert held.status_code == 202
        mine = a.post("/v1/jobs", json={"type": "resize", "unique_key": "k"})
        assert mine.status_code == 200 and mine.json()["id"] == held.json()["id"]
        theirs = b.post("/v1/jobs", json={"type": "resize", "unique_key": "k"})
        assert theirs.status_code == 409, theirs.text
        assert "secret" not in theirs.text and held.json()["id"] not in theirs.text


@pytest.mark.timeout(90)
def test_a_retry_refused_on_someone_elses_holder_does_not_name_it(
    tidings_server: ServerFactory, tmp_path: Path
):
    """Under --require-auth, ann retries her failed job while bob's job holds its key: 409
    without bob's job id, and so for bob the other way round; once the holder ends the
    retry goes through. (A caller who may follow the holder is told which: the test of
    the anonymous server above.)"""
    store = f"sqlite:///{tmp_path / 'auth.db'}"
    ann = _user(store, "ann", "--submit", "resize")
    bob = _user(store, "bob", "--submit", "resize")
    robot = _user(store, "robot", "--work", "resize")
    url = tidings_server(store, args=["--require-auth"]).url
    with _client(url, ann) as a, _client(url, bob) as b, _client(url, robot) as work:
        old = a.post("/v1/jobs", json={"type": "resize", "max_attempts": 1, "unique_key": "k"})
        leased = work.post("/v1/workers/lease", json={"types": ["resize"]}).json()["jobs"][0]
        r = work.post(
            f"/v1/jobs/{leased['id']}/fail",
            json={"lease_token": leased["lease_token"], "error": "x", "retry": False},
        )
        assert r.json()["status"] == "failed"
        holder = b.post("/v1/jobs", json={"type": "resize", "unique_key": "k"}).json()
        r = a.post(f"/v1/jobs/{old.json()['id']}/retry")
        assert r.status_code == 409, r.text
        assert holder["id"] not in r.text and "not yours" in r.json()["error"]["message"]
        assert b.post(f"/v1/jobs/{holder['id']}/cancel").status_code == 200
        assert a.post(f"/v1/jobs/{old.json()['id']}/retry").json()["status"] == "queued"
        r = b.post(f"/v1/jobs/{holder['id']}/retry")
        assert r.status_code == 409 and old.json()["id"] not in r.text


@pytest.mark.timeout(90)
def test_a_batch_refused_on_a_held_key_names_the_holder_only_to_who_may_follow_it(
    tidings_server: ServerFactory, tmp_path: Path
):
    """Under --require-auth a batch taking a key bob's job holds is 409 naming the batch's
    job but not bob's job to ann, and bob's own batch is told which job; nothing is made."""
    store = f"sqlite:///{tmp_path / 'auth.db'}"
    ann = _user(store, "ann", "--submit", "resize")
    bob = _user(store, "bob", "--submit", "resize")
    url = tidings_server(store, args=["--require-auth"]).url
    batch = {"jobs": [{"ref": "a", "type": "resize"}, {"ref": "b", "type": "resize"}]}
    batch["jobs"][1]["unique_key"] = "k"
    with _client(url, ann) as a, _client(url, bob) as b:
        held = b.post("/v1/jobs", json={"type": "resize", "unique_key": "k"}).json()
        r = a.post("/v1/jobs/batch", json=batch)
        assert r.status_code == 409, r.text
        assert held["id"] not in r.text and "jobs[1] ('b')" in r.json()["error"]["message"]
        r = b.post("/v1/jobs/batch", json=batch)
        assert r.status_code == 409 and held["id"] in r.json()["error"]["message"]
        listed = b.get("/v1/jobs", params={"type": "resize"}).json()["jobs"]
        assert [j["id"] for j in listed] == [held["id"]]
