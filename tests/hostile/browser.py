"""Real-browser tests: Debian's chromium driven by Playwright, talking to loopback only.

`launch(playwright)` starts chromium headless, failing (never skipping) when it is missing:
`make test` installs it. `LoopbackPage` is a page whose every request is watched: one for
a host outside loopback is aborted, and `check()` fails the test that let it happen. It
also records what the page asked of the server, so a test can count reconnects.

Use the `browser_page` fixture (tests/hostile/conftest.py) rather than these directly.
"""

from __future__ import annotations

import ipaddress
import shutil
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Route, WebSocket

__all__ = ["CHROMIUM_ARGS", "LoopbackPage", "chromium_path", "is_loopback_url", "launch"]

# Headless, as root (no sandbox), and quiet: no background fetches, updates or sync that
# would reach outside the machine.
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Schemes that make no network request.
_LOCAL_SCHEMES = frozenset({"about", "blob", "data", "chrome", "devtools"})


def chromium_path() -> str:
    """Where chromium is; fails the test when it is not installed."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail(
            "chromium is not installed: `make test` installs it (Debian package chromium); "
            "install it, or run the tests through make"
        )
    return path


def launch(playwright: Playwright) -> Browser:
    """Start Debian's chromium headless."""
    return playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)


def is_loopback_url(url: str) -> bool:
    """True for a URL that makes no request (data:, about:…) or one to a loopback host."""
    parts = urlsplit(url)
    if parts.scheme in _LOCAL_SCHEMES:
        return True
    host = (parts.hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackPage:
    """A page in a fresh browser context whose requests may only go to loopback.

    Attributes:
        page: the Playwright page.
        requests: every URL the page asked for (EventSource reconnects included).
        escaped: URLs outside loopback the page tried to reach (aborted).
    """

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.requests: list[str] = []
        self.escaped: list[str] = []
        context.route("**/*", self._route)
        self.page: Page = context.new_page()
        # WebSockets are not routed: record their URLs and close those leaving loopback.
        self.page.on("websocket", self._websocket)

    def _route(self, route: Route) -> None:
        url = route.request.url
        self.requests.append(url)
        if is_loopback_url(url):
            route.continue_()
        else:
            self.escaped.append(url)
            route.abort("blockedbyclient")

    def _websocket(self, ws: WebSocket) -> None:
        self.requests.append(ws.url)
        if not is_loopback_url(ws.url):
            self.escaped.append(ws.url)

    def requests_to(self, path: str) -> list[str]:
        """The URLs asked for whose path is `path`."""
        return [u for u in self.requests if urlsplit(u).path == path]

    def check(self) -> None:
        """Fail the test if the page tried to leave loopback."""
        if self.escaped:
            pytest.fail(f"the browser tried to reach beyond loopback: {self.escaped}")
