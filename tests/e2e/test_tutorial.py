"""docs/tutorial.md, run for real: `tidings serve` with the page's origin in --cors-origins,
the example worker (examples/transcode/workers.py) as its own process, the static page
served by `python -m http.server`, and Debian's chromium (Playwright) choosing a file and
pressing Transcode. The page must show the progress reach 100 % and the result, and no
request may leave loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import ServerFactory, free_port
from tests.hostile.browser import LoopbackPage

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
STATIC = ROOT / "examples" / "transcode" / "static"


def start(argv: list[str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    with log.open("wb") as out:
        return subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def page_server(tmp_path: Path) -> Iterator[str]:
    """The tutorial's static server: `python -m http.server` on a free loopback port."""
    port = free_port()
    proc = start(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(STATIC)],
        tmp_path / "http.server.log",
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{url}/index.html", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"http.server did not serve the page:\n{_tail(tmp_path)}")
                time.sleep(0.05)
        yield url
    finally:
        stop(proc)


def _tail(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace")[-2000:] for p in folder.glob("*.log"))


def test_the_page_shows_progress_and_result(
    tidings_server: ServerFactory, page_server: str, browser_page: LoopbackPage, tmp_path: Path
) -> None:
    server = tidings_server(args=["--cors-origins", page_server])
    worker = start(
        [sys.executable, "-m", "tidings", "worker", "examples.transcode.workers:worker",
         "--url", server.url],
        tmp_path / "worker.log",
    )  # fmt: skip
    try:
        page = browser_page.page
        page.goto(f"{page_server}/index.html?api={server.url}")
        page.set_input_files(
            "#video",
            files=[{"name": "holiday.mov", "mimeType": "video/quicktime", "buffer": b"\0" * 64}],
        )
        page.click("button[type=submit]")
        expect(page.locator("#result")).to_have_text("Done: /videos/holiday.mp4", timeout=20_000)
        expect(page.locator("#percent")).to_have_text("100 %")
        assert page.locator("#progress").evaluate("bar => bar.value") == 100
        expect(page.locator("#status")).to_have_text("succeeded")
        log = page.locator("#log li").all_text_contents()
        assert log[0] == "queued" and log[-1] == "succeeded 100 %", log
        assert any(item.startswith("progress ") for item in log), log
        assert worker.poll() is None, f"the worker died:\n{_tail(tmp_path)}"
    finally:
        stop(worker)
    # The page talked to the static server and tidings only, both on loopback (the
    # fixture fails the test otherwise): POST /v1/jobs and the job's event stream.
    assert browser_page.requests_to("/v1/jobs")
    assert any(u.endswith("/events") for u in browser_page.requests), browser_page.requests
