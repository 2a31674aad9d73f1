"""The API page end to end: `/` points to it, `/docs` serves Swagger UI from files packaged
with tidings (built by `make assets`), and a real browser (Debian's chromium driven by
Playwright) renders the OpenAPI document and runs "Try it out" against the server, asking
nothing of any other origin.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Request, Route, sync_playwright

import tidings
from tests.conftest import ServerFactory
from tests.hostile.browser import launch

PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "docs-init.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


@pytest.mark.timeout(30)
def test_the_root_points_to_docs_openapi_health_and_metrics(tidings_server: ServerFactory) -> None:
    """`GET /` is a page of links for a browser and JSON for Accept: application/json."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        page = http.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["vary"] == "Accept"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        for target in ("console", "docs", "openapi.json", "healthz", "readyz", "metrics"):
            assert f'href="{target}"' in page.text, target
            assert http.get(f"/{target}").status_code == 200, target

        answer = http.get("/", headers={"Accept": "application/json"})
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        body = answer.json()
        assert body["name"] == "tidings"
        assert body["version"] == tidings.__version__
        assert body["links"] == {
            "console": "/console",
            "docs": "/docs",
            "openapi": "/openapi.json",
            "healthz": "/healthz",
            "readyz": "/readyz",
            "metrics": "/metrics",
        }
        # JSON ranked above HTML wins; HTML ranked above JSON wins.
        assert http.get("/", headers={"Accept": "text/html;q=0.5, application/json"}).json()
        ranked = http.get("/", headers={"Accept": "application/json;q=0.1, text/html"})
        assert ranked.headers["content-type"].startswith("text/html")


@pytest.mark.timeout(30)
def test_under_require_auth_the_index_and_the_api_page_stay_public(
    tidings_server: ServerFactory,
) -> None:
    """A locked-down server still shows where its documentation is and renders it: the
    page's own files are public like the OpenAPI document; the API itself is not."""
    srv = tidings_server(args=["--require-auth"])
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for path in ("/", "/docs", "/docs/docs-init.js", "/docs/swagger-ui.css", "/openapi.json"):
            assert http.get(path).status_code == 200, path
        assert http.get("/metrics").status_code == 401
        assert http.get("/v1/channels").status_code == 401


@pytest.mark.timeout(30)
def test_docs_serves_its_files_with_their_types_a_csp_and_caching(
    tidings_server: ServerFactory,
) -> None:
    """/docs has a CSP of 'self' only and no inline script; each file it loads has its
    media type, an ETag (304 when it matches) and, asked for with its version, a year of
    caching; an unknown file is a 404 JSON error."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        page = http.get("/docs")
        assert page.status_code == 200, page.text
        assert page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"] == PAGE_CSP
        assert "<script>" not in page.text  # every script is a file (the CSP allows no other)
        urls = re.findall(r'(?:src|href)="(docs/[^"]+)"', page.text)
        assert {urlsplit(u).path.removeprefix("docs/") for u in urls} == set(ASSET_TYPES)
        for url in urls:
            name = urlsplit(url).path.removeprefix("docs/")
            r = http.get(f"/{url}")
            assert r.status_code == 200, (url, r.text[:200])
            assert r.headers["content-type"] == ASSET_TYPES[name]
            assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
            assert r.headers["x-content-type-options"] == "nosniff"
            etag = r.headers["etag"]
            again = http.get(f"/{url}", headers={"If-None-Match": etag})
            assert again.status_code == 304
            assert again.content == b""
            unversioned = http.get(f"/docs/{name}")
            assert unversioned.headers["cache-control"] == "no-cache"
            assert unversioned.headers["etag"] == etag
            assert unversioned.content == r.content
        assert b"SwaggerUIBundle" in http.get("/docs/docs-init.js").content
        missing = http.get("/docs/index.html")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"


@pytest.mark.timeout(30)
def test_docs_without_its_built_files_answers_503_saying_to_run_make_assets(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """A tidings whose package lacks the page's files (a clone where `make assets` has not
    run) serves everything else, and /docs answers a 503 JSON error, not a stack trace."""
    copy = tmp_path / "src"
    shutil.copytree(
        Path(tidings.__file__).parent,
        copy / "tidings",
        ignore=shutil.ignore_patterns("assets", "__pycache__"),
    )
    srv = tidings_server(env={"PYTHONPATH": str(copy)})
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for path in ("/docs", "/docs/swagger-ui-bundle.js"):
            r = http.get(path)
            assert r.status_code == 503, (path, r.text)
            assert r.headers["content-type"] == "application/json"
            error = r.json()["error"]
            assert error["code"] == "assets_missing"
            assert "make assets" in error["message"]
        assert http.get("/openapi.json").status_code == 200
        assert http.get("/", headers={"Accept": "application/json"}).status_code == 200
    assert "Traceback" not in srv.log()


@pytest.mark.timeout(90)
def test_a_browser_renders_the_api_and_tries_an_operation_without_leaving_the_origin(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """Chromium loads /docs with no console error (a CSP violation would be one), every
    request it makes goes to the server's own origin, the operations are listed, and
    "Try it out" → Execute on GET /healthz shows the 200 answer in the page."""
    srv = tidings_server()
    origin = f"{urlsplit(srv.url).scheme}://{urlsplit(srv.url).netloc}"
    requests: list[str] = []
    elsewhere: list[str] = []
    errors: list[str] = []

    def record(request: Request) -> None:
        requests.append(request.url)

    def gate(route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if f"{parts.scheme}://{parts.netloc}" == origin:
            route.continue_()
        else:
            elsewhere.append(url)
            route.abort("blockedbyclient")

    def console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            context = browser.new_context()
            context.route("**/*", gate)
            page = context.new_page()
            page.on("request", record)
            page.on("console", console)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{srv.url}/docs", wait_until="load")
            page.wait_for_selector(".opblock", timeout=20_000)
            listed = page.locator(".opblock-summary-path").all_inner_texts()
            paths = {p.replace("\u200b", "").strip() for p in listed}
            for path in ("/v1/channels/{channel}/messages", "/v1/jobs", "/healthz", "/metrics"):
                assert path in paths, sorted(paths)

            healthz = page.locator(".opblock-get").filter(
                has=page.locator('.opblock-summary-path[data-path="/healthz"]')
            )
            healthz.locator(".opblock-summary").first.click()
            healthz.locator("button.try-out__btn").click()
            healthz.locator("button.execute").click()
            status = healthz.locator(".live-responses-table tbody .response-col_status").first
            status.wait_for(timeout=10_000)
            assert status.inner_text().strip().startswith("200")
            assert '"status": "ok"' in healthz.locator(".live-responses-table").inner_text()
            page.screenshot(path=str(tmp_path / "docs.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "docs.png").stat().st_size > 0
    assert elsewhere == [], elsewhere
    assert errors == [], errors
    assert f"{srv.url}/openapi.json" in requests
    assert f"{srv.url}/healthz" in requests  # the "Try it out" request itself
    assert all(u.startswith(f"{origin}/") for u in requests), requests
