"""The console in a real browser: Debian's chromium, driven by Playwright, against a real
tidings server on loopback with some channels, a user and a job a real worker finished.

Every page (channels, a channel, jobs, a job, workers, server, users, a user) loads and
shows its data with no console error, no uncaught exception, no error banner and no
request leaving the server's origin; leaving a page ends its live stream; under
--require-auth the console asks for a login and shows a limited user only their pages.
A screenshot of each page is written beside the server's log.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    Page,
    expect,
)

from tests.conftest import ServerProcess
from tests.e2e.browser.console_page import Console
from tests.e2e.browser.harness import start_worker, stop_process

pytestmark = pytest.mark.timeout(90)

WORKER = "examples.transcode.workers:worker"
CHANNELS = ("news", "news.sport", "chat.lobby")


class Site(NamedTuple):
    server: ServerProcess
    job: str  # a transcode job the worker finished
    folder: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server (memory store) with channels holding messages, a user, and a job that a
    real worker ran to its end; the worker keeps running (the workers page lists it)."""
    folder = tmp_path_factory.mktemp("console")
    server = ServerProcess("memory://", folder / "server.log", [], {}).start()
    worker = start_worker(server, folder / "worker.log", WORKER)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for channel in CHANNELS:
                for n in range(3):
                    body = {"data": {"n": n, "html": "<b>not markup</b>"}, "event": "update"}
                    r = http.post(f"/v1/channels/{channel}/messages", json=body)
                    assert r.status_code == 201, r.text
            r = http.put(
                "/v1/admin/users/alice",
                json={"permissions": {"subscribe": ["news.*"], "submit": ["transcode"]}},
            )
            assert r.status_code in (200, 201), r.text
            job = http.post("/v1/jobs", json={"type": "transcode", "payload": {"name": "a.mov"}})
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            done = http.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
            assert done["status"] == "succeeded", done
        yield Site(server, job_id, folder)
    finally:
        stop_process(worker)
        server.kill()


@pytest.fixture
def console(browser: Browser, site: Site) -> Iterator[Console]:
    page = Console(browser, site.server.url)
    try:
        yield page
    finally:
        page.close()


def expect_visible(page: Page, *selectors: str) -> None:
    for selector in selectors:
        expect(page.locator(selector).first).to_be_visible(timeout=15_000)


# Each page: its route and what shows that its data arrived.
PAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "channels": (
        "#/channels",
        ('[data-testid="channel-row"][data-channel="news.sport"]',),
    ),
    "channel": (
        "#/channels/news",
        ('[data-testid="tail-status"][data-state="open"]', '[data-testid="info-messages"]'),
    ),
    "jobs": (
        "#/jobs",
        ('[data-testid="queue-row"][data-type="transcode"]', '[data-testid="job-row"]'),
    ),
    "job": (
        "#/jobs/{job}",
        ('[data-testid="job-progress"][aria-valuenow="100"]', '[data-testid="job-event"]'),
    ),
    "workers": ("#/workers", ('[data-testid="worker-row"]',)),
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
def test_the_page_loads_without_errors_or_requests_leaving_the_origin(
    name: str, console: Console, site: Site
) -> None:
    """The page shows its data, goes on polling and streaming for a few seconds, and in
    all that time logs no error and asks nothing of another origin."""
    route, ready = PAGES[name]
    page = console.open(route.format(job=site.job))
    expect_visible(page, '[data-testid="nav"]', *ready)
    expect(page.get_by_test_id("page-title")).to_be_visible()
    page.wait_for_timeout(2500)  # a poll or two more
    expect(page.get_by_test_id("forbidden")).to_have_count(0)
    page.screenshot(path=str(site.folder / f"console-{name}.png"), full_page=True)
    console.check()


def open_streams(server: ServerProcess) -> float:
    """Open SSE and WebSocket streams, from the server's /metrics."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("tidings_open_streams{") and ('"ws"' in line or '"sse"' in line):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_every_page_in_turn_through_the_nav_and_leaving_a_channel_ends_its_stream(
    console: Console, site: Site
) -> None:
    """One page visits each nav entry in turn; the channel's live tail holds a stream while
    it is on screen, and the stream ends when the page is left."""
    page = console.open("#/channels")
    page.locator('[data-testid="channel-link"]', has_text="chat.lobby").click()
    expect(page.get_by_test_id("tail-status")).to_have_attribute("data-state", "open")
    assert open_streams(site.server) == 1
    for entry in ("jobs", "workers", "server", "users", "channels"):
        page.get_by_test_id(f"nav-{entry}").click()
        expect(page.get_by_test_id(f"page-{entry}")).to_be_visible()
        expect(page.get_by_test_id(f"nav-{entry}")).to_have_class("active")
    deadline = 50
    while open_streams(site.server) != 0 and deadline:
        page.wait_for_timeout(100)
        deadline -= 1
    assert open_streams(site.server) == 0
    console.check()


def add_user(store: str, name: str, password: str, *grants: str) -> None:
    """`tidings users add NAME --store STORE --password-stdin GRANTS...`."""
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "users", "add", name, "--store", store,
         "--password-stdin", *grants],
        input=password + "\n", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_under_require_auth_the_console_asks_for_a_login_and_shows_a_limited_user_their_pages(
    browser: Browser, tmp_path: Path
) -> None:
    """The login form comes first; a wrong password is said so; a user who may only
    subscribe to news.* sees the channels page (news only) and no other, and the users
    page asked for by its address says it is not allowed; logging out asks again."""
    store = f"sqlite:///{tmp_path / 'tidings.db'}"
    password, publisher = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    add_user(store, "bob", password, "--subscribe", "news.*")
    add_user(store, "pub", publisher, "--publish", "*")
    server = ServerProcess(store, tmp_path / "server.log", ["--require-auth"], {}).start()
    # 401: who-am-I before the login and after the logout, and the wrong password.
    console = Console(browser, server.url, ((401, "/v1/auth/me"), (401, "/v1/auth/login")))
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            login = http.post("/v1/auth/login", json={"username": "pub", "password": publisher})
            assert login.status_code == 200, login.text
            for channel in ("news.local", "secret"):
                r = http.post(
                    f"/v1/channels/{channel}/messages",
                    json={"data": 1},
                    headers={"Authorization": f"Bearer {login.json()['token']}"},
                )
                assert r.status_code == 201, r.text

        page = console.open("")
        expect(page.get_by_test_id("login-form")).to_be_visible()
        page.get_by_test_id("login-user").fill("bob")
        page.get_by_test_id("login-password").fill(password + "-wrong")
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("login-error")).to_contain_text("Wrong")
        page.get_by_test_id("login-password").fill(password)
        page.get_by_test_id("login-submit").click()
        expect(page.get_by_test_id("nav-user")).to_have_text("bob")
        expect(page.get_by_test_id("nav-channels")).to_be_visible()
        for hidden in ("jobs", "workers", "server", "users"):
            expect(page.get_by_test_id(f"nav-{hidden}")).to_have_count(0)
        rows = page.locator('[data-testid="channel-row"]')
        expect(rows).to_have_count(1)
        expect(rows).to_have_attribute("data-channel", "news.local")
        page.goto(f"{server.url}/console#/users")
        expect(page.get_by_test_id("forbidden")).to_be_visible()
        page.get_by_test_id("logout").click()
        expect(page.get_by_test_id("login-form")).to_be_visible()
        console.check()
    finally:
        console.close()
        server.kill()
