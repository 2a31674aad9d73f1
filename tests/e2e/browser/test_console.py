"""The console, tested end to end in a real browser (Debian's chromium driven by
Playwright) against real `tidings serve` processes and real `tidings worker` processes.

- A message published with HTTP appears in a channel's live tail within a second, its
  markup shown as text.
- A job submitted from the jobs page's form is worked by a real worker; its page follows
  it live until the progress bar reaches 100 % and says who worked it.
- A job that used up its attempts is retried from the dead letters and is worked again.
- Under --require-auth the console asks for a login; a user without admin rights sees no
  users page (the API refuses them too), while an admin does.
- The channel list pages on the server: a few thousand channels show one page at a time.

Every page is photographed into build/screenshots/<page>.png (1280x800, full page). Each
test fails on a console error (Chrome logs every HTTP answer of 400 or more as one, so no
test lets the page meet a refusal, bar the 401 before a login), an uncaught exception, an
error banner, or a request to anything but the server's origin.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    Page,
    expect,
)

from tests.conftest import ServerProcess
from tests.e2e.browser.console_page import Console
from tests.e2e.browser.harness import ROOT, start_worker, stop_process

pytestmark = pytest.mark.timeout(120)

TRANSCODE = "examples.transcode.workers:worker"  # "transcode": ten progress steps of 0.2 s
FAILING = "tests.e2e.worker_app:worker"  # "fail": raises on every attempt
SCREENSHOTS = Path(__file__).resolve().parents[3] / "build" / "screenshots"
# The channel list's page size, as the console asks for it.
CHANNELS_PAGE = int(
    re.search(
        r"^const PAGE_SIZE = (\d+);",
        (ROOT / "console" / "src" / "channels.ts").read_text(),
        re.MULTILINE,
    ).group(1)  # type: ignore[union-attr]
)
WAIT_MS = 15_000  # for anything the page shows after a request or two
LIVE_BUDGET = 1.0  # seconds from a publish's answer to its row in the live tail


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


class Site(NamedTuple):
    server: ServerProcess
    http: httpx.Client
    transcoder: int  # the pid of the transcode worker


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server (memory store) with a few channels holding messages and a user, and two
    real workers waiting for jobs: one for "transcode", one whose "fail" always raises."""
    folder = tmp_path_factory.mktemp("console")
    server = ServerProcess("memory://", folder / "server.log", [], {}).start()
    workers = [
        start_worker(server, folder / "transcode.log", TRANSCODE),
        start_worker(server, folder / "failing.log", FAILING),
    ]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for channel in ("news", "news.sport", "chat.lobby"):
                for n in range(3):
                    body = {"data": {"n": n, "title": f"{channel} #{n}"}, "event": "update"}
                    r = http.post(f"/v1/channels/{channel}/messages", json=body)
                    assert r.status_code == 201, r.text
            r = http.put(
                "/v1/admin/users/alice",
                json={"permissions": {"subscribe": ["news.*"], "submit": ["transcode"]}},
            )
            assert r.status_code in (200, 201), r.text
            # Both workers are waiting for work (listed by the server) before any test.
            deadline = time.monotonic() + 30
            while len(http.get("/v1/workers").json()["workers"]) < 2:
                assert time.monotonic() < deadline, http.get("/v1/workers").text
                assert all(w.poll() is None for w in workers), "a worker exited"
                time.sleep(0.1)
            yield Site(server, http, workers[0].pid)
    finally:
        for worker in workers:
            stop_process(worker)
        server.kill()


@pytest.fixture
def console(browser: Browser, site: Site) -> Iterator[Console]:
    page = Console(browser, site.server.url)
    try:
        yield page
    finally:
        page.close()


def test_a_published_message_appears_in_the_live_tail_within_a_second_as_text(
    console: Console, site: Site
) -> None:
    """With the tail live, each message published with HTTP shows as a row within a second
    of the publish's answer; markup in it is shown as text, never made into elements."""
    channel = "tail.demo"
    r = site.http.post(f"/v1/channels/{channel}/messages", json={"data": "before the tail"})
    assert r.status_code == 201, r.text
    page = console.open(f"#/channels/{channel}")
    status = page.get_by_test_id("tail-status")
    expect(status).to_have_attribute("data-state", "open", timeout=WAIT_MS)
    expect(page.get_by_test_id("info-messages")).to_have_text("1", timeout=WAIT_MS)
    page.evaluate("window.pwned = false")

    markup = '<img src=x onerror="window.pwned = true"><b>bold?</b>'
    json_markup = {"html": "<script>window.pwned = true</script>", "n": 2}
    for data, shown in ((markup, markup), (json_markup, "<script>window.pwned = true</script>")):
        r = site.http.post(f"/v1/channels/{channel}/messages", json={"data": data, "event": "x"})
        published = time.monotonic()
        assert r.status_code == 201, r.text
        row = page.locator(f'[data-testid="tail-row"][data-id="{r.json()["id"]}"]')
        # Polls every 20 ms (an expect polls ever more slowly, which would blur the
        # measure), then measures from the publish's answer.
        page.wait_for_function(
            "id => document.querySelector(`[data-testid=tail-row][data-id='${id}']`) !== null",
            arg=r.json()["id"],
            polling=20,
            timeout=WAIT_MS,
        )
        expect(row).to_be_visible(timeout=WAIT_MS)
        took = time.monotonic() - published
        assert took <= LIVE_BUDGET, f"the row showed {took:.3f} s after the publish's answer"
        expect(row.get_by_test_id("tail-data")).to_contain_text(shown)

    tail = page.get_by_test_id("tail")
    expect(tail.get_by_test_id("tail-row")).to_have_count(2)
    expect(page.get_by_test_id("tail-data").first).to_contain_text('"html"')  # JSON, newest
    expect(page.get_by_test_id("tail-data").nth(1)).to_have_text(markup)
    expect(tail.locator("img, b, script")).to_have_count(0)
    page.wait_for_timeout(300)  # an image that failed to load would run its onerror by now
    assert page.evaluate("window.pwned") is False
    expect(page.get_by_test_id("tail-count")).to_have_text("2 received")
    expect(page.get_by_test_id("info-messages")).to_have_text("3", timeout=WAIT_MS)
    screenshot(page, "channel")
    console.check()


def test_a_job_submitted_from_the_form_is_worked_by_a_real_worker_to_100_percent(
    console: Console, site: Site
) -> None:
    """The jobs page's form submits a transcode job and goes to its page, which follows
    it live: its progress bar moves through the worker's reports to 100 %, it ends
    succeeded with the worker's result, and it names the worker process that ran it."""
    page = console.open("#/jobs")
    page.get_by_test_id("submit-open").click()
    expect(page.get_by_test_id("submit-card")).to_be_visible()
    # Every value the job's progress bar takes, from the moment it is made.
    page.evaluate(
        """() => {
            window.progress = [];
            new MutationObserver((records) => {
                for (const r of records) {
                    const el = r.type === "attributes" ? r.target : null;
                    if (el && el.dataset.testid === "job-progress")
                        window.progress.push(Number(el.getAttribute("aria-valuenow")));
                }
            }).observe(document.body, {
                subtree: true, attributes: true, attributeFilter: ["aria-valuenow"],
            });
        }"""
    )
    page.get_by_test_id("submit-type").fill("transcode")
    page.get_by_test_id("submit-payload").fill('{"name": "holiday.mov"}')
    page.get_by_test_id("submit-job").click()

    page.wait_for_url(re.compile(r"/console#/jobs/[^/?]+$"), timeout=WAIT_MS)
    job_id = urlsplit(page.url).fragment.removeprefix("/jobs/")
    expect(page.get_by_test_id("page-title")).to_have_text(f"Job {job_id}")
    progress = page.get_by_test_id("job-progress")
    expect(progress).to_have_attribute("aria-valuenow", "100", timeout=30_000)
    expect(page.get_by_test_id("job-status")).to_have_text("succeeded", timeout=WAIT_MS)
    expect(page.get_by_test_id("job-progress-text")).to_have_text("100 %")
    expect(page.get_by_test_id("job-result")).to_contain_text("/videos/holiday.mp4")
    expect(page.get_by_test_id("job-payload")).to_contain_text("holiday.mov")
    expect(page.get_by_test_id("job-message")).to_contain_text("encoding holiday.mov: 100 %")

    job = site.http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    assert job["type"] == "transcode" and job["payload"] == {"name": "holiday.mov"}, job
    assert job["result"] == {"url": "/videos/holiday.mp4", "source": "holiday.mov"}, job
    expect(page.get_by_test_id("job-worker")).to_have_text(job["worker"])
    # The worker the job names is the transcode worker process this test started: the
    # server lists it by its id, and its name is host:pid.
    workers = {w["id"]: w for w in site.http.get("/v1/workers").json()["workers"]}
    assert job["worker"] in workers, (job["worker"], workers)
    assert workers[job["worker"]]["name"].endswith(f":{site.transcoder}"), workers
    assert workers[job["worker"]]["types"] == ["transcode"], workers
    # The bar went through the worker's progress reports on its way to 100.
    seen: list[int] = page.evaluate("window.progress")
    assert any(0 < p < 100 for p in seen), seen
    assert seen[-1] == 100 and seen == sorted(seen), seen
    expect(page.locator('[data-testid="job-event"][data-event="succeeded"]')).to_have_count(1)
    screenshot(page, "job")

    # Back on the jobs page, the list and the queue counts show it done.
    page.get_by_test_id("back").click()
    row = page.locator(f'[data-testid="job-row"][data-id="{job_id}"]')
    expect(row).to_have_attribute("data-status", "succeeded", timeout=WAIT_MS)
    queue = page.locator('[data-testid="queue-row"][data-type="transcode"]')
    expect(queue.get_by_test_id("queue-succeeded")).not_to_have_text("0", timeout=WAIT_MS)
    screenshot(page, "jobs")
    console.check()


def job_events(http: httpx.Client, job_id: str) -> list[str]:
    """The events of a job's channel job.<id>, oldest first."""
    r = http.get(f"/v1/channels/job.{job_id}/messages", params={"after": "0"})
    assert r.status_code == 200, r.text
    return [m["event"] for m in r.json()["messages"]]


def test_a_dead_letter_retried_from_the_console_is_queued_and_worked_again(
    console: Console, site: Site
) -> None:
    """A job whose handler always raises, with one attempt, ends failed: a dead letter.
    Its Retry button in the dead letters puts it back in the queue (the API's events
    say queued after failed), the worker runs it again (a second error on record), and
    the console shows that: back in the dead letters, its page lists both errors."""
    r = site.http.post("/v1/jobs", json={"type": "fail", "payload": {}, "max_attempts": 1})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    job = site.http.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
    assert job["status"] == "failed" and len(job["errors"]) == 1, job

    page = console.open("#/jobs")
    page.get_by_test_id("jobs-dead-letters").click()
    expect(page.get_by_test_id("jobs-heading")).to_contain_text("Dead letters")
    expect(page.get_by_test_id("jobs-dead-letters")).to_have_class("active")
    row = page.locator(f'[data-testid="job-row"][data-id="{job_id}"]')
    expect(row).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
    expect(row.get_by_test_id("job-row-error")).to_contain_text("failing on purpose")
    # Only failed jobs are listed here.
    for status in page.locator('[data-testid="job-row"]').evaluate_all(
        "rows => rows.map((r) => r.dataset.status)"
    ):
        assert status == "failed"
    screenshot(page, "dead-letters")

    row.get_by_test_id("job-retry").click()
    # The API: queued again after it failed, run again, and failed again (two errors).
    # The wait is the page's: Playwright's sync API lets the page's requests through its
    # route (LoopbackPage) only while a Playwright call runs, so a time.sleep here would
    # hold the retry's POST back.
    deadline = time.monotonic() + 20
    while True:
        job = site.http.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "failed" and len(job["errors"]) == 2:
            break
        assert time.monotonic() < deadline, (job, job_events(site.http, job_id))
        page.wait_for_timeout(100)
    events = job_events(site.http, job_id)
    first_failure = events.index("failed")
    assert "queued" in events[first_failure + 1 :], events
    assert events[-1] == "failed" and events.count("failed") == 2, events

    # The console: the dead letters list it again, and its page shows both attempts' errors.
    expect(row).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
    row.get_by_test_id("job-link").click()
    expect(page.get_by_test_id("job-status")).to_have_text("failed", timeout=WAIT_MS)
    expect(page.get_by_test_id("job-errors-row")).to_have_count(2, timeout=WAIT_MS)
    expect(page.get_by_test_id("job-attempt")).to_have_text("1 of 1")
    expect(page.get_by_test_id("job-traceback")).to_contain_text("RuntimeError")
    expect(page.locator('[data-testid="job-event"][data-event="failed"]')).to_have_count(2)
    expect(page.get_by_test_id("job-retry")).to_be_visible()
    console.check()


# Each page photographed here: its route and what shows that its data arrived. (The
# channel's tail, a job, the jobs list and the dead letters are taken by the tests above.)
PAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "channels": ("#/channels", ('[data-testid="channel-row"][data-channel="news.sport"]',)),
    "workers": ("#/workers", ('[data-testid="worker-row"] >> nth=1',)),
    "server": (
        "#/server",
        (
            '[data-testid="chart-streams"] [data-testid="legend-value"]',
            '[data-testid="setting-row"]',
        ),
    ),
    "users": ("#/users", ('[data-testid="user-row"][data-name="alice"]',)),
    "user": ("#/users/alice", ('[data-testid="user-form"]', '[data-testid="credentials-empty"]')),
}


@pytest.mark.parametrize("name", list(PAGES))
def test_each_page_shows_its_data_and_is_photographed(
    name: str, console: Console, site: Site
) -> None:
    route, ready = PAGES[name]
    page = console.open(route)
    expect(page.get_by_test_id("nav")).to_be_visible(timeout=WAIT_MS)
    for selector in ready:
        expect(page.locator(selector).first).to_be_visible(timeout=WAIT_MS)
    nav = {"user": "users"}.get(name, name)
    expect(page.get_by_test_id(f"nav-{nav}")).to_have_class("active")
    expect(page.get_by_test_id("forbidden")).to_have_count(0)
    page.wait_for_timeout(1000)  # a poll more: the charts draw a second point
    screenshot(page, name)
    console.check()


def add_user(store: str, name: str, password: str, *grants: str) -> None:
    """`tidings users add NAME --store STORE --password-stdin GRANTS...`."""
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "users", "add", name, "--store", store,
         "--password-stdin", *grants],
        input=password + "\n", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def log_in(console: Console, user: str, password: str) -> Page:
    page = console.open("")
    expect(page.get_by_test_id("login-form")).to_be_visible(timeout=WAIT_MS)
    page.get_by_test_id("login-user").fill(user)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()
    expect(page.get_by_test_id("nav-user")).to_have_text(user, timeout=WAIT_MS)
    return page


def test_without_admin_rights_the_users_page_is_refused_by_the_console_and_the_api(
    browser: Browser, tmp_path: Path
) -> None:
    """Under --require-auth the console opens on its login form. An admin sees and opens
    the users page; a user who may only read news.* has no link to it, is told it is not
    allowed when asking for it by its address, and the API answers them 403 for it."""
    store = f"sqlite:///{tmp_path / 'tidings.db'}"
    admin_pw, user_pw = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    add_user(store, "ada", admin_pw, "--admin")
    add_user(store, "bob", user_pw, "--subscribe", "news.*")
    server = ServerProcess(store, tmp_path / "server.log", ["--require-auth"], {}).start()
    # The one refusal the page meets: who-am-I before the login.
    refusals = ((401, "/v1/auth/me"),)
    admin, user = (Console(browser, server.url, refusals) for _ in range(2))
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            tokens = {}
            for name, password in (("ada", admin_pw), ("bob", user_pw)):
                login = http.post("/v1/auth/login", json={"username": name, "password": password})
                assert login.status_code == 200, login.text
                tokens[name] = login.json()["token"]
            # The API: no credentials 401, bob 403, ada 200.
            http.cookies.clear()
            assert http.get("/v1/admin/users").status_code == 401
            refused = http.get(
                "/v1/admin/users", headers={"Authorization": f"Bearer {tokens['bob']}"}
            )
            assert refused.status_code == 403, refused.text
            allowed = http.get(
                "/v1/admin/users", headers={"Authorization": f"Bearer {tokens['ada']}"}
            )
            assert allowed.status_code == 200, allowed.text
            assert {u["name"] for u in allowed.json()["users"]} == {"ada", "bob"}

        # The admin: every page in the nav, and the users page lists both.
        page = admin.open("")
        expect(page.get_by_test_id("login-form")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_test_id("nav")).to_have_count(0)
        screenshot(page, "login")
        page = log_in(admin, "ada", admin_pw)
        expect(page.get_by_test_id("nav-role")).to_have_text("admin")
        page.get_by_test_id("nav-users").click()
        expect(page.locator('[data-testid="user-row"][data-name="bob"]')).to_be_visible(
            timeout=WAIT_MS
        )
        expect(page.locator('[data-testid="user-row"][data-name="ada"]')).to_be_visible()
        admin.check()

        # The limited user: no users (nor server, nor lab) link, and the page itself refused.
        page = log_in(user, "bob", user_pw)
        expect(page.get_by_test_id("nav-role")).to_have_text("limited grants")
        expect(page.get_by_test_id("nav-channels")).to_be_visible()
        for hidden in ("users", "server", "lab", "jobs", "schedules", "workers"):
            expect(page.get_by_test_id(f"nav-{hidden}")).to_have_count(0)
        page.goto(f"{server.url}/console#/users")
        expect(page.get_by_test_id("forbidden")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_test_id("forbidden")).to_contain_text("Not allowed")
        expect(page.get_by_test_id("users-table")).to_have_count(0)
        page.evaluate("location.hash = '#/users/ada'")
        expect(page.get_by_test_id("forbidden")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_test_id("user-form")).to_have_count(0)
        # The console asked nothing of the admin API for bob.
        assert not [u for u in user.loopback.requests if "/v1/admin/" in u]
        user.check()
    finally:
        admin.close()
        user.close()
        server.kill()


def test_the_channel_list_shows_one_page_of_thousands_and_pages_on(
    browser: Browser, tmp_path: Path
) -> None:
    """With 3,000 channels the list shows one page (the console's page size) and Next
    shows the next page the server serves, none of the first's channels among them."""
    server = ServerProcess("memory://", tmp_path / "server.log", [], {}).start()
    console = Console(browser, server.url)
    try:
        names = [f"load.{i:05d}" for i in range(3000)]

        def publish(chunk: list[str]) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for name in chunk:
                    r = http.post(f"/v1/channels/{name}/messages", json={"data": 1})
                    assert r.status_code == 201, r.text

        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(publish, [names[i::4] for i in range(4)]))
        assert time.monotonic() - started < 30, "seeding took too long"

        def page_of(after: str) -> dict[str, Any]:
            params: dict[str, str | int] = {"limit": CHANNELS_PAGE}
            if after:
                params["after"] = after
            answer: dict[str, Any] = httpx.get(f"{server.url}/v1/channels", params=params).json()
            return answer

        first = page_of("")
        first_names = [c["name"] for c in first["channels"]]
        assert len(first_names) == CHANNELS_PAGE and first["next"], first["next"]
        second = page_of(first["next"])
        second_names = [c["name"] for c in second["channels"]]

        page = console.open("#/channels")
        rows = page.get_by_test_id("channel-row")
        expect(rows.first).to_have_attribute("data-channel", first_names[0], timeout=WAIT_MS)
        shown = rows.evaluate_all("rows => rows.map((r) => r.dataset.channel)")
        assert 0 < len(shown) <= CHANNELS_PAGE
        assert shown == first_names
        expect(page.get_by_test_id("channels-where")).to_contain_text("page 1")
        expect(page.get_by_test_id("channels-prev")).to_be_disabled()

        page.get_by_test_id("channels-next").click()
        expect(rows.first).to_have_attribute("data-channel", second_names[0], timeout=WAIT_MS)
        expect(page.get_by_test_id("channels-where")).to_contain_text("page 2")
        shown_next = rows.evaluate_all("rows => rows.map((r) => r.dataset.channel)")
        assert len(shown_next) <= CHANNELS_PAGE
        assert shown_next == second_names
        assert not set(shown_next) & set(shown)

        page.get_by_test_id("channels-prev").click()
        expect(rows.first).to_have_attribute("data-channel", first_names[0], timeout=WAIT_MS)
        expect(page.get_by_test_id("channels-where")).to_contain_text("page 1")
        console.check()
    finally:
        console.close()
        server.kill()
