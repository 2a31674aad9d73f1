"""Job dependencies through the API: `after` on submit makes a job wait (status
`waiting`) until its parents all succeeded; a real worker then runs it and sees their
results (`job.parents`); a parent that fails cancels its children with the reason; an
`after` naming a job that does not exist (or that is not the caller's) is 422.
`POST /v1/jobs/batch` submits a graph at once, all or nothing: a cycle, an unknown ref
or a type not the caller's to submit makes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.jobs.helpers import complete, get, lease, lease_one, submit
from tests.e2e.jobs.test_who_sees_tracebacks import _client, _user
from tests.e2e.test_worker_sdk import (  # noqa: F401 - a fixture
    WORKER_APP,
    WorkerFactory,
    worker_process,
)
from tidings import AsyncClient, Client


@pytest.mark.timeout(60)
def test_a_chain_runs_in_order_and_each_job_sees_its_parents_result(
    server: ServerProcess,
    worker_process: WorkerFactory,  # noqa: F811 - the fixture imported above
):
    """a → b → c with a real `tidings worker`: b and c wait while their parent has not
    succeeded, each runs after it, and c's handler sees b's result."""
    with Client(server.url) as client:
        a = client.submit("parents", "a")
        b = client.submit("parents", "b", after=[a.id])
        c = client.submit("parents", "c", after=[b.id])
        assert b.job.status == "waiting" and c.job.after == [b.id]
        proc = worker_process(server.url)
        try:
            done = [handle.wait(timeout=30) for handle in (a, b, c)]
        finally:
            proc.stop()
    assert [job.status for job in done] == ["succeeded"] * 3
    assert done[0].finished_at <= done[1].started_at  # type: ignore[operator]
    assert done[1].finished_at <= done[2].started_at  # type: ignore[operator]
    assert done[2].result == {
        "payload": "c",
        "parents": [{"id": b.id, "type": "parents", "result": done[1].result}],
    }
    assert done[1].result["parents"][0]["result"] == {"payload": "a", "parents": []}


@pytest.mark.timeout(60)
def test_a_worker_handler_sees_which_parents_result_was_left_out(
    server: ServerProcess,
    worker_process: WorkerFactory,  # noqa: F811 - the fixture imported above
):
    """A parent whose result is over what a lease answer carries: a real `tidings
    worker`'s handler sees it with `result` None and `omitted` saying how to read it."""
    with Client(server.url) as client:
        a = client.submit("parents", "x" * 300_000)
        b = client.submit("parents", "b", after=[a.id])
        proc = worker_process(server.url)
        try:
            done = [handle.wait(timeout=30) for handle in (a, b)]
        finally:
            proc.stop()
    assert [job.status for job in done] == ["succeeded"] * 2
    [seen] = done[1].result["parents"]
    assert seen["id"] == a.id and seen["result"] is None
    assert f"GET /v1/jobs/{a.id}" in seen["omitted"]


@pytest.mark.timeout(60)
def test_a_failing_parent_cancels_its_children_with_the_reason(
    server: ServerProcess,
    worker_process: WorkerFactory,  # noqa: F811 - the fixture imported above
):
    """A parent that fails for good (a real worker, one attempt) ends its child and the
    child's own child cancelled, each naming the parent that ended it."""
    with Client(server.url) as client:
        bad = client.submit("fail", max_attempts=1)
        child = client.submit("parents", "child", after=[bad.id])
        grandchild = client.submit("parents", "grandchild", after=[child.id])
        proc = worker_process(server.url)
        try:
            assert bad.wait(timeout=30).status == "failed"
            ended = child.wait(timeout=10)
            last = grandchild.wait(timeout=10)
        finally:
            proc.stop()
    assert ended.status == "cancelled" and ended.started_at is None
    assert ended.error["type"] == "ParentFailed" and ended.error["parent"] == bad.id
    assert f"parent job {bad.id} ended failed" in ended.error["message"]
    assert last.status == "cancelled" and last.error["parent"] == child.id


@pytest.mark.timeout(60)
def test_waiting_jobs_are_counted_listed_and_leased_with_their_parents(http, jtype):
    """A waiting job shows in the queue counts and the `status=waiting` listing, is not
    leased, and once its parent succeeded is leased with `parents` in the lease answer;
    cancelling a waiting job ends it at once."""
    parent = submit(http, jtype, 1)
    child = submit(http, jtype + ".c", 2, after=[parent["id"]])
    assert child["status"] == "waiting" and child["after"] == [parent["id"]]
    assert http.get("/v1/queues").json()["queues"][jtype + ".c"] == {"waiting": 1}
    listed = http.get("/v1/jobs", params={"status": "waiting", "type": jtype + ".c"}).json()
    assert [j["id"] for j in listed["jobs"]] == [child["id"]]
    leased = lease_one(http, jtype)
    assert "parents" not in leased
    assert complete(http, parent["id"], leased["lease_token"], {"r": 1}).status_code == 200
    got = lease_one(http, jtype + ".c")
    assert got["id"] == child["id"]
    assert got["parents"] == [{"id": parent["id"], "type": jtype, "result": {"r": 1}}]
    other = submit(http, jtype + ".d", after=[child["id"]])
    cancelled = http.post(f"/v1/jobs/{other['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"


def _finish_all(http: httpx.Client, type_: str, results: list[Any]) -> list[str]:
    """Submit a job of `type_` per result, lease them all and complete each with its
    result; their ids, in that order."""
    ids = [submit(http, type_)["id"] for _ in results]
    leased = {job["id"]: job for job in lease(http, type_, max_=len(ids))}
    assert sorted(leased) == sorted(ids)
    for job_id, result in zip(ids, results, strict=True):
        r = complete(http, job_id, leased[job_id]["lease_token"], result)
        assert r.status_code == 200, r.text
    return ids


@pytest.mark.timeout(60)
def test_a_lease_answer_carries_a_bounded_share_of_parents_results(http, jtype):
    """Parents' results past 256 KiB for one leased job are left out of the lease
    answer, each such parent marked `omitted` (saying its size and GET /v1/jobs/{id},
    which reads it) while smaller results after it still come; and past 4 MiB for a
    whole answer, the later jobs' results are left out too."""
    big, bigger = "a" * 100_000, "b" * 200_000
    parents = _finish_all(http, jtype, [big, bigger, {"ok": 1}])
    child = submit(http, jtype + ".c", after=parents)
    got = lease_one(http, jtype + ".c")
    assert got["id"] == child["id"]
    shown = got["parents"]
    assert [p["id"] for p in shown] == parents
    assert shown[0] == {"id": parents[0], "type": jtype, "result": big}
    assert shown[2] == {"id": parents[2], "type": jtype, "result": {"ok": 1}}
    assert shown[1]["result"] is None
    assert "200002 bytes" in shown[1]["omitted"]
    assert f"GET /v1/jobs/{parents[1]}" in shown[1]["omitted"]
    assert get(http, parents[1])["result"] == bigger
    # One answer of 18 jobs, each after a parent of 240 KB: 17 results fit in 4 MiB.
    many = _finish_all(http, jtype + ".m", ["m" * 240_000] * 18)
    for parent_id in many:
        submit(http, jtype + ".mc", after=[parent_id])
    r = http.post(
        "/v1/workers/lease",
        json={"types": [jtype + ".mc"], "max": 18, "wait": 5, "lease": 30},
    )
    assert r.status_code == 200, r.text
    assert len(r.content) < 4 * 1024 * 1024 + 64 * 1024
    jobs = r.json()["jobs"]
    assert len(jobs) == 18
    omitted = [job["parents"][0] for job in jobs if "omitted" in job["parents"][0]]
    assert len(omitted) == 1 and omitted[0]["result"] is None


@pytest.mark.timeout(60)
def test_an_after_naming_no_job_is_422_saying_what_to_fix(http, jtype):
    """Unknown parent ids, an empty list, more than 100 parents: 422, what to fix, and no
    job made."""
    parent = submit(http, jtype)
    for after, says in (
        ([parent["id"], "no-such-job"], "no job 'no-such-job'"),
        ([], "1 to 100 job ids"),
        ([parent["id"]] * 101, "1 to 100 job ids"),
    ):
        r = http.post("/v1/jobs", json={"type": jtype + ".c", "after": after})
        assert r.status_code == 422, r.text
        assert says in r.json()["error"]["message"]
    assert jtype + ".c" not in http.get("/v1/queues").json()["queues"]
    assert get(http, parent["id"])["status"] == "queued"


@pytest.mark.timeout(60)
def test_a_parent_that_is_not_the_callers_is_refused_as_unknown(
    tidings_server: ServerFactory, tmp_path: Path
):
    """Under auth, a user may not make a job wait on another user's job: 422 as if it did
    not exist (its id tells them nothing)."""
    store = f"sqlite:///{tmp_path / 'deps.db'}"
    alice_token = _user(store, "alice", "--submit", "t")
    bob_token = _user(store, "bob", "--submit", "t")
    url = tidings_server(store, args=["--require-auth"]).url
    alice, bob = _client(url, alice_token), _client(url, bob_token)
    try:
        theirs = alice.post("/v1/jobs", json={"type": "t"}).json()
        r = bob.post("/v1/jobs", json={"type": "t", "after": [theirs["id"]]})
        assert r.status_code == 422 and theirs["id"] in r.json()["error"]["message"]
        mine = alice.post("/v1/jobs", json={"type": "t", "after": [theirs["id"]]})
        assert mine.status_code == 202 and mine.json()["status"] == "waiting"
    finally:
        alice.close()
        bob.close()


@pytest.mark.timeout(60)
def test_in_server_handlers_see_their_parents(tidings_server: ServerFactory):
    """`serve --handlers`: the in-server worker's handlers see `job.parents` too."""
    server = tidings_server("memory://", args=["--handlers", WORKER_APP])
    with Client(server.url) as client:
        a = client.submit("parents", "a")
        b = client.submit("parents", "b", after=[a.id])
        result = b.wait(timeout=20).result
    assert result["parents"][0]["id"] == a.id
    assert result["parents"][0]["result"] == {"payload": "a", "parents": []}


@pytest.mark.timeout(60)
def test_a_batch_fans_out_and_in_and_the_callback_sees_every_result(
    server: ServerProcess,
    worker_process: WorkerFactory,  # noqa: F811 - the fixture imported above
):
    """Three parents and a callback after them, in one batch with a real worker: the
    callback runs after all three and its handler sees their three results."""
    with Client(server.url) as client:
        handles = client.submit_batch(
            [
                {"ref": "sum", "type": "parents", "payload": "sum", "after": ["x", "y", "z"]},
                *({"ref": ref, "type": "parents", "payload": ref} for ref in "xyz"),
            ]
        )
        assert list(handles) == ["sum", "x", "y", "z"]
        assert handles["sum"].job.status == "waiting"
        proc = worker_process(server.url)
        try:
            done = {ref: handle.wait(timeout=30) for ref, handle in handles.items()}
        finally:
            proc.stop()
    assert {job.status for job in done.values()} == {"succeeded"}
    assert all(done[r].finished_at <= done["sum"].started_at for r in "xyz")  # type: ignore[operator]
    assert done["sum"].result == {
        "payload": "sum",
        "parents": [
            {"id": handles[r].id, "type": "parents", "result": {"payload": r, "parents": []}}
            for r in "xyz"
        ],
    }


@pytest.mark.timeout(60)
def test_a_batch_with_a_cycle_or_an_unknown_ref_is_422_and_makes_nothing(http, jtype):
    """A cycle is named; an `after` naming neither a ref nor a job is named; a body of
    the wrong shape is 422 too; none of these makes a job."""
    for jobs, says in (
        (
            [
                {"ref": "a", "type": jtype, "after": ["c"]},
                {"ref": "b", "type": jtype, "after": ["a"]},
                {"ref": "c", "type": jtype, "after": ["b"]},
            ],
            "cycle: 'a' -> 'c' -> 'b' -> 'a'",
        ),
        (
            [{"ref": "a", "type": jtype}, {"ref": "b", "type": jtype, "after": ["a", "zz"]}],
            "jobs[1] ('b'): \"after\": 'zz' is neither a ref of this batch nor a job",
        ),
        ([{"ref": "a", "type": jtype, "ater": []}], "ater"),
        ([{"ref": f"r{i}", "type": jtype} for i in range(1001)], "1 to 1000 jobs"),
    ):
        r = http.post("/v1/jobs/batch", json={"jobs": jobs})
        assert r.status_code == 422, r.text
        assert says in r.json()["error"]["message"]
    assert jtype not in http.get("/v1/queues").json()["queues"]
    # The path is the batch's alone: no job is called "batch".
    r = http.get("/v1/jobs/batch")
    assert r.status_code == 405 and r.headers["allow"] == "POST, OPTIONS"


@pytest.mark.timeout(60)
def test_a_batch_answers_each_job_with_its_ref_and_the_async_client_submits_one(
    server: ServerProcess, http, jtype
):
    """The answer lists every job made, in order, with its ref, each as GET shows it; the
    AsyncClient's submit_batch makes the same."""
    before = submit(http, jtype)
    r = http.post(
        "/v1/jobs/batch",
        json={
            "jobs": [
                {"ref": "one", "type": jtype, "payload": 1, "after": [before["id"]]},
                {"ref": "two", "type": jtype, "payload": 2, "after": ["one"], "priority": 3},
            ]
        },
    )
    assert r.status_code == 202, r.text
    one, two = r.json()["jobs"]
    assert (one["ref"], two["ref"]) == ("one", "two")
    assert one["after"] == [before["id"]] and two["after"] == [one["id"]]
    assert get(http, two["id"])["status"] == "waiting" and "ref" not in get(http, two["id"])

    async def via_async() -> dict[str, str]:
        async with AsyncClient(server.url) as client:
            made = await client.submit_batch(
                [{"ref": "p", "type": jtype}, {"ref": "q", "type": jtype, "after": ["p"]}]
            )
            return {ref: handle.job.status for ref, handle in made.items()}

    assert asyncio.run(via_async()) == {"p": "queued", "q": "waiting"}


@pytest.mark.timeout(60)
def test_a_batch_needs_the_submit_right_for_every_type(
    tidings_server: ServerFactory, tmp_path: Path
):
    """One job of a type the user may not submit: 403, and none of the batch is made."""
    store = f"sqlite:///{tmp_path / 'batch.db'}"
    token = _user(store, "carol", "--submit", "t")
    url = tidings_server(store, args=["--require-auth"]).url
    with _client(url, token) as carol:
        jobs = [{"ref": "a", "type": "t"}, {"ref": "b", "type": "u", "after": ["a"]}]
        r = carol.post("/v1/jobs/batch", json={"jobs": jobs})
        assert r.status_code == 403 and "'u'" in r.json()["error"]["message"]
        assert carol.get("/v1/queues").json()["queues"] == {}
        ok = carol.post("/v1/jobs/batch", json={"jobs": jobs[:1]})
        assert ok.status_code == 202, ok.text
