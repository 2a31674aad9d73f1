"""The operational endpoints: `/`, `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`,
the JavaScript client's files under `/client/`, and the console at `/console`.

`/healthz` says the process answers; `/readyz` that it has started, is not draining and
reaches its store (what a load balancer should route by); `/metrics` is the Prometheus
exposition, for admins; `/openapi.json` describes the API and `/docs` renders it with
Swagger UI; `/` points to all of them.

The `/docs` page's files (Swagger UI, pinned in web/package-lock.json, and our init script)
are package data under `assets/docs/`, copied there by `make assets`: the page asks nothing
of any other host (its Content-Security-Policy allows only this origin). Without them the
page answers 503 saying how to build them.

`/client/tidings.js` is the JavaScript client (clients/js, built by `make client` into
`assets/client/`), so a page imports it from the server it talks to without npm;
`/client/tidings.d.ts` its types. Both are public and answered with an ETag and
`Cache-Control: no-cache`: a browser revalidates and picks up a new version at once.

`/console` is the console (console/, built by `make console` into `assets/console/`): its
page, whose modules and stylesheet are `/console/{asset}` and whose client is
`/client/tidings.js`. Public like the client (the page asks for a login itself), answered
with an ETag and `no-cache`, the page under a Content-Security-Policy that allows nothing
but this origin's scripts, styles and connections: no inline script or style, no other
host. The files are read again when `index.html` changes (`make console` while the server
runs); without them `/console` answers 503 saying how to build them.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import logging
from pathlib import Path
from typing import NamedTuple

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tidings._version import __version__
from tidings.protocol.errors import AssetsMissing, NotFound, TidingsError
from tidings.server.http.common import json_response, require_admin
from tidings.server.lifecycle import Lifecycle
from tidings.server.metrics import Metrics
from tidings.server.openapi import openapi_document
from tidings.server.settings import Settings
from tidings.server.stores.base import Store

__all__ = ["CLIENT_ASSETS", "CONSOLE_ASSETS", "CONSOLE_CSP", "DOCS_ASSETS", "DOCS_CSP", "Ops"]

log = logging.getLogger("tidings.server")

DOCS_ASSETS = Path(__file__).with_name("assets") / "docs"
# The files the page loads, by the name it asks for, with their media types.
_DOCS_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "docs-init.js": "text/javascript; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
CLIENT_ASSETS = Path(__file__).with_name("assets") / "client"
# The JavaScript client's files, by name, with their media types.
_CLIENT_FILES = {
    "tidings.js": "text/javascript; charset=utf-8",
    "tidings.d.ts": "application/typescript; charset=utf-8",
}
CONSOLE_ASSETS = Path(__file__).with_name("assets") / "console"
# The console's files are served by suffix: its ES modules and its stylesheet.
_CONSOLE_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The console page: scripts, styles and connections (fetch, WebSocket) of this origin only;
# no inline script or style, no plugin, no frame, no form posting elsewhere. Its icon is a
# data: URL, which makes no request.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Only this origin, for everything; Swagger UI's icons are data: images in its CSS, which
# make no request.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
# The links page has no script and no style of its own.
_ROOT_CSP = "default-src 'none'; img-src 'self'; base-uri 'none'; frame-ancestors 'none'"
# An asset asked for with its content's version never changes: cached for a year.
_IMMUTABLE = "public, max-age=31536000, immutable"
# Reading the job counts for /metrics: past this the scrape goes on without them.
_JOB_COUNTS_TIMEOUT = 5.0


class _Asset(NamedTuple):
    body: bytes
    media_type: str
    version: str  # a digest of the body: the `?v=` of its URL and its ETag


class _DocsPage(NamedTuple):
    html: str
    assets: dict[str, _Asset]


def _load_docs(directory: Path) -> _DocsPage | None:
    """The page and its files, or None when any file is missing (not built)."""
    assets = {}
    for name, media_type in _DOCS_FILES.items():
        try:
            body = (directory / name).read_bytes()
        except FileNotFoundError:
            return None
        assets[name] = _Asset(body, media_type, hashlib.sha256(body).hexdigest()[:16])

    # Relative URLs: /docs asks for docs/…, so a proxy's path prefix is kept.
    def url(name: str) -> str:
        return f"docs/{name}?v={assets[name].version}"

    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>tidings {html.escape(__version__)} API</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" type="image/png" href="{url("favicon-32x32.png")}">'
        f'<link rel="stylesheet" href="{url("swagger-ui.css")}">'
        "</head><body><noscript>This page needs JavaScript. The API as JSON: "
        '<a href="openapi.json">/openapi.json</a></noscript><div id="swagger-ui"></div>'
        f'<script src="{url("swagger-ui-bundle.js")}"></script>'
        f'<script src="{url("docs-init.js")}"></script>'
        "</body></html>\n"
    )
    return _DocsPage(page, assets)


class _Console(NamedTuple):
    page: _Asset
    assets: dict[str, _Asset]  # by file name: the modules and the stylesheet
    stamp: int  # index.html's mtime (ns) when read


def _digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()[:16]


def _load_console(directory: Path, stamp: int) -> _Console | None:
    """The console's page and files, or None when the page is missing (not built)."""
    try:
        page = (directory / "index.html").read_bytes()
        assets = {}
        for path in sorted(directory.iterdir()):
            media_type = _CONSOLE_TYPES.get(path.suffix)
            if media_type is not None and path.is_file():
                body = path.read_bytes()
                assets[path.name] = _Asset(body, media_type, _digest(body))
    except FileNotFoundError:  # not built, or being rebuilt right now
        return None
    return _Console(_Asset(page, "text/html; charset=utf-8", _digest(page)), assets, stamp)


def _console_missing() -> AssetsMissing:
    return AssetsMissing(
        "the console's files are not built: run `make console` (or `make assets`) in the "
        "tidings source tree (it needs node and npm), or install a tidings wheel built after it"
    )


def _assets_missing() -> AssetsMissing:
    return AssetsMissing(
        "the /docs page's files are not built: run `make assets` in the tidings source tree "
        "(it needs node and npm), or install a tidings wheel built after it; /openapi.json "
        "describes the API meanwhile"
    )


def _client_missing(name: str) -> AssetsMissing:
    return AssetsMissing(
        f"the JavaScript client ({name}) is not built: run `make client` in the tidings "
        "source tree (it needs node and npm), or install a tidings wheel built after it"
    )


def _etag_matches(request: Request, etag: str) -> bool:
    matches = request.headers.get("if-none-match", "")
    return etag in (t.strip() for t in matches.split(",")) or matches.strip() == "*"


def _prefers_json(accept: str) -> bool:
    """True when `accept` ranks application/json above text/html (or names only it)."""
    weights = {"application/json": -1.0, "text/html": -1.0}
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media.lower() not in weights:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        weights[media.lower()] = max(weights[media.lower()], q)
    return weights["application/json"] > max(weights["text/html"], 0.0)


class Ops:
    """The operational endpoints of one server.

    Args:
        settings: the store URL, whose scheme `/readyz` names.
        store: pinged by `/readyz`; its job counts go to `/metrics`.
        lifecycle: whether the server is ready (started, not draining).
        metrics: what `/metrics` renders.
        docs_assets: where the `/docs` page's files are.
        client_assets: where the JavaScript client's files are.
        console_assets: where the console's files are.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        lifecycle: Lifecycle,
        metrics: Metrics,
        docs_assets: Path = DOCS_ASSETS,
        client_assets: Path = CLIENT_ASSETS,
        console_assets: Path = CONSOLE_ASSETS,
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.store_kind = settings.store.split("://")[0]
        self.docs_assets = docs_assets
        self._docs: _DocsPage | None = None
        self.client_assets = client_assets
        self._client: dict[str, _Asset] = {}
        self.console_assets = console_assets
        self._console: _Console | None = None
        self.routes = [
            Route("/", self.root, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.render_metrics, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/docs", self.docs, methods=["GET"]),
            Route("/docs/{asset}", self.docs_asset, methods=["GET"]),
            Route("/client/{asset}", self.client_asset, methods=["GET"]),
            Route("/console", self.console, methods=["GET"]),
            Route("/console/{asset}", self.console_asset, methods=["GET"]),
        ]

    async def root(self, request: Request) -> Response:
        links = {
            "console": "/console",
            "docs": "/docs",
            "openapi": "/openapi.json",
            "healthz": "/healthz",
            "readyz": "/readyz",
            "metrics": "/metrics",
        }
        if _prefers_json(request.headers.get("accept", "")):
            response = json_response({"name": "tidings", "version": __version__, "links": links})
        else:
            what = {
                "console": "the console: channels, jobs, workers, the server and its users",
                "docs": "the API, to read and try",
                "openapi": "the API as OpenAPI 3.1",
                "healthz": "liveness",
                "readyz": "readiness (the store answers)",
                "metrics": "Prometheus metrics (admins)",
            }
            items = "".join(
                f'<li><a href="{path[1:] or "."}">{path}</a>: {html.escape(what[key])}</li>'
                for key, path in links.items()
            )
            response = HTMLResponse(
                '<!doctype html>\n<html lang="en"><meta charset="utf-8">'
                f"<title>tidings {html.escape(__version__)}</title>"
                f"<h1>tidings {html.escape(__version__)}</h1><ul>{items}</ul></html>\n"
            )
            response.headers["content-security-policy"] = _ROOT_CSP
        response.headers["vary"] = "Accept"
        return response

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if not self.lifecycle.ready:
            return json_response({"status": "not ready", "reason": "starting or draining"}, 503)
        try:
            await self.store.ping()
        except TidingsError as exc:
            return json_response({"status": "not ready", "reason": exc.message}, 503)
        return json_response({"status": "ready", "store": self.store_kind})

    async def render_metrics(self, request: Request) -> Response:
        require_admin(request)
        try:
            counts = await asyncio.wait_for(
                self.store.jobs.queue_counts(), timeout=_JOB_COUNTS_TIMEOUT
            )
        except (TidingsError, TimeoutError) as exc:
            # The other metrics still help while the store does not answer (/readyz says so).
            log.warning("/metrics without job counts: the store did not answer (%s)", exc)
            counts = None
        return Response(
            self.metrics.render_with_jobs(counts), media_type="text/plain; version=0.0.4"
        )

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())

    def _docs_page(self) -> _DocsPage | None:
        # Read once; while missing, looked for again at each request (`make assets` may
        # run while the server does).
        if self._docs is None:
            self._docs = _load_docs(self.docs_assets)
        return self._docs

    async def docs(self, request: Request) -> Response:
        page = self._docs_page()
        if page is None:
            raise _assets_missing()
        response = HTMLResponse(page.html)
        response.headers["content-security-policy"] = DOCS_CSP
        response.headers["cache-control"] = "no-cache"
        response.headers["x-content-type-options"] = "nosniff"
        return response

    async def docs_asset(self, request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in _DOCS_FILES:
            raise NotFound(f"no file {name[:100]!r} under /docs: the page is /docs")
        page = self._docs_page()
        if page is None:
            raise _assets_missing()
        asset = page.assets[name]
        etag = f'"{asset.version}"'
        fresh = request.query_params.get("v") == asset.version
        headers = {
            "etag": etag,
            "cache-control": _IMMUTABLE if fresh else "no-cache",
            "x-content-type-options": "nosniff",
        }
        if _etag_matches(request, etag):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    def _client_file(self, name: str) -> _Asset | None:
        # Read once; while missing, looked for again at each request (`make client` may
        # run while the server does).
        asset = self._client.get(name)
        if asset is None:
            try:
                body = (self.client_assets / name).read_bytes()
            except FileNotFoundError:
                return None
            version = hashlib.sha256(body).hexdigest()[:16]
            asset = self._client[name] = _Asset(body, _CLIENT_FILES[name], version)
        return asset

    async def client_asset(self, request: Request) -> Response:
        name = request.path_params["asset"]
        if name not in _CLIENT_FILES:
            raise NotFound(
                f"no file {name[:100]!r} under /client: the JavaScript client is "
                "/client/tidings.js, its types /client/tidings.d.ts"
            )
        asset = self._client_file(name)
        if asset is None:
            raise _client_missing(name)
        # Public code: a page of another origin may import it (its calls to the API still
        # need --cors-origins).
        return self._revalidated(request, asset, {"access-control-allow-origin": "*"})

    def _console_site(self) -> _Console | None:
        # Read again whenever index.html changes (`make console` writes it with the rest);
        # looked for at each request while missing.
        try:
            stamp = (self.console_assets / "index.html").stat().st_mtime_ns
        except FileNotFoundError:
            self._console = None
            return None
        if self._console is None or self._console.stamp != stamp:
            self._console = _load_console(self.console_assets, stamp)
        return self._console

    @staticmethod
    def _revalidated(request: Request, asset: _Asset, headers: dict[str, str]) -> Response:
        """`asset` with its ETag and `no-cache` (and `headers`); 304 when the browser has it.
        Revalidated at each use (a 304 while unchanged), so a new build is seen at once."""
        etag = f'"{asset.version}"'
        headers = {
            "etag": etag,
            "cache-control": "no-cache",
            "x-content-type-options": "nosniff",
            **headers,
        }
        if _etag_matches(request, etag):
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=asset.media_type, headers=headers)

    async def console(self, request: Request) -> Response:
        site = self._console_site()
        if site is None:
            raise _console_missing()
        return self._revalidated(
            request,
            site.page,
            {"content-security-policy": CONSOLE_CSP, "referrer-policy": "same-origin"},
        )

    async def console_asset(self, request: Request) -> Response:
        name: str = request.path_params["asset"]
        if Path(name).suffix not in _CONSOLE_TYPES:
            raise NotFound(f"no file {name[:100]!r} under /console: the console is /console")
        site = self._console_site()
        if site is None:
            raise _console_missing()
        asset = site.assets.get(name)
        if asset is None:
            raise NotFound(f"no file {name[:100]!r} under /console: the console is /console")
        return self._revalidated(request, asset, {})
