"""A browser's EventSource following a job ends: CLOSED after one terminal event.

The breakage: after `succeeded` and `event: close`, an EventSource reconnects by itself
with the last event's id; the server answered 200 and then only pings, forever, so every
tab that followed a job held a connection for good. The server now answers that
reconnect 204 No Content, which the EventSource standard reads as "stop".

Real Debian chromium, driven by Playwright; the page is the server's own /healthz, so the
EventSource is same-origin (no CORS involved) and the page reaches nothing but loopback.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.hostile.browser import LoopbackPage

pytestmark = pytest.mark.timeout(90)

# Longer than chromium's default reconnect delay (3 s) and the server's `retry:` hint.
QUIET_AFTER_CLOSE_MS = 4000

# Follows a job with an EventSource, logging what it sees in window.__log.
FOLLOW_JS = """
(url) => {
  const log = [];
  const es = new EventSource(url);
  window.__log = log;
  window.__es = es;
  es.onopen = () => log.push({type: "open"});
  es.onerror = () => log.push({type: "error", state: es.readyState});
  for (const name of ["queued", "running", "progress", "succeeded", "failed",
                      "cancelled", "close", "reset"]) {
    es.addEventListener(name, (e) => log.push({type: name, id: e.lastEventId}));
  }
}
"""


def _follow(browser: LoopbackPage, base: str, path: str) -> None:
    browser.page.goto(f"{base}/healthz")
    browser.page.evaluate(FOLLOW_JS, path)


def _wait_closed(browser: LoopbackPage) -> list[dict[str, Any]]:
    """Wait until the EventSource is CLOSED, then a while longer; its log."""
    try:
        browser.page.wait_for_function("() => window.__es.readyState === 2", timeout=20_000)
    except PlaywrightTimeoutError:
        state = browser.page.evaluate("() => window.__es.readyState")
        log = browser.page.evaluate("() => window.__log")
        pytest.fail(
            f"the EventSource never closed (readyState {state}): events {log}, "
            f"requests {browser.requests}"
        )
    browser.page.wait_for_timeout(QUIET_AFTER_CLOSE_MS)
    assert browser.page.evaluate("() => window.__es.readyState") == 2
    log: list[dict[str, Any]] = browser.page.evaluate("() => window.__log")
    return log


def _types(log: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in log if e["type"] == kind]


def _submit_and_lease(http: httpx.Client) -> tuple[str, str]:
    job_id = http.post("/v1/jobs", json={"type": "browser"}).json()["id"]
    leased = http.post("/v1/workers/lease", json={"types": ["browser"]}).json()["jobs"]
    return job_id, leased[0]["lease_token"]


def test_an_eventsource_following_a_job_ends_closed_after_its_one_terminal_event(
    tidings_server, browser_page
):
    srv = tidings_server(store="memory://")
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job_id, token = _submit_and_lease(http)
        path = f"/v1/jobs/{job_id}/events"
        _follow(browser_page, srv.url, path)
        # Live: the job is running while the page listens; it ends now.
        browser_page.page.wait_for_function(
            "() => window.__log.some((e) => e.type === 'running')", timeout=20_000
        )
        done = http.post(f"/v1/jobs/{job_id}/complete", json={"lease_token": token, "result": 7})
        assert done.status_code == 200
        log = _wait_closed(browser_page)
    assert [e["type"] for e in log if e["type"] in ("queued", "running", "succeeded")] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert len(_types(log, "succeeded")) == 1
    assert len(_types(log, "close")) == 1
    # One stream, and one reconnect that the server answered 204: no `open` for it.
    assert len(_types(log, "open")) == 1
    assert len(browser_page.requests_to(path)) == 2
    assert _types(log, "error")[-1]["state"] == 2
    assert "ERROR" not in srv.log()


def test_an_eventsource_opened_on_a_finished_job_replays_its_events_and_ends_closed(
    tidings_server, browser_page
):
    srv = tidings_server(store="memory://")
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job_id, token = _submit_and_lease(http)
        failed = http.post(
            f"/v1/jobs/{job_id}/fail",
            json={"lease_token": token, "error": "boom", "retry": False},
        )
        assert failed.status_code == 200
        assert failed.json()["status"] == "failed"
    path = f"/v1/jobs/{job_id}/events"
    _follow(browser_page, srv.url, path)
    log = _wait_closed(browser_page)
    assert [e["type"] for e in log if e["type"] in ("queued", "running", "failed")] == [
        "queued",
        "running",
        "failed",
    ]
    assert len(_types(log, "open")) == 1
    assert len(browser_page.requests_to(path)) == 2


def test_an_eventsource_on_a_job_that_does_not_exist_stops_at_once(tidings_server, browser_page):
    srv = tidings_server(store="memory://")
    path = "/v1/jobs/0123456789abcdef01234567/events"
    _follow(browser_page, srv.url, path)
    log = _wait_closed(browser_page)
    assert _types(log, "open") == []
    assert len(browser_page.requests_to(path)) == 1
    assert log == [{"type": "error", "state": 2}]
