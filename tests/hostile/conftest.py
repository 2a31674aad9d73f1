"""Fixtures of the hostile-client suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import sync_playwright

from tests.hostile.browser import LoopbackPage, launch


@pytest.fixture
def browser_page() -> Iterator[LoopbackPage]:
    """A page of Debian's chromium (headless) that may only reach loopback.

    The test fails if chromium is missing, or if the page tried to reach another host
    (such requests are aborted). A fresh browser per test: nothing is shared between them.
    """
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = LoopbackPage(browser.new_context())
            yield page
        finally:
            browser.close()
    page.check()
