"""The operational endpoints: `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, `/docs`.

`/healthz` says the process answers; `/readyz` that it has started, is not draining and
reaches its store (what a load balancer should route by); `/metrics` is the Prometheus
exposition, for admins; the last two describe the API.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tidings.protocol.errors import TidingsError
from tidings.server.http.common import json_response, require_admin
from tidings.server.lifecycle import Lifecycle
from tidings.server.metrics import Metrics
from tidings.server.openapi import DOCS_HTML, openapi_document
from tidings.server.settings import Settings
from tidings.server.stores.base import Store

__all__ = ["Ops"]


class Ops:
    """The operational endpoints of one server.

    Args:
        settings: the store URL, whose scheme `/readyz` names.
        store: pinged by `/readyz`.
        lifecycle: whether the server is ready (started, not draining).
        metrics: what `/metrics` renders.
    """

    def __init__(
        self, settings: Settings, store: Store, lifecycle: Lifecycle, metrics: Metrics
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.metrics = metrics
        self.store_kind = settings.store.split("://")[0]
        self.routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.render_metrics, methods=["GET"]),
            Route("/openapi.json", self.openapi, methods=["GET"]),
            Route("/docs", self.docs, methods=["GET"]),
        ]

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
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        return json_response(openapi_document())

    async def docs(self, request: Request) -> Response:
        return HTMLResponse(DOCS_HTML)
