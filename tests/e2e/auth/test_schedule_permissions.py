"""Who may manage and see schedules (a real `--require-auth` server on a SQLite file):
putting one needs the right to submit its type, replacing or deleting one needs to be its
owner (or an admin), seeing one needs either; its firings are its owner's jobs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import pytest

from tests.conftest import ServerFactory
from tests.e2e.auth.helpers import BOB_PASSWORD, assert_error, auth_server, bearer, login
from tests.e2e.helpers import cli_ok
from tidings.protocol.codecs import parse_time
from tidings.protocol.schedules import slot_of_job_id
from tidings.server.constants import MAX_SCHEDULES_PER_OWNER

pytestmark = pytest.mark.timeout(60)

T = TypeVar("T")


def eventually(read: Callable[[], T], done: Callable[[T], bool], within: float = 20.0) -> T:
    """What `read` answers once `done` holds of it (polled: a loaded machine fires late)."""
    deadline = time.monotonic() + within
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            assert done(value), value
            return value
        time.sleep(0.1)


def test_schedules_need_the_submit_grant_of_their_type_and_belong_to_their_owner(
    tidings_server: ServerFactory, store: str
) -> None:
    cli_ok("users", "grant", "alice", "--store", store, "--submit", "report")
    srv = auth_server(tidings_server, store, "database")
    alice, bob = bearer(login(srv)), bearer(login(srv, "bob", BOB_PASSWORD))
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert_error(http.put("/v1/schedules/r", json={"type": "report", "every": 1}), 401)
        made = http.put("/v1/schedules/r", json={"type": "report", "every": 1}, headers=alice)
        assert made.status_code == 201, made.text
        assert made.json()["owner"] == "alice"
        assert_error(
            http.put("/v1/schedules/o", json={"type": "other", "every": 60}, headers=alice), 403
        )
        # bob may not submit reports: he neither sees nor lists alice's schedule.
        assert_error(http.get("/v1/schedules/r", headers=bob), 403)
        assert http.get("/v1/schedules", headers=bob).json()["schedules"] == []
        assert_error(
            http.put("/v1/schedules/r", json={"type": "report", "every": 5}, headers=bob), 403
        )
        assert_error(http.delete("/v1/schedules/r", headers=bob), 403)
        # The firings are alice's jobs: she follows them.
        shown = eventually(
            lambda: http.get("/v1/schedules/r", headers=alice).json(),
            lambda s: s["last_job_id"] is not None,
        )
        job = http.get(f"/v1/jobs/{shown['last_job_id']}", headers=alice)
        assert job.status_code == 200, job.text
        assert job.json()["submitted_by"] == "alice"
        assert_error(http.get(f"/v1/jobs/{shown['last_job_id']}", headers=bob), 403)
        assert http.delete("/v1/schedules/r", headers=alice).status_code == 204


def test_a_schedule_is_seen_by_those_who_may_follow_its_jobs_and_changed_by_its_owner(
    tidings_server: ServerFactory, store: str
) -> None:
    cli_ok("users", "grant", "alice", "--store", store, "--submit", "report")
    cli_ok("users", "grant", "bob", "--store", store, "--submit", "report")
    cli_ok("users", "add", "carol", "--store", store)
    cli_ok("users", "grant", "carol", "--store", store, "--work", "report")
    carol = bearer(cli_ok("tokens", "create", "carol", "--store", store).strip().split()[-1])
    srv = auth_server(tidings_server, store, "database")
    alice, bob = bearer(login(srv)), bearer(login(srv, "bob", BOB_PASSWORD))
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        body = {"type": "report", "cron": "0 3 * * *", "payload": {"secret": 1}}
        assert http.put("/v1/schedules/r", json=body, headers=alice).status_code == 201
        # bob may submit reports but not follow alice's: he neither sees nor lists it.
        hidden = http.get("/v1/schedules/r", headers=bob)
        assert_error(hidden, 403)
        assert "work" in hidden.json()["error"]["message"]
        assert http.get("/v1/schedules", headers=bob).json()["schedules"] == []
        # carol works reports (she reads the jobs it fires): she sees it, but may not change it.
        assert http.get("/v1/schedules/r", headers=carol).json()["payload"] == {"secret": 1}
        listed = http.get("/v1/schedules", headers=carol).json()["schedules"]
        assert [s["name"] for s in listed] == ["r"]
        refused = http.put("/v1/schedules/r", json=body, headers=bob)
        assert_error(refused, 403)
        assert "owner" in refused.json()["error"]["message"]
        assert_error(http.delete("/v1/schedules/r", headers=bob), 403)
        assert_error(http.delete("/v1/schedules/r", headers=carol), 403)
        assert http.put("/v1/schedules/r", json=body, headers=alice).status_code == 200


def test_removing_the_owner_stops_the_firings_of_their_schedules(
    tidings_server: ServerFactory, store: str
) -> None:
    cli_ok("users", "grant", "alice", "--store", store, "--submit", "report")
    cli_ok("users", "add", "root", "--store", store, "--admin")
    root = bearer(cli_ok("tokens", "create", "root", "--store", store).strip().split()[-1])
    srv = auth_server(tidings_server, store, "database")
    alice = bearer(login(srv))
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        made = http.put("/v1/schedules/r", json={"type": "report", "every": 1}, headers=alice)
        assert made.status_code == 201, made.text
        eventually(
            lambda: http.get("/v1/jobs", params={"type": "report"}, headers=root).json()["jobs"],
            lambda jobs: len(jobs) >= 1,
        )
        cli_ok("users", "remove", "alice", "--store", store)
        removed = time.time()
        # The schedule goes on, moved past the skipped slots, for an admin to see.
        eventually(
            lambda: http.get("/v1/schedules/r", headers=root).json(),
            lambda s: parse_time(s["next_run_at"]) > removed + 2,
        )
        jobs = http.get("/v1/jobs", params={"type": "report"}, headers=root).json()["jobs"]
        # A slot after the removal is looked at after it: the owner check skips it.
        late = [j for j in jobs if slot_of_job_id(j["id"])[1] > removed]  # type: ignore[index]
        assert late == []


def test_one_owner_has_at_most_the_per_owner_cap_of_schedules_and_an_admin_is_not_held(
    tidings_server: ServerFactory, store: str
) -> None:
    cli_ok("users", "grant", "alice", "--store", store, "--submit", "report")
    cli_ok("users", "add", "root", "--store", store, "--admin")
    root = bearer(cli_ok("tokens", "create", "root", "--store", store).strip().split()[-1])
    srv = auth_server(tidings_server, store, "database")
    alice = bearer(login(srv))
    body = {"type": "report", "cron": "0 3 * * *"}
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for i in range(MAX_SCHEDULES_PER_OWNER):
            made = http.put(f"/v1/schedules/a{i}", json=body, headers=alice)
            assert made.status_code == 201, made.text
        refused = http.put("/v1/schedules/one-more", json=body, headers=alice)
        assert refused.status_code == 409, refused.text
        assert refused.json()["error"]["code"] == "conflict"
        assert (
            f"alice has {MAX_SCHEDULES_PER_OWNER} schedules" in refused.json()["error"]["message"]
        )
        assert http.get("/v1/schedules/one-more", headers=alice).status_code == 404
        # Replacing one of hers is no new one; deleting one frees a place.
        assert http.put("/v1/schedules/a0", json=body, headers=alice).status_code == 200
        assert http.delete("/v1/schedules/a0", headers=alice).status_code == 204
        assert http.put("/v1/schedules/one-more", json=body, headers=alice).status_code == 201
        # An admin is held by the store's cap only.
        for i in range(MAX_SCHEDULES_PER_OWNER + 1):
            made = http.put(f"/v1/schedules/r{i}", json=body, headers=root)
            assert made.status_code == 201, made.text
