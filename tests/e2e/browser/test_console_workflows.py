"""The console's schedules, queue limits and job dependencies, and the JavaScript client's
schedule, dependency and batch calls, in a real browser (Debian's chromium driven by
Playwright) against one real `tidings serve --require-auth` (SQLite) per module.

- A schedule added in the console's form is in the API as given; a bad cron expression
  and an unknown time zone show the server's own 422 message beside the form; an edit and
  a delete with its confirm reach the API; a firing shows as the schedule's last, linked.
- An admin sets a type's limits in the queues card and GET /v1/queues shows them, with
  the jobs the concurrency holds back in the table; a limit out of range shows the
  server's 422 inline; a user without admin rights sees them read-only (and the API
  refuses them).
- The jobs list filters on `waiting`; a child's page shows its parents, group and unique
  key, and, once a parent is cancelled, why it was cancelled, with a link to the parent.
- The client the server serves (/client/tidings.js), in the page, puts, lists, gets and
  deletes schedules, submits with `after`, `group` and `uniqueKey`, and submits a batch.

Each test fails on a console error (bar the refusals it provokes on purpose), an uncaught
exception, an error banner, or a request to anything but the server's origin.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from typing import Any, NamedTuple

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.conftest import ServerProcess
from tests.e2e.browser.console_page import Console
from tests.e2e.browser.harness import ROOT
from tests.e2e.browser.test_console import add_user, log_in, screenshot

pytestmark = pytest.mark.timeout(120)

WAIT_MS = 15_000
# The schedule list's page size, as the console asks for it.
SCHEDULES_PAGE = int(
    re.search(
        r"^const PAGE_SIZE = (\d+);",
        (ROOT / "console" / "src" / "schedules.ts").read_text(),
        re.MULTILINE,
    ).group(1)  # type: ignore[union-attr]
)
# The 401 of who-am-I before each login.
LOGIN = ((401, "/v1/auth/me"),)


class Site(NamedTuple):
    server: ServerProcess
    passwords: dict[str, str]
    ada: httpx.Client  # an admin
    bob: httpx.Client  # may submit and work "report", "export", "fetch" and "merge" jobs


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("workflows")
    store = f"sqlite:///{folder / 'tidings.db'}"
    passwords = {"ada": secrets.token_urlsafe(16), "bob": secrets.token_urlsafe(16)}
    add_user(store, "ada", passwords["ada"], "--admin")
    grants = [f"--{action}={t}" for action in ("submit", "work") for t in ("report", "export")]
    add_user(store, "bob", passwords["bob"], *grants)
    server = ServerProcess(store, folder / "server.log", ["--require-auth"], {}).start()
    clients: list[httpx.Client] = []
    try:
        for name in ("ada", "bob"):
            http = httpx.Client(base_url=server.url, timeout=30)
            clients.append(http)
            login = http.post(
                "/v1/auth/login", json={"username": name, "password": passwords[name]}
            )
            assert login.status_code == 200, login.text
            http.headers["Authorization"] = f"Bearer {login.json()['token']}"
            http.cookies.clear()
        yield Site(server, passwords, clients[0], clients[1])
    finally:
        for http in clients:
            http.close()
        server.kill()


def open_console(
    browser: Browser, site: Site, user: str, refusals: tuple[tuple[int, str], ...] = ()
) -> tuple[Console, Page]:
    console = Console(browser, site.server.url, LOGIN + refusals)
    return console, log_in(console, user, site.passwords[user])


def server_message(answer: httpx.Response, status: int) -> str:
    assert answer.status_code == status, answer.text
    message: str = answer.json()["error"]["message"]
    return message


def test_a_schedule_added_in_the_console_is_in_the_api_and_a_bad_cron_shows_the_servers_error(
    browser: Browser, site: Site
) -> None:
    console, page = open_console(browser, site, "ada", ((422, "/v1/schedules/bad-cron"),))
    try:
        page.get_by_test_id("nav-schedules").click()
        expect(page.get_by_test_id("schedules-empty")).to_have_text(
            "No schedules.", timeout=WAIT_MS
        )

        def fill(name: str, cron: str = "", timezone: str = "", every: str = "") -> None:
            page.get_by_test_id("schedule-new").click()
            page.get_by_test_id("schedule-name").fill(name)
            page.get_by_test_id("schedule-type").fill("report")
            page.get_by_test_id("schedule-cron").fill(cron)
            page.get_by_test_id("schedule-timezone").fill(timezone)
            page.get_by_test_id("schedule-every").fill(every)
            page.get_by_test_id("schedule-payload").fill('{"full": true}')
            page.get_by_test_id("schedule-save").click()

        fill("nightly", "30 2 * * *", "Europe/Paris")
        row = page.locator('[data-testid="schedule-row"][data-name="nightly"]')
        expect(row.get_by_test_id("schedule-when")).to_have_text("30 2 * * *", timeout=WAIT_MS)
        expect(row.get_by_test_id("schedule-timezone-cell")).to_have_text("Europe/Paris")
        expect(row.get_by_test_id("schedule-last")).to_have_text("not yet")
        expect(row.get_by_test_id("schedule-firings")).to_have_attribute(
            "href", "#/jobs?type=report"
        )
        stored = site.ada.get("/v1/schedules/nightly").json()
        assert (stored["cron"], stored["timezone"], stored["every"]) == (
            "30 2 * * *",
            "Europe/Paris",
            None,
        )
        assert (stored["type"], stored["payload"], stored["owner"]) == (
            "report",
            {"full": True},
            "ada",
        )
        expect(row.get_by_test_id("schedule-next")).not_to_be_empty()

        # What the server says of a bad cron expression and of an unknown zone, word for word.
        for cron, zone in (("61 * * * *", ""), ("*/5 * * * *", "Mars/Olympus")):
            body: dict[str, Any] = {"type": "report", "payload": {"full": True}, "cron": cron}
            if zone:
                body["timezone"] = zone
            said = server_message(site.ada.put("/v1/schedules/bad-cron", json=body), 422)
            fill("bad-cron", cron, zone)
            expect(page.get_by_test_id("schedule-error")).to_contain_text(said, timeout=WAIT_MS)
            assert said in page.get_by_test_id("schedule-error").inner_text()
        assert site.ada.get("/v1/schedules/bad-cron").status_code == 404
        screenshot(page, "schedules")

        # An edit: every second instead; its firing shows as the last one, linked.
        row.get_by_test_id("schedule-edit").click()
        expect(page.get_by_test_id("schedule-name")).to_have_value("nightly")
        page.get_by_test_id("schedule-cron").fill("")
        page.get_by_test_id("schedule-timezone").fill("")
        page.get_by_test_id("schedule-every").fill("1")
        page.get_by_test_id("schedule-save").click()
        expect(row.get_by_test_id("schedule-when")).to_have_text("every 1 s", timeout=WAIT_MS)
        assert site.ada.get("/v1/schedules/nightly").json()["every"] == 1
        last = row.get_by_test_id("schedule-last-job")
        expect(last).to_have_text(re.compile(r"^sched:nightly:\d{8}T\d{6}Z$"), timeout=WAIT_MS)

        # Delete, with its confirm.
        row.get_by_test_id("schedule-delete").click()
        row.get_by_test_id("schedule-delete-confirm").click()
        expect(row).to_have_count(0, timeout=WAIT_MS)
        assert site.ada.get("/v1/schedules/nightly").status_code == 404

        # More than a page: the list pages on the server's cursor.
        names = [f"page.{n:02d}" for n in range(SCHEDULES_PAGE + 5)]
        for name in names:
            r = site.ada.put(f"/v1/schedules/{name}", json={"type": "report", "every": 3600})
            assert r.status_code == 201, r.text
        rows = page.get_by_test_id("schedule-row")
        expect(rows).to_have_count(SCHEDULES_PAGE, timeout=WAIT_MS)
        assert rows.evaluate_all("rows => rows.map((r) => r.dataset.name)") == names[:-5]
        expect(page.get_by_test_id("schedules-prev")).to_be_disabled()
        page.get_by_test_id("schedules-next").click()
        expect(rows).to_have_count(5, timeout=WAIT_MS)
        assert rows.evaluate_all("rows => rows.map((r) => r.dataset.name)") == names[-5:]
        expect(page.get_by_test_id("schedules-where")).to_contain_text("page 2")
        expect(page.get_by_test_id("schedules-next")).to_be_disabled()
        page.get_by_test_id("schedules-prev").click()
        expect(rows).to_have_count(SCHEDULES_PAGE, timeout=WAIT_MS)
        for name in names:
            assert site.ada.delete(f"/v1/schedules/{name}").status_code == 204
        console.check()
    finally:
        console.close()


def test_an_admin_edits_a_limit_and_get_queues_shows_it_a_non_admin_cannot(
    browser: Browser, site: Site
) -> None:
    # Three export jobs, one of them running: a concurrency of 1 holds the other two back.
    for n in range(3):
        assert site.bob.post("/v1/jobs", json={"type": "export", "payload": n}).status_code == 202
    leased = site.bob.post(
        "/v1/workers/lease", json={"types": ["export"], "max": 1, "wait": 5, "lease": 60}
    )
    assert len(leased.json()["jobs"]) == 1, leased.text

    console, page = open_console(browser, site, "ada", ((422, "/v1/queues/export"),))
    try:
        page.get_by_test_id("nav-jobs").click()
        row = page.locator('[data-testid="queue-row"][data-type="export"]')
        expect(row.get_by_test_id("queue-limits")).to_have_text("none", timeout=WAIT_MS)
        row.get_by_test_id("queue-limits-edit").click()
        expect(page.get_by_test_id("limits-type")).to_have_value("export")
        page.get_by_test_id("limits-rate").fill("10")
        page.get_by_test_id("limits-per").fill("2")
        page.get_by_test_id("limits-concurrency").fill("1")
        page.get_by_test_id("limits-group-concurrency").fill("1")
        page.get_by_test_id("limits-save").click()
        expect(page.get_by_test_id("limits-result")).to_contain_text("export", timeout=WAIT_MS)
        limits = site.ada.get("/v1/queues").json()["limits"]["export"]
        assert limits["rate"] == {"limit": 10, "per": 2}
        assert (limits["concurrency"], limits["group_concurrency"]) == (1, 1)
        assert limits["waiting"]["concurrency"] == 2
        expect(row.get_by_test_id("queue-limits")).to_have_text(
            "10 per 2 s · 1 at once · 1 per group", timeout=WAIT_MS
        )
        expect(row.get_by_test_id("queue-held")).to_have_text("held back: 2 by concurrency")
        screenshot(page, "queue-limits")

        # Out of range: the server's word, inline; the limits stay as they were.
        said = server_message(site.ada.put("/v1/queues/export", json={"concurrency": 0}), 422)
        page.get_by_test_id("limits-rate").fill("")
        page.get_by_test_id("limits-group-concurrency").fill("")
        page.get_by_test_id("limits-concurrency").fill("0")
        page.get_by_test_id("limits-save").click()
        expect(page.get_by_test_id("limits-error")).to_contain_text(said, timeout=WAIT_MS)
        assert site.ada.get("/v1/queues").json()["limits"]["export"]["concurrency"] == 1

        # Lifted, with its confirm; then set again for the non-admin to see.
        page.get_by_test_id("limits-lift").click()
        page.get_by_test_id("limits-lift-confirm").click()
        expect(row.get_by_test_id("queue-limits")).to_have_text("none", timeout=WAIT_MS)
        assert site.ada.get("/v1/queues").json()["limits"].get("export") is None
        console.check()
    finally:
        console.close()

    put = site.ada.put("/v1/queues/export", json={"concurrency": 3})
    assert put.status_code == 200, put.text
    console, page = open_console(browser, site, "bob")
    try:
        page.get_by_test_id("nav-jobs").click()
        row = page.locator('[data-testid="queue-row"][data-type="export"]')
        expect(row.get_by_test_id("queue-limits")).to_have_text("3 at once", timeout=WAIT_MS)
        expect(page.get_by_test_id("limits-read-only")).to_be_visible()
        expect(page.get_by_test_id("queue-limits-edit")).to_have_count(0)
        expect(page.get_by_test_id("limits-form")).to_have_count(0)
        refused = site.bob.put("/v1/queues/export", json={"concurrency": 9})
        assert refused.status_code == 403, refused.text
        assert site.bob.delete("/v1/queues/export").status_code == 403
        assert site.ada.get("/v1/queues").json()["limits"]["export"]["concurrency"] == 3
        console.check()
    finally:
        console.close()


def test_a_waiting_child_shows_its_parents_and_why_a_cancelled_parent_cancelled_it(
    browser: Browser, site: Site
) -> None:
    """A child submitted from the form with a parent, a group and a unique key waits, is
    listed under `waiting`, and its page shows them; cancelling the parent cancels it, and
    its page says why, linking to the parent."""
    parent = site.ada.post("/v1/jobs", json={"type": "fetch"}).json()["id"]
    console, page = open_console(browser, site, "ada")
    try:
        page.goto(f"{site.server.url}/console#/jobs?submit")
        page.get_by_test_id("submit-type").fill("combine")
        page.get_by_test_id("submit-after").fill(f" {parent} ")
        page.get_by_test_id("submit-group").fill("tenant-7")
        page.get_by_test_id("submit-unique-key").fill("merge-7")
        page.get_by_test_id("submit-job").click()
        expect(page.get_by_test_id("job-status")).to_have_text("waiting", timeout=WAIT_MS)
        child = page.evaluate("decodeURIComponent(location.hash.replace('#/jobs/', ''))")
        stored = site.ada.get(f"/v1/jobs/{child}").json()
        assert (stored["after"], stored["group"], stored["unique_key"]) == (
            [parent],
            "tenant-7",
            "merge-7",
        )

        page.goto(f"{site.server.url}/console#/jobs?status=waiting")
        expect(page.get_by_test_id("jobs-filter-status")).to_have_value("waiting", timeout=WAIT_MS)
        rows = page.get_by_test_id("job-row")
        expect(rows.first).to_have_attribute("data-id", child, timeout=WAIT_MS)
        expect(rows).to_have_count(1)
        expect(rows.first).to_have_attribute("data-status", "waiting")
        expect(page.locator('[data-testid="queue-row"][data-type="combine"]').get_by_test_id(
            "queue-waiting"
        )).to_have_text("1")  # fmt: skip

        rows.first.get_by_test_id("job-link").click()
        expect(page.get_by_test_id("job-status")).to_have_text("waiting", timeout=WAIT_MS)
        expect(page.get_by_test_id("job-parent")).to_have_text(parent)
        expect(page.get_by_test_id("job-group")).to_have_text("tenant-7")
        expect(page.get_by_test_id("job-unique-key")).to_have_text("merge-7")
        expect(page.get_by_test_id("job-cancel-reason")).to_have_count(0)

        assert site.ada.post(f"/v1/jobs/{parent}/cancel").status_code == 200
        expect(page.get_by_test_id("job-status")).to_have_text("cancelled", timeout=WAIT_MS)
        reason = page.get_by_test_id("job-cancel-reason")
        expect(reason).to_have_attribute("data-reason", "ParentCancelled", timeout=WAIT_MS)
        expect(reason).to_contain_text("Cancelled because its parent was cancelled")
        expect(reason.get_by_test_id("job-cancel-parent")).to_have_text(parent)
        screenshot(page, "job-cancelled-by-parent")
        reason.get_by_test_id("job-cancel-parent").click()
        expect(page.get_by_test_id("page-title")).to_have_text(f"Job {parent}", timeout=WAIT_MS)
        expect(page.get_by_test_id("job-status")).to_have_text("cancelled", timeout=WAIT_MS)
        console.check()
    finally:
        console.close()


# In the page: the client the server serves, with the page's session (its cookie).
CLIENT_CALLS = """async () => {
  const { Tidings, TidingsError } = await import("/client/tidings.js");
  const t = new Tidings({ url: location.origin, credentials: "same-origin" });
  const out = {};
  const hourly = { cron: "0 * * * *", timezone: "Asia/Tokyo" };
  out.put = await t.putSchedule("js-hourly", "report", { n: 1 }, hourly);
  out.listed = (await t.listSchedules()).map((s) => s.name);
  out.got = await t.getSchedule("js-hourly");
  try {
    await t.putSchedule("js-bad", "report", null, { cron: "0 25 * * *" });
    out.bad = "accepted";
  } catch (exc) {
    const known = exc instanceof TidingsError;
    out.bad = known ? { status: exc.status, message: exc.message } : String(exc);
  }
  await t.deleteSchedule("js-hourly");
  const parent = await t.submit("fetch", 1);
  const options = { after: [parent.id], group: "g1", uniqueKey: "js-k" };
  const child = await t.submit("merge", null, options);
  const again = await t.submit("merge", null, { uniqueKey: "js-k" });
  out.child = { id: child.id, job: child.job, deduplicated: child.deduplicated };
  out.again = { id: again.id, deduplicated: again.deduplicated };
  const batch = await t.submitBatch([
    { ref: "a", type: "fetch", payload: 1 },
    { ref: "sum", type: "merge", after: ["a", parent.id] },
  ]);
  out.batch = [...batch].map(([ref, job]) => [ref, job.id, job.job.status, job.job.after ?? null]);
  return out;
}"""


def test_the_served_client_calls_schedules_dependencies_and_batches_from_the_browser(
    browser: Browser, site: Site
) -> None:
    console, page = open_console(browser, site, "ada", ((422, "/v1/schedules/js-bad"),))
    try:
        expect(page.get_by_test_id("nav")).to_be_visible(timeout=WAIT_MS)
        out = page.evaluate(CLIENT_CALLS)
        assert out["put"]["cron"] == "0 * * * *" and out["put"]["timezone"] == "Asia/Tokyo"
        assert "js-hourly" in out["listed"]
        assert out["got"]["owner"] == "ada" and out["got"]["payload"] == {"n": 1}
        said = server_message(
            site.ada.put("/v1/schedules/js-bad", json={"type": "report", "cron": "0 25 * * *"}),
            422,
        )
        assert out["bad"] == {"status": 422, "message": said}
        assert site.ada.get("/v1/schedules/js-hourly").status_code == 404

        child = out["child"]
        assert child["job"]["status"] == "waiting" and not child["deduplicated"]
        assert (child["job"]["group"], child["job"]["unique_key"]) == ("g1", "js-k")
        assert out["again"] == {"id": child["id"], "deduplicated": True}
        stored = site.ada.get(f"/v1/jobs/{child['id']}").json()
        assert (stored["status"], stored["group"]) == ("waiting", "g1")
        parent = stored["after"][0]

        (a_ref, a_id, a_status, _), (sum_ref, sum_id, sum_status, sum_after) = out["batch"]
        assert (a_ref, a_status, sum_ref, sum_status) == ("a", "queued", "sum", "waiting")
        assert sum_after == [a_id, parent]
        assert site.ada.get(f"/v1/jobs/{sum_id}").json()["after"] == [a_id, parent]
        console.check()
    finally:
        console.close()
