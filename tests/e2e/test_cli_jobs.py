"""`tidings jobs …` for scripts and for debugging: listings that a pipe receives whole,
`--json`, the error column, the dead letters, and a failed job's traceback on `jobs get`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.helpers import cli_ok, tidings_cli
from tests.e2e.test_cli_commands import piped

pytestmark = pytest.mark.timeout(60)

LONG_TYPE = "transcode-video-to-h264-in-four-resolutions"
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/handlers.py", line 12, in transcode\n'
    "    raise ValueError(f'no such codec: {codec}')\n"
    "ValueError: no such codec: h265-main10-very-long-profile-name\n"
)
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def submit(http: httpx.Client, type_: str, payload: Any = None, **fields: Any) -> str:
    r = http.post("/v1/jobs", json={"type": type_, "payload": payload, **fields})
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def fail_one(http: httpx.Client, type_: str, error: Any) -> str:
    """Submit a job of `type_` with one attempt, lease it and fail it with `error`, as a
    worker does over HTTP; returns its id."""
    job_id = submit(http, type_, max_attempts=1)
    leased = http.post(
        "/v1/workers/lease", json={"types": [type_], "max": 1, "wait": 5, "lease": 30}, timeout=15
    )
    assert leased.status_code == 200, leased.text
    (job,) = leased.json()["jobs"]
    assert job["id"] == job_id
    r = http.post(
        f"/v1/jobs/{job_id}/fail",
        json={"lease_token": job["lease_token"], "error": error, "retry": False},
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "failed"
    return job_id


def succeed_one(http: httpx.Client, type_: str, message: str) -> str:
    job_id = submit(http, type_)
    leased = http.post(
        "/v1/workers/lease", json={"types": [type_], "max": 1, "wait": 5, "lease": 30}, timeout=15
    )
    (job,) = leased.json()["jobs"]
    token = job["lease_token"]
    r = http.post(
        f"/v1/jobs/{job_id}/heartbeat",
        json={"lease_token": token, "progress": 50, "message": message},
    )
    assert r.status_code == 200, r.text
    r = http.post(f"/v1/jobs/{job_id}/complete", json={"lease_token": token, "result": {"ok": 1}})
    assert r.status_code == 200, r.text
    return job_id


@pytest.fixture
def srv(tidings_server: ServerFactory) -> ServerProcess:
    return tidings_server()


def test_jobs_list_in_a_pipe_is_not_cut_to_80_columns(srv: ServerProcess) -> None:
    message = "encoding the 1080p rendition, then 720p, 480p and 360p, one after the other"
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        done_id = succeed_one(http, LONG_TYPE, message)
        failed_id = fail_one(
            http, LONG_TYPE, {"type": "ValueError", "message": "no such codec: h265\nsecond line"}
        )
    listing = piped("jobs", "list", "--url", srv.url)
    assert listing.returncode == 0, listing.stderr
    assert "…" not in listing.stdout
    rows = {line for line in listing.stdout.splitlines() if LONG_TYPE in line}
    assert len(rows) == 2, listing.stdout
    (ok_row,) = (r for r in rows if done_id in r)
    assert "succeeded" in ok_row
    assert message in ok_row
    (failed_row,) = (r for r in rows if failed_id in r)
    # The error column: its type and the first line of its message.
    assert "ValueError: no such codec: h265" in failed_row
    assert "second line" not in failed_row
    header = listing.stdout.splitlines()[1]
    assert [h for h in re.split(r"[\s┃│]+", header) if h] == [
        "type", "status", "progress", "attempt", "created", "error", "message", "id"
    ]  # fmt: skip


def test_jobs_list_json_is_one_array_with_rfc3339_times(srv: ServerProcess) -> None:
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        first = submit(http, "report", {"n": 1})
        second = submit(http, "report", {"n": 2})
        submit(http, "other")
    done = piped("jobs", "list", "--type", "report", "--json", "--url", srv.url)
    assert done.returncode == 0, done.stderr
    jobs = json.loads(done.stdout)
    assert [j["id"] for j in jobs] == [second, first]  # newest first
    assert [j["payload"] for j in jobs] == [{"n": 2}, {"n": 1}]
    for job in jobs:
        assert RFC3339.fullmatch(job["created_at"]), job
        assert job["started_at"] is None
    assert (
        json.loads(piped("jobs", "list", "--json", "--limit", "1", "--url", srv.url).stdout)[0][
            "type"
        ]
        == "other"
    )
    empty = piped("jobs", "list", "--status", "failed", "--json", "--url", srv.url)
    assert json.loads(empty.stdout) == []


def test_jobs_queues_json_counts_every_status_per_type(srv: ServerProcess) -> None:
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        submit(http, "report")
        submit(http, "report")
        fail_one(http, "mail", {"type": "SMTPError", "message": "refused"})
    queues = json.loads(piped("jobs", "queues", "--json", "--url", srv.url).stdout)
    assert queues["report"]["queued"] == 2
    assert queues["report"]["failed"] == 0
    assert queues["mail"]["failed"] == 1
    assert set(queues["mail"]) == {
        "waiting",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    }
    table = piped("jobs", "queues", "--url", srv.url).stdout
    # Columns: type, then every status (waiting first).
    assert re.search(r"report\s*│\s*0\s*│\s*2\s*│", table), table


def test_jobs_dead_lists_failed_jobs_newest_first_with_their_error(srv: ServerProcess) -> None:
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        older = fail_one(http, LONG_TYPE, {"type": "ValueError", "message": "bad codec"})
        newer = fail_one(http, "mail", {"type": "SMTPError", "message": "550 mailbox unknown"})
        succeed_one(http, "mail", "sent")
        submit(http, "mail")
    table = piped("jobs", "dead", "--url", srv.url)
    assert table.returncode == 0, table.stderr
    lines = [line for line in table.stdout.splitlines() if older in line or newer in line]
    assert len(lines) == 2, table.stdout
    assert newer in lines[0]
    assert "SMTPError: 550 mailbox unknown" in lines[0]
    assert "1/1" in lines[0]
    assert LONG_TYPE in lines[1]
    assert "ValueError: bad codec" in lines[1]
    assert RFC3339.search(lines[0])
    assert table.stdout.count("│ mail") + table.stdout.count("┃ mail") <= 1  # only the failed

    dead = json.loads(piped("jobs", "dead", "--json", "--url", srv.url).stdout)
    assert [j["id"] for j in dead] == [newer, older]
    assert dead[0]["error"]["message"] == "550 mailbox unknown"
    assert RFC3339.fullmatch(dead[0]["finished_at"])
    only = json.loads(piped("jobs", "dead", "--type", "mail", "--json", "--url", srv.url).stdout)
    assert [j["id"] for j in only] == [newer]
    limited = piped("jobs", "dead", "--limit", "1", "--json", "--url", srv.url)
    assert len(json.loads(limited.stdout)) == 1


def test_jobs_get_prints_json_and_the_traceback_on_stderr_when_asked(srv: ServerProcess) -> None:
    error = {"type": "ValueError", "message": "no such codec", "traceback": TRACEBACK, "attempt": 1}
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job_id = fail_one(http, "transcode", error)
    # stdout a pipe, no --traceback: the JSON only (a script reads the traceback from it).
    quiet = piped("jobs", "get", job_id, "--url", srv.url)
    assert quiet.returncode == 0
    assert json.loads(quiet.stdout)["error"]["traceback"] == TRACEBACK
    assert quiet.stderr == ""
    loud = piped("jobs", "get", job_id, "--traceback", "--url", srv.url)
    assert loud.returncode == 0
    assert json.loads(loud.stdout)["id"] == job_id
    assert f"job {job_id} (transcode) failed: attempt 1 raised\n" in loud.stderr
    assert TRACEBACK.rstrip("\n") in loud.stderr  # whole, its lines as they were


def test_jobs_get_on_a_terminal_shows_the_traceback_without_being_asked(
    srv: ServerProcess,
) -> None:
    error = {"type": "ValueError", "message": "no such codec", "traceback": TRACEBACK}
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job_id = fail_one(http, "transcode", error)
    primary, secondary = os.openpty()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        done = subprocess.run(
            [sys.executable, "-m", "tidings", "jobs", "get", job_id, "--url", srv.url],
            stdout=secondary,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            env={**env, "COLUMNS": "200", "NO_COLOR": "1"},
            check=False,
        )
    finally:
        os.close(secondary)
        os.close(primary)
    assert done.returncode == 0
    assert "ValueError: no such codec: h265-main10-very-long-profile-name" in done.stderr
    assert "Traceback (most recent call last):" in done.stderr


def test_a_failed_job_waited_for_ends_with_one_line_saying_why(srv: ServerProcess) -> None:
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job_id = fail_one(http, "transcode", {"type": "ValueError", "message": "bad\ninput"})
    done = tidings_cli("jobs", "wait", job_id, "--url", srv.url)
    assert done.returncode == 1
    assert done.stderr == f"tidings jobs wait: job {job_id} failed (attempt 1/1): ValueError: bad\n"
    assert cli_ok("jobs", "retry", job_id, "--url", srv.url).strip() == "queued"


def test_jobs_dead_traceback_prints_each_one_after_the_table(srv: ServerProcess) -> None:
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        plain = fail_one(http, "mail", {"type": "SMTPError", "message": "refused"})
        traced = fail_one(
            http, "transcode", {"type": "ValueError", "message": "x", "traceback": TRACEBACK}
        )
    quiet = piped("jobs", "dead", "--url", srv.url)
    assert quiet.stderr == ""
    loud = piped("jobs", "dead", "--traceback", "--url", srv.url)
    assert loud.returncode == 0
    assert plain in loud.stdout
    assert traced in loud.stdout
    assert f"job {traced} (transcode) failed: attempt 1 raised\n" in loud.stderr
    assert TRACEBACK.rstrip("\n") in loud.stderr
    assert plain not in loud.stderr  # a job without a traceback prints none


def test_jobs_submit_after_group_and_unique_key_reach_the_job(srv: ServerProcess) -> None:
    """`--after` (repeated) makes a waiting child of both parents; `--group` and
    `--unique-key` are the job's; a parent's cancel ends the child cancelled; an `--after`
    naming no job is the server's 422, on stderr, with nothing queued."""
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        first, second = submit(http, "fetch"), submit(http, "fetch")
        child = cli_ok(
            "jobs", "submit", "merge", '{"n": 2}', "--after", first, "--after", second,
            "--group", "tenant-42", "--unique-key", "merge-2", "--url", srv.url,
        ).strip()  # fmt: skip
        job = http.get(f"/v1/jobs/{child}").json()
        assert job["status"] == "waiting"
        assert job["after"] == [first, second]
        assert (job["group"], job["unique_key"]) == ("tenant-42", "merge-2")
        assert http.post(f"/v1/jobs/{first}/cancel").status_code == 200
        job = http.get(f"/v1/jobs/{child}").json()
        assert job["status"] == "cancelled"
        assert job["error"]["type"] == "ParentCancelled"
        done = tidings_cli("jobs", "submit", "merge", "--after", "no-such-job", "--url", srv.url)
        assert done.returncode != 0
        assert "no-such-job" in done.stderr
        assert done.stdout == ""
        assert http.get("/v1/queues").json()["queues"]["merge"] == {"cancelled": 1}
