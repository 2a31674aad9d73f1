"""Under --require-auth: who sees a failed job's traceback, how lease requests are checked,
and a submit whose `served` cannot be read.

These tests start servers of their own (the folder's `server` is anonymous, where every
client is an admin).
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisProcess, ServerFactory
from tests.e2e.helpers import cli_ok

TB = 'Traceback (most recent call last):\n  File "w.py", line 1, in handle\nOSError: full\n'


def _user(store: str, name: str, *grants: str) -> str:
    """Add a user with `grants` (CLI flags) to `store`; an API token of theirs."""
    cli_ok(
        "users", "add", name, "--store", store, "--password-stdin", *grants,
        stdin=f"pw-{name}-1\n",
    )  # fmt: skip
    return cli_ok("tokens", "create", name, "--store", store).strip()


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"})


@pytest.mark.timeout(90)
def test_only_those_who_may_work_the_type_or_admins_see_its_traceback(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """The submitter (a browser's end user, say) gets the error without its traceback;
    a user who may work the type, and an admin, get it. Listings, events and the answer
    to the failing worker never carry it."""
    store = f"sqlite:///{tmp_path / 'auth.db'}"
    ann = _user(store, "ann", "--submit", "resize")
    robot = _user(store, "robot", "--work", "resize")
    boss = _user(store, "boss", "--admin")
    url = tidings_server(store, args=["--require-auth"]).url
    with _client(url, ann) as sub, _client(url, robot) as work, _client(url, boss) as admin:
        job = sub.post("/v1/jobs", json={"type": "resize", "max_attempts": 2}).json()
        leased = work.post("/v1/workers/lease", json={"types": ["resize"]}).json()["jobs"][0]
        error = {"type": "OSError", "message": "full", "traceback": TB}
        answer = work.post(
            f"/v1/jobs/{job['id']}/fail",
            json={"lease_token": leased["lease_token"], "error": error},
        )
        assert answer.status_code == 200, answer.text
        # The worker sent the traceback: its answer does not echo it, nor `errors`.
        assert "traceback" not in answer.json()["error"] and "errors" not in answer.json()

        mine = sub.get(f"/v1/jobs/{job['id']}").json()
        assert mine["error"] == {"type": "OSError", "message": "full", "attempt": 1}
        assert mine["errors"] == [mine["error"]]
        for who in (work, admin):
            seen = who.get(f"/v1/jobs/{job['id']}").json()
            assert seen["error"]["traceback"] == TB, seen
            assert seen["errors"] == [{"type": "OSError", "message": "full", "attempt": 1}]
        for who in (sub, work, admin):
            [listed] = who.get("/v1/jobs", params={"type": "resize"}).json()["jobs"]
            assert "traceback" not in listed["error"] and "errors" not in listed
        # A cancel's answer follows the same rule.
        cancelled = sub.post(f"/v1/jobs/{job['id']}/cancel").json()
        assert cancelled["status"] == "cancelled" and "traceback" not in cancelled["error"]
        events = sub.get(f"/v1/channels/job.{job['id']}/messages", params={"after": "0"})
        assert events.status_code == 200, events.text
        for message in events.json()["messages"]:
            error_in_event = message["data"]["error"]
            assert error_in_event is None or "traceback" not in error_in_event


@pytest.mark.timeout(60)
def test_a_lease_request_is_checked_whole_before_its_types_are_checked_one_by_one(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """`types: []` and a list of more than 100 types are malformed (422), whatever the
    worker may work; a type it may not work is then refused (403)."""
    store = f"sqlite:///{tmp_path / 'auth.db'}"
    robot = _user(store, "robot", "--work", "resize")
    url = tidings_server(store, args=["--require-auth"]).url
    with _client(url, robot) as work:
        for types in ([], ["resize", *(f"crop{n}" for n in range(100))]):
            r = work.post("/v1/workers/lease", json={"types": types})
            assert r.status_code == 422, r.text
            assert '"types"' in r.json()["error"]["message"]
        r = work.post("/v1/workers/lease", json={"types": ["resize", "crop"]})
        assert r.status_code == 403, r.text
        assert work.post("/v1/workers/lease", json={"types": ["resize"]}).status_code == 200


@pytest.mark.timeout(60)
def test_a_submit_whose_served_mark_cannot_be_read_answers_the_queued_job(
    tidings_server: ServerFactory, redis_proc: RedisProcess
) -> None:
    """The job is queued before `served` is read: a store that cannot answer that read
    (here a Redis user refused ZMSCORE) leaves `served` out of a 202, not a 503 that
    would have the client submit the job again."""
    name, password = f"u{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    with socket.create_connection(("127.0.0.1", redis_proc.port), timeout=5) as conn:
        command = f"ACL SETUSER {name} on >{password} ~* &* +@all -zmscore\r\n"
        conn.sendall(command.encode())
        assert conn.recv(64).startswith(b"+OK")
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    store = f"redis://{name}:{password}@127.0.0.1:{redis_proc.port}/0?prefix={prefix}"
    url = tidings_server(store).url
    with httpx.Client(base_url=url, timeout=30) as http:
        r = http.post("/v1/jobs", json={"type": "resize"})
        assert r.status_code == 202, r.text
        job = r.json()
        assert "served" not in job and job["status"] == "queued"
        [listed] = http.get("/v1/jobs", params={"type": "resize"}).json()["jobs"]
        assert listed["id"] == job["id"]
