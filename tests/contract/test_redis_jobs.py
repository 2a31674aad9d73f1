"""Two tidings nodes on one Redis: every job change is applied once, whichever node tries.

Each test opens two `RedisStore`s on the same key prefix (two "nodes", each with its own
connections and its own JobService) and races them on the same jobs: leases, expiries,
completions and idempotent submits. The invariants are those of the store's
compare-and-set write script (tidings.server.stores.redis.jobs): a job goes to one caller, an
expired lease is taken back once (its attempt counted once, one event), a refused change
changes nothing, a batch whose job changed since its read writes nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
import pytest
from msgspec.structs import replace
from redis.exceptions import ResponseError

from tidings.protocol.errors import Conflict, StoreError
from tidings.protocol.jobs import Job, JobOutcome, QueueLimits, RateLimit, job_channel
from tidings.server import transitions
from tidings.server.hub import Hub
from tidings.server.jobs import JobService
from tidings.server.stores.base import Retention
from tidings.server.stores.redis import RedisStore

DEFAULT = Retention(max_messages=100, max_age=3600.0)
BACKOFF = 0.05

Node = tuple[RedisStore, JobService]
Body = Callable[[Node, Node], Coroutine[Any, Any, None]]


def two_nodes(redis_url: str, body: Body) -> None:
    """Start two stores on the same Redis and prefix, each with a job service; run `body`."""

    async def main() -> None:
        nodes: list[Node] = []
        try:
            for _ in range(2):
                store = RedisStore(redis_url, DEFAULT)
                await store.start()
                nodes.append(
                    (
                        store,
                        JobService(store, Hub(store.channels.cursor_key), retry_backoff=BACKOFF),
                    )
                )
            await body(nodes[0], nodes[1])
        finally:
            for store, svc in nodes:
                svc.close()
                await store.close()

    asyncio.run(main())


async def names(store: RedisStore, job_id: str) -> list[str | None]:
    res = await store.channels.read(job_channel(job_id), "0", 1000)
    return [m.event for m in res.messages]


async def drain(svc: JobService, per_call: int) -> list[Job]:
    """Lease until the store has nothing due left."""
    got: list[Job] = []
    while batch := await svc.lease(None, per_call, 0, 30.0):
        got.extend(batch)
    return got


@pytest.mark.timeout(60)
def test_concurrent_leases_on_two_nodes_hand_out_each_job_once(redis_url):
    """Sixteen lease loops, eight per node, drain 200 queued jobs: every job is leased by
    exactly one caller, at attempt 1, with one `running` event."""

    async def body(a: Node, b: Node) -> None:
        (store_a, svc_a), (store_b, svc_b) = a, b
        submitted = await asyncio.gather(
            *(svc.submit("t", i) for i in range(100) for svc in (svc_a, svc_b))
        )
        ids = {job.id for job, _ in submitted}
        assert len(ids) == 200

        loops = [drain(svc, 5) for svc in (svc_a, svc_b) for _ in range(8)]
        results = await asyncio.gather(*loops)
        leased = [j for batch in results for j in batch]
        assert len(leased) == len({j.id for j in leased}), "a job was leased twice"
        assert {j.id for j in leased} == ids
        assert sum(len(r) for r in results[:8]) > 0 and sum(len(r) for r in results[8:]) > 0
        assert all(j.attempt == 1 and j.status == "running" for j in leased)
        assert await svc_a.lease(None, 10, 0, 30.0) == []
        assert await svc_b.lease(None, 10, 0, 30.0) == []
        assert await store_b.jobs.queue_counts() == {"t": {"running": 200}}
        for job in leased:
            assert await store_b.jobs.get_job(job.id) == job
            assert await names(store_a, job.id) == ["queued", "running"]

    two_nodes(redis_url, body)


@pytest.mark.timeout(60)
def test_concurrent_expiry_on_two_nodes_requeues_each_job_once(redis_url):
    """Both nodes take back the same 40 expired leases at once: each job is requeued once,
    its attempt counted once and one `queued` event published; it is then leased as its
    second attempt."""

    async def body(a: Node, b: Node) -> None:
        (store_a, svc_a), (store_b, svc_b) = a, b
        ids = {(await svc_a.submit("t", i))[0].id for i in range(40)}
        leased = await svc_a.lease(None, 40, 0, 0.1)
        assert {j.id for j in leased} == ids
        await asyncio.sleep(0.25)

        outs = await asyncio.gather(svc_a.expire(), svc_b.expire(), svc_b.expire())
        expired = [j.id for out in outs for j in out]
        assert sorted(expired) == sorted(ids), "an expired lease was taken back twice"
        for job_id in ids:
            job = await store_b.jobs.get_job(job_id)
            assert job is not None
            assert job.status == "queued"
            assert job.attempt == 1
            assert job.error["type"] == "LeaseExpired"
            assert await names(store_a, job_id) == ["queued", "running", "queued"]
        assert await store_a.jobs.queue_counts() == {"t": {"queued": 40}}
        assert await svc_a.expire() == [] and await svc_b.expire() == []

        await asyncio.sleep(BACKOFF * 3)
        again = await asyncio.gather(drain(svc_a, 7), drain(svc_b, 7))
        second = [j for batch in again for j in batch]
        assert sorted(j.id for j in second) == sorted(ids)
        assert all(j.attempt == 2 for j in second)

    two_nodes(redis_url, body)


@pytest.mark.timeout(60)
def test_complete_racing_an_expiry_on_the_other_node_applies_exactly_one(redis_url):
    """A worker completes expired jobs on node A while node B takes them back: for each job
    exactly one of the two changes applies, and the other sees its effect (a Conflict for
    the late complete, a skip for the late expiry)."""

    async def body(a: Node, b: Node) -> None:
        (store_a, svc_a), (_store_b, svc_b) = a, b
        for i in range(30):
            await svc_a.submit("t", i)
        leased = await svc_a.lease(None, 30, 0, 0.1)
        assert len(leased) == 30
        await asyncio.sleep(0.25)

        async def complete(job: Job) -> str | None:
            try:
                await svc_a.complete(job.id, job.lease_token or "", "done")
            except Conflict:
                return None
            return job.id

        *completed, expired = await asyncio.gather(*(complete(j) for j in leased), svc_b.expire())
        won_complete = {i for i in completed if i is not None}
        won_expiry = {j.id for j in expired}
        assert not won_complete & won_expiry
        assert won_complete | won_expiry == {j.id for j in leased}
        for job in leased:
            stored = await store_a.jobs.get_job(job.id)
            assert stored is not None
            if job.id in won_complete:
                assert stored.status == "succeeded"
                assert await names(store_a, job.id) == ["queued", "running", "succeeded"]
            else:
                assert stored.status == "queued"
                assert await names(store_a, job.id) == ["queued", "running", "queued"]

    two_nodes(redis_url, body)


@pytest.mark.timeout(30)
def test_same_idempotency_key_on_two_nodes_at_once_makes_one_job(redis_url):
    """Both nodes submit with the same key at the same moment: one job, created once."""

    async def body(a: Node, b: Node) -> None:
        (store_a, svc_a), (store_b, svc_b) = a, b
        for n in range(20):
            key = f"key-{n}"
            (ja, created_a), (jb, created_b) = await asyncio.gather(
                svc_a.submit("t", "a", idempotency_key=key),
                svc_b.submit("t", "b", idempotency_key=key),
            )
            assert created_a != created_b
            assert ja.id == jb.id
            assert await names(store_b, ja.id) == ["queued"]
        assert len((await store_a.jobs.list_jobs(None, None, 100)).jobs) == 20
        assert await store_b.jobs.queue_counts() == {"t": {"queued": 20}}

    two_nodes(redis_url, body)


def test_same_unique_key_on_two_nodes_at_once_makes_one_job(redis_url):
    """Twenty submits of one type and unique key, half on each node, at once: one job; a
    retry racing a submit of its key on the other node either retries or is refused, never
    leaving two jobs holding the key."""

    async def body(a: Node, b: Node) -> None:
        (store_a, svc_a), (store_b, svc_b) = a, b
        answers = await asyncio.gather(
            *((svc_a if n % 2 else svc_b).submit("t", n, unique_key="only-one") for n in range(20))
        )
        assert sum(created for _, created in answers) == 1
        assert len({job.id for job, _ in answers}) == 1
        assert await store_b.jobs.queue_counts() == {"t": {"queued": 1}}

        [leased] = await svc_a.lease(["t"], 1, 0, 30.0)
        await svc_a.fail(leased.id, leased.lease_token or "", "x", retry=False)
        for n in range(10):
            retried, submitted = await asyncio.gather(
                svc_a.retry(leased.id),
                svc_b.submit("t", n, unique_key="only-one"),
                return_exceptions=True,
            )
            queued = (await store_a.jobs.list_jobs("queued", "t", 100)).jobs
            assert len(queued) == 1, (retried, submitted)
            assert isinstance(submitted, tuple)
            if isinstance(retried, Exception):  # the submit came first: a new job holds it
                assert isinstance(retried, Conflict)
                assert submitted[1] and queued[0].id == submitted[0].id
            else:  # the retry came first: the submit got the retried job
                assert not submitted[1] and queued[0].id == submitted[0].id == leased.id
            await svc_b.cancel(queued[0].id)

    two_nodes(redis_url, body)


@pytest.mark.timeout(30)
def test_submit_on_one_node_adds_a_wake_entry_with_its_type(redis_url):
    """A submit (and a requeue) on node A appends `type` and `run_at` to the wake stream
    every node's relay follows; node B sees the job and can lease it."""

    async def body(a: Node, b: Node) -> None:
        (store_a, svc_a), (store_b, svc_b) = a, b
        before = time.time()
        job, _ = await svc_a.submit("resize", {"w": 1})
        entries = await store_b.core.client.xrange(store_b.core.key("wake"))
        assert len(entries) == 1
        fields = entries[0][1]
        assert fields[b"type"] == b"resize"
        assert float(fields[b"run_at"]) == job.run_at >= before
        assert await store_b.jobs.get_job(job.id) == job

        leased = await svc_b.lease(["resize"], 1, 0, 30.0)
        assert [j.id for j in leased] == [job.id]
        assert (
            len(await store_a.core.client.xrange(store_a.core.key("wake"))) == 1
        )  # a lease wakes no one

        requeued = await svc_b.fail(job.id, leased[0].lease_token or "", "boom")
        assert requeued.status == "queued"
        entries = await store_a.core.client.xrange(store_a.core.key("wake"))
        assert len(entries) == 2
        assert entries[1][1][b"type"] == b"resize"
        assert float(entries[1][1][b"run_at"]) == requeued.run_at > time.time() - 1

    two_nodes(redis_url, body)


@pytest.mark.timeout(30)
def test_a_report_whose_job_changed_after_its_read_writes_nothing_then_applies_to_the_new_body(
    redis_url,
):
    """Node B heartbeats one of two jobs between node A's read and write of a report: A's
    script finds that body changed and writes nothing (not even the other job's change);
    A reads again and completes both, after B's progress event."""

    async def body(a: Node, b: Node) -> None:
        (store_a, svc_a), (store_b, svc_b) = a, b
        for i in range(2):
            await svc_a.submit("t", i)
        j1, j2 = await svc_a.lease(None, 2, 0, 30.0)
        reads: list[list[str]] = []
        read = store_a.jobs._read

        async def racing_read(ids: list[str]) -> Any:
            reads.append(ids)
            if len(reads) == 2:  # the retry: the first attempt left everything as it was
                assert (await store_b.jobs.get_job(j1.id)).status == "running"
                assert await names(store_b, j1.id) == ["queued", "running"]
                assert await store_b.jobs.queue_counts() == {"t": {"running": 2}}
            found = await read(ids)
            if len(reads) == 1:
                await svc_b.heartbeat(j2.id, j2.lease_token or "", progress=50.0)
            return found

        store_a.jobs._read = racing_read  # type: ignore[method-assign]
        store_a.jobs._read_known = lambda ids: None  # type: ignore[method-assign]  # read Redis
        done = await svc_a.report(
            [JobOutcome(j.id, j.lease_token or "", True, "ok") for j in (j1, j2)]
        )
        assert len(reads) == 2
        assert [j.status for j in done] == ["succeeded", "succeeded"]
        assert done[1].progress == 100.0
        assert await names(store_b, j1.id) == ["queued", "running", "succeeded"]
        assert await names(store_b, j2.id) == ["queued", "running", "progress", "succeeded"]
        assert await store_b.jobs.queue_counts() == {"t": {"succeeded": 2}}

    two_nodes(redis_url, body)


@pytest.mark.timeout(30)
def test_a_submit_whose_id_is_taken_is_refused_and_its_own_repeat_is_not(redis_url):
    """A new job's write expects no body under its id: another job's id is refused with
    StoreError and nothing changes, while the very same job sent again (redis-py repeats
    a call whose reply was lost) answers as created without writing twice."""

    async def body(a: Node, b: Node) -> None:
        (store_a, _svc_a), (store_b, _svc_b) = a, b
        now = time.time()
        job = Job(id="fixed-id", type="t", payload=1, created_at=now, updated_at=now, run_at=now)
        change, created = await store_a.jobs.submit_job(job, "queued")
        assert created and change.published is not None

        again, created = await store_b.jobs.submit_job(job, "queued")
        assert created and again.job == job and again.published is None

        with pytest.raises(StoreError, match="already exists"):
            await store_b.jobs.submit_job(replace(job, payload=2), "queued")
        assert await store_a.jobs.get_job(job.id) == job
        assert await names(store_a, job.id) == ["queued"]
        assert await store_a.jobs.queue_counts() == {"t": {"queued": 1}}
        assert len(await store_a.core.client.xrange(store_a.core.key("wake"))) == 1

    two_nodes(redis_url, body)


@pytest.mark.timeout(30)
def test_a_malformed_write_fails_before_writing_any_of_its_jobs(redis_url):
    """The write script checks every job change before its first write (Redis does not
    undo a script that fails midway): a batch whose second change is malformed leaves
    the first job unwritten too."""

    async def body(a: Node, b: Node) -> None:
        (store, _svc), _ = a, b
        now = time.time()
        jobs = [
            Job(id=f"j{i}", type="t", created_at=now, updated_at=now, run_at=now) for i in (1, 2)
        ]
        keys, args, _ = store.jobs._write_call([(None, j, "queued") for j in jobs], {}, now)
        fields = msgspec.msgpack.decode(args[7])
        fields[5] = "not-a-number"  # the second job's run_at score
        args[7] = msgspec.msgpack.encode(fields)
        with pytest.raises(ResponseError, match="malformed job change 2"):
            await store.jobs._write_script(keys=keys, args=args, client=store.core.client)
        with pytest.raises(ResponseError, match="malformed call"):
            await store.jobs._write_script(keys=keys, args=args[:-1], client=store.core.client)
        assert await store.jobs.get_job("j1") is None
        assert await store.jobs.queue_counts() == {}
        assert await store.channels.info(job_channel("j1")) is None
        assert await store.core.client.xrange(store.core.key("wake")) == []

    two_nodes(redis_url, body)


@pytest.mark.timeout(30)
def test_job_events_keep_to_the_job_channels_retention(redis_url):
    """A job's events are appended by the channel part's own append code: ids 1, 2, 3 with
    each one's previous id, trimmed to the channel's retention, which `keep` reports."""

    async def body(a: Node, b: Node) -> None:
        (store, svc), _ = a, b
        now = time.time()
        job = Job(id="kept", type="t", created_at=now, updated_at=now, run_at=now)
        first, _ = await store.jobs.submit_job(job, "queued")
        assert first.published is not None
        assert (first.published.message.id, first.published.prev_id) == ("1", None)
        assert first.published.keep == DEFAULT.max_messages

        await store.channels.set_retention(job_channel(job.id), Retention(2, 3600.0))
        [leased] = await svc.lease(None, 1, 0, 30.0)
        done = await store.jobs.transition_job(
            job.id, lambda j, t: (replace(j, status="succeeded", finished_at=t), "succeeded")
        )
        assert done.published is not None
        assert (done.published.message.id, done.published.prev_id) == ("3", "2")
        assert done.published.keep == 2
        assert done.published.message.data["status"] == "succeeded"
        info = await store.channels.info(job_channel(job.id))
        assert info is not None and (info.first_id, info.last_id) == ("2", "3")
        assert await names(store, job.id) == ["running", "succeeded"]
        assert leased.status == "running"

    two_nodes(redis_url, body)


@pytest.mark.timeout(30)
def test_job_writes_go_on_after_the_script_cache_is_flushed(redis_url):
    """SCRIPT FLUSH (or a Redis restart) drops the write script: the next call loads it
    again and submits, leases and reports as before."""

    async def body(a: Node, b: Node) -> None:
        (store, svc), _ = a, b
        await store.core.client.script_flush()
        job, _ = await svc.submit("t")
        await store.core.client.script_flush()
        [leased] = await svc.lease(None, 1, 0, 30.0)
        await store.core.client.script_flush()
        [done] = await svc.report([JobOutcome(job.id, leased.lease_token or "", True, 1)])
        assert isinstance(done, Job) and done.status == "succeeded"
        assert await names(store, job.id) == ["queued", "running", "succeeded"]

    two_nodes(redis_url, body)


@pytest.mark.timeout(30)
def test_a_node_decides_on_redis_not_on_its_own_copy_of_a_job_changed_elsewhere(redis_url):
    """Node A leased a job (and keeps the body it wrote); the lease runs out and node B
    takes the job back and leases it again. Through A, the new holder's report applies
    and the old holder's is refused — each decided on what Redis holds, not A's copy; and
    A leases again what B put back in the queue."""

    async def body(a: Node, b: Node) -> None:
        (store_a, svc_a), (_store_b, svc_b) = a, b
        job, _ = await svc_a.submit("t", 1)
        [first] = await svc_a.lease(None, 1, 0, 0.1)
        await asyncio.sleep(0.25)
        assert [j.id for j in await svc_b.expire()] == [job.id]
        await asyncio.sleep(BACKOFF * 2)  # requeued after the retry backoff
        [second] = await svc_b.lease(None, 1, 0, 30.0)
        assert second.attempt == 2 and second.lease_token != first.lease_token
        # A's copy says the job is held with the first token: the second holder's report is
        # refused by that copy alone, and must not be.
        [fresh] = await svc_a.report([JobOutcome(job.id, second.lease_token or "", True, "new")])
        assert isinstance(fresh, Job) and fresh.status == "succeeded" and fresh.result == "new"
        [stale] = await svc_a.report([JobOutcome(job.id, first.lease_token or "", True, "old")])
        assert isinstance(stale, Conflict)
        assert (await store_a.jobs.get_job(job.id)) == fresh

        # A leases a job B requeued (A's copy still says running): it gets it.
        other, _ = await svc_a.submit("t", 2)
        [held] = await svc_a.lease(None, 1, 0, 0.1)
        assert held.id == other.id
        await asyncio.sleep(0.25)
        assert [j.id for j in await svc_b.expire()] == [other.id]
        await asyncio.sleep(BACKOFF * 2)
        [again] = await svc_a.lease(None, 1, 0, 30.0)
        assert (again.id, again.attempt) == (other.id, 2)

    two_nodes(redis_url, body)


@pytest.mark.timeout(60)
def test_two_nodes_racing_leases_never_pass_a_concurrency_or_group_limit(redis_url):
    """Both nodes lease and complete as fast as they can a type limited to 3 running jobs
    and 1 per group: the running jobs, counted after every lease, never pass 3 nor 1 of a
    group, and every job runs once."""

    async def body(a: Node, b: Node) -> None:
        (store_a, svc_a), (_, svc_b) = a, b
        await svc_a.set_limits("t", QueueLimits(concurrency=3, group_concurrency=1))
        ids = {(await svc_a.submit("t", n, group=f"g{n % 5}"))[0].id for n in range(60)}
        done: list[str] = []
        seen_running: list[int] = []

        async def work(svc: JobService) -> None:
            while len(done) < len(ids):
                jobs = await svc.lease(["t"], 3, 0, 30.0)
                running = (await store_a.jobs.list_jobs("running", "t", 100)).jobs
                seen_running.append(len(running))
                groups = [job.group for job in running]
                assert len(groups) == len(set(groups)), groups
                for job in jobs:
                    await asyncio.sleep(0.001)
                    await svc.complete(job.id, job.lease_token or "", None)
                    done.append(job.id)
                if not jobs:
                    await asyncio.sleep(0.001)

        await asyncio.gather(work(svc_a), work(svc_b), work(svc_a), work(svc_b))
        assert sorted(done) == sorted(ids)
        assert max(seen_running) <= 3

    two_nodes(redis_url, body)


@pytest.mark.timeout(60)
def test_two_nodes_racing_leases_never_pass_a_rate_limit(redis_url):
    """Both nodes lease a type limited to 20 per second for 1.5 s (and until some job past
    the burst is leased): at most 20 (the burst) plus 20 per second elapsed are leased.
    Only the upper bound is timed: a loaded machine may lease fewer."""

    async def body(a: Node, b: Node) -> None:
        (_, svc_a), (_, svc_b) = a, b
        await svc_a.set_limits("t", QueueLimits(rate=RateLimit(20, 1.0)))
        for n in range(200):
            await svc_a.submit("t", n)
        leased: list[float] = []
        started = time.monotonic()

        async def work(svc: JobService) -> None:
            while time.monotonic() - started < 1.5 or len(leased) <= 20:
                jobs = await svc.lease(["t"], 10, 0, 30.0)
                leased.extend(time.monotonic() for _ in jobs)
                await asyncio.sleep(0.002)

        await asyncio.gather(work(svc_a), work(svc_b), work(svc_a), work(svc_b))
        elapsed = max(leased) - started
        assert 20 < len(leased) <= 20 + 20 * elapsed + 1

    two_nodes(redis_url, body)


@pytest.mark.timeout(60)
def test_a_node_whose_clock_runs_ahead_gets_no_fresh_burst(redis_url):
    """With 2 per hour, node A uses the burst; node B, whose clock reads an hour later,
    leases none: the rate is checked by Redis's clock, not the calling node's."""

    async def body(a: Node, b: Node) -> None:
        (_, svc_a), (store_b, _) = a, b
        await svc_a.set_limits("t", QueueLimits(rate=RateLimit(2, 3600.0)))
        for n in range(4):
            await svc_a.submit("t", n)
        assert len(await svc_a.lease(["t"], 10, 0, 30.0)) == 2
        ahead = time.time() + 3600
        assert await store_b.jobs.lease_jobs(["t"], 10, ahead, transitions.lease(30.0)) == []

    two_nodes(redis_url, body)


def test_a_node_leasing_on_an_old_copy_of_the_limits_still_keeps_them(redis_url):
    """Node A read the limits (none) just before node B set a concurrency of 1: A's next
    lease, picked on its old copy, is refused by the write script and picked again within
    the limit."""

    async def body(a: Node, b: Node) -> None:
        (_, svc_a), (_, svc_b) = a, b
        assert await svc_a.lease(["t"], 3, 0, 30.0) == []  # reads the limits: none
        await svc_b.set_limits("t", QueueLimits(concurrency=1))
        for n in range(3):
            await svc_b.submit("t", n)
        assert len(await svc_a.lease(["t"], 3, 0, 30.0)) == 1
        assert await svc_a.lease(["t"], 3, 0, 30.0) == []

    two_nodes(redis_url, body)


@pytest.mark.timeout(30)
def test_children_submitted_on_one_node_while_their_parents_end_on_the_other(redis_url):
    """Twenty children submitted on node A while node B completes (ten) or fails (ten)
    their parents: whichever comes first, each child ends queued after a parent that
    succeeded and cancelled after one that failed — none is left waiting."""

    async def body(a: Node, b: Node) -> None:
        (store, svc_a), (_, svc_b) = a, b
        parents = [(await svc_a.submit("p", i))[0] for i in range(20)]
        leased = {j.id: j for j in await svc_b.lease(["p"], 20, 0, 30.0)}
        assert len(leased) == 20

        async def pair(n: int, parent: Job) -> str:
            token = leased[parent.id].lease_token or ""
            if n % 2:
                ending = svc_b.fail(parent.id, token, {"message": "x"}, retry=False)
            else:
                ending = svc_b.complete(parent.id, token, n)
            _, (child, _) = await asyncio.gather(ending, svc_a.submit("c", after=[parent.id]))
            return child.id

        children = await asyncio.gather(*(pair(n, p) for n, p in enumerate(parents)))
        await asyncio.gather(svc_a.settled(), svc_b.settled())
        got = await store.jobs.get_jobs(children)
        assert [got[c].status for c in children] == ["queued", "cancelled"] * 10

    two_nodes(redis_url, body)
