"""The console in a browser, as the console tests drive it: a fresh context that records
what would make a page wrong (console errors, uncaught exceptions, an error banner, a
request leaving the origin)."""

from __future__ import annotations

from urllib.parse import urlsplit

from playwright.sync_api import Browser, ConsoleMessage, Page, ViewportSize, expect

from tests.hostile.browser import LoopbackPage

__all__ = ["VIEWPORT", "Console"]

VIEWPORT: ViewportSize = {"width": 1280, "height": 800}


class Console:
    """A fresh browser context (1280x800) on the console that records console errors and
    uncaught exceptions, and (LoopbackPage) every request, aborting any beyond loopback.

    `refusals`: (status, path) of the answers the test expects to be refused, each logged
    by Chrome as a console error that names the status and the URL: only those pass."""

    def __init__(
        self, browser: Browser, origin: str, refusals: tuple[tuple[int, str], ...] = ()
    ) -> None:
        self.origin = origin
        self.refusals = refusals
        self.loopback = LoopbackPage(browser.new_context(viewport=VIEWPORT))
        self.page: Page = self.loopback.page
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _refused(self, message: ConsoleMessage) -> bool:
        url = urlsplit(message.location.get("url", ""))
        return any(
            message.text.startswith(
                f"Failed to load resource: the server responded with a status of {status} "
            )
            and f"{url.scheme}://{url.netloc}" == self.origin
            and url.path == path
            for status, path in self.refusals
        )

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not self._refused(message):
            self.errors.append(f"{message.text} ({message.location.get('url')})")

    def open(self, route: str) -> Page:
        self.page.goto(f"{self.origin}/console{route}")
        return self.page

    def check(self) -> None:
        """No console error, nothing uncaught, no error banner, every request to the origin."""
        self.loopback.check()
        assert self.errors == []
        expect(self.page.get_by_test_id("error-banner")).to_have_count(0)
        host = urlsplit(self.origin).netloc
        foreign = [
            url
            for url in self.loopback.requests
            if urlsplit(url).scheme not in ("http", "ws") or urlsplit(url).netloc != host
        ]
        assert foreign == []

    def close(self) -> None:
        self.page.context.close()
