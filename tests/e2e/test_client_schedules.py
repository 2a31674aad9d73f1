"""The Python SDK's schedule methods against the real server: put, get, list, delete, the
refusals, and a schedule's firings read back as jobs (blocking and asyncio clients)."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import ServerFactory
from tidings.sdk.client import AsyncClient, Client, TidingsHTTPError

pytestmark = pytest.mark.timeout(30)


def test_the_client_puts_reads_lists_and_deletes_a_schedule_that_fires(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    with Client(srv.url) as client:
        made = client.put_schedule("beat", "sdk.beat", {"x": 1}, every=1, priority=2)
        assert (made.name, made.type, made.every, made.cron) == ("beat", "sdk.beat", 1, None)
        assert made.next_run_at - time.time() <= 1.0
        nightly = client.put_schedule(
            "nightly", "sdk.report", cron="0 3 * * *", timezone="Asia/Tokyo", catch_up="skip"
        )
        assert (nightly.timezone, nightly.catch_up) == ("Asia/Tokyo", "skip")
        assert [s.name for s in client.list_schedules()] == ["beat", "nightly"]
        assert [s.name for s in client.list_schedules(limit=1)] == ["beat"]
        time.sleep(max(0.0, made.next_run_at + 0.5 - time.time()))
        fired = client.get_schedule("beat")
        assert fired.last_job_id is not None
        assert fired.last_job_id.startswith("sched:beat:")
        job = client.get_job(fired.last_job_id)
        assert (job.type, job.payload, job.priority) == ("sdk.beat", {"x": 1}, 2)
        client.delete_schedule("beat")
        with pytest.raises(TidingsHTTPError) as gone:
            client.get_schedule("beat")
        assert gone.value.status == 404
        with pytest.raises(TidingsHTTPError) as bad:
            client.put_schedule("x", "t", cron="0 3 * * *", timezone="Nowhere/Land")
        assert (bad.value.status, bad.value.code) == (422, "invalid_body")
        assert "IANA" in bad.value.message
        with pytest.raises(ValueError, match="exactly one"):
            client.put_schedule("x", "t")


def test_the_async_client_manages_schedules_too(tidings_server: ServerFactory) -> None:
    srv = tidings_server()

    async def main() -> None:
        async with AsyncClient(srv.url) as client:
            made = await client.put_schedule("a", "sdk.a", cron="*/5 * * * *")
            assert made.cron == "*/5 * * * *"
            assert made.timezone == "UTC"
            assert (await client.get_schedule("a")).next_run_at == made.next_run_at
            assert [s.name for s in await client.list_schedules()] == ["a"]
            await client.delete_schedule("a")
            assert await client.list_schedules() == []

    asyncio.run(main())
