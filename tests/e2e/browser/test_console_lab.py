"""The console's lab page in a real browser (Debian's chromium, Playwright) against a real
server on loopback: a tiny lab run from the form shows its running state, then a row per
pattern and the chart, an SVG image the page's CSP allows (a data: URL in an <img>), with
no console error, no error banner and no request leaving the origin."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.conftest import ServerProcess
from tests.e2e.browser.console_page import Console

pytestmark = pytest.mark.timeout(90)

WAIT_MS = 15_000
LAB_MS = 45_000  # two patterns of one second, the lab's start and its drains


def test_the_lab_page_runs_a_tiny_lab_and_shows_its_table_and_chart(
    browser: Browser, tmp_path: Path
) -> None:
    server = ServerProcess("memory://", tmp_path / "server.log", [], {}).start()
    console = Console(browser, server.url)
    try:
        page = console.open("#/lab")
        expect(page.get_by_test_id("nav-lab")).to_be_visible(timeout=WAIT_MS)
        expect(page.get_by_test_id("page-title")).to_have_text("Lab")
        page.get_by_test_id("lab-clients").fill("2")
        page.get_by_test_id("lab-rate").fill("2")
        page.get_by_test_id("lab-seconds").fill("1")
        for pattern in ("longpoll", "ws"):  # poll and sse stay chosen
            page.get_by_test_id(f"lab-pattern-{pattern}").uncheck()
        page.get_by_test_id("lab-run").click()
        expect(page.get_by_test_id("lab-running")).to_be_visible()
        expect(page.get_by_test_id("lab-run")).to_be_disabled()

        rows = page.get_by_test_id("lab-row")
        expect(rows).to_have_count(2, timeout=LAB_MS)
        expect(page.locator('[data-testid="lab-row"][data-pattern="poll"]')).to_be_visible()
        expect(page.locator('[data-testid="lab-row"][data-pattern="sse"]')).to_be_visible()
        expect(page.get_by_test_id("lab-run")).to_be_enabled()
        chart = page.get_by_test_id("lab-chart")
        expect(chart).to_be_visible()
        assert (chart.get_attribute("src") or "").startswith("data:image/svg+xml")
        # The image decoded: the CSP let it in and its SVG parsed.
        page.wait_for_function(
            "document.querySelector('[data-testid=lab-chart]').naturalWidth > 0",
            timeout=WAIT_MS,
        )
        # The SVG's markup never entered the page's DOM.
        expect(page.locator("#app svg text")).to_have_count(0)
        console.check()
    finally:
        console.close()
        server.kill()
