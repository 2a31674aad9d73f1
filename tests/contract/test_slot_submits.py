"""What the scheduler needs of every job store: a slot's job, submitted by several nodes
under one id and one idempotency key, is written once; each repeat answers that job and
says it is not new."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tidings.protocol.jobs import Job
from tidings.protocol.schedules import slot_job_id
from tidings.server.stores.base import Store

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0


def slot_job(created_at: float) -> Job:
    job_id = slot_job_id("nightly", T0)
    return Job(
        id=job_id,
        type="report",
        payload={"n": 1},
        idempotency_key=job_id,
        created_at=created_at,
        updated_at=created_at,
        run_at=created_at,
    )


def test_a_slots_job_submitted_by_several_nodes_is_written_once(
    make_store: Callable[[], Store],
) -> None:
    async def main() -> None:
        store = make_store()
        await store.start()
        try:
            first, first_new = await store.jobs.submit_job(slot_job(T0 + 0.001), "queued")
            assert first_new
            assert first.published is not None
            for late in (T0 + 0.002, T0 + 0.5):
                again, new = await store.jobs.submit_job(slot_job(late), "queued")
                assert not new
                assert again.job == first.job
                assert again.published is None
            page = await store.jobs.list_jobs(None, "report", 10)
            assert [j.id for j in page.jobs] == [first.job.id]
            read = await store.channels.read(f"job.{first.job.id}", "0", 10)
            assert [m.event for m in read.messages] == ["queued"]
        finally:
            await store.close()

    asyncio.run(main())
