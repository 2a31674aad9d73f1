"""Job dependencies through the API: `after` on submit makes a job wait (status
`waiting`) until its parents all succeeded; a real worker then runs it and sees their
results (`job.parents`); a parent that fails cancels its children with the reason; an
`after` naming a job that does not exist (or that is not the caller's) is 422."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.jobs.helpers import complete, get, lease_one, submit
from tests.e2e.jobs.test_who_sees_tracebacks import _client, _user
from tests.e2e.test_worker_sdk import (  # noqa: F401 - a fixture
    WORKER_APP,
    WorkerFactory,
    worker_process,
)
from tidings import Client


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
