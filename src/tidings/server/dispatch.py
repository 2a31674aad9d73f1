"""The ASGI entry: which road each request takes.

* Streams (`GET /v1/channels/{c}/events`, `GET /v1/jobs/{id}/events`, `GET /v1/events`,
  WebSocket `/v1/channels/{c}/ws` and `/v1/jobs/{id}/ws`) go straight to
  tidings.server.streams with the server's own `send`, so the hub's fan-out writes
  through no middleware wrapper.
* Request/response endpoints are found by tidings.server.http.router (a dict and a few
  regexes), pass the auth gate unless public, and are called with Starlette's Request;
  errors are mapped (tidings.server.http.errors) and latency recorded here.
* A known path asked with a method it does not serve is answered here: OPTIONS 204, or
  405, both with the path's whole `Allow` (426 for a plain GET on a WebSocket path).
* Whatever neither knows goes to Starlette: lifespan, and 404 answers.

Cross-origin browser requests (those with an Origin header) pass through Starlette's
CORS layer first when `--cors-origins` is set; every other request skips it.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tidings.protocol.errors import TidingsError
from tidings.server.auth import AuthService
from tidings.server.http.errors import (
    CLOSE_POLICY,
    close_socket,
    error_response,
    unexpected_response,
    unserved_method,
)
from tidings.server.http.router import Allowed, Endpoint, Router
from tidings.server.metrics import Metrics
from tidings.server.policy import PUBLIC_PATHS, AccessPolicy
from tidings.server.streams import STREAM_PATH, Streams

__all__ = ["Dispatcher"]


async def _no_socket(receive: Receive, send: Send, path: str) -> None:
    """A WebSocket asked for at a path that has none: refused once it connects."""
    if (await receive())["type"] == "websocket.connect":
        await close_socket(send, CLOSE_POLICY, f"no socket at {path}")


class Dispatcher:
    """The server as one ASGI callable, once its parts are built.

    Args:
        router: the request/response endpoints.
        streams: opens and serves the streams.
        auth: who a request acts as.
        policy: the host/origin gate.
        metrics: where answered requests' latency goes.
        starlette: the Starlette app handlers see as `request.app` (its `state` holds the
            services); it answers lifespan and unknown paths, through `fallback`.
        fallback: `starlette` wrapped in the metrics middleware.
        origins: the CORS origins (`--cors-origins`); none: no CORS layer.
    """

    def __init__(
        self,
        router: Router,
        streams: Streams,
        auth: AuthService,
        policy: AccessPolicy,
        metrics: Metrics,
        starlette: ASGIApp,
        fallback: ASGIApp,
        origins: tuple[str, ...],
    ) -> None:
        self.router = router
        self.streams = streams
        self.auth = auth
        self.policy = policy
        self.metrics = metrics
        self.starlette = starlette
        self.fallback = fallback
        self._cors: CORSMiddleware | None = None
        if origins:
            self._cors = CORSMiddleware(
                self.route,
                allow_origins=origins,
                # Never "*" with credentials: with a wildcard, no cookies and no auth headers.
                allow_credentials="*" not in origins,
                allow_methods=["GET", "POST", "PUT", "DELETE"],
                allow_headers=[
                    "authorization",
                    "content-type",
                    "idempotency-key",
                    "last-event-id",
                    "prefer",
                ],
                expose_headers=["location", "retry-after", "preference-applied"],
                max_age=600,
            )

    # __call__ and route pick the road and return its coroutine rather than awaiting it:
    # an open stream then holds no frame of theirs (two coroutine frames, ~580 bytes per
    # idle subscriber). The server is told this is an ASGI 3 app (runner.py), since
    # __call__ is not itself a coroutine function.

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if self._cors is not None and scope["type"] == "http":
            # Only browsers' cross-origin requests go through the CORS layer.
            for name, _ in scope["headers"]:
                if name == b"origin":
                    return self._cors(scope, receive, send)
        return self.route(scope, receive, send)

    def route(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Dispatch one ASGI connection (no CORS layer)."""
        kind = scope["type"]
        if kind in ("http", "websocket"):
            path: str = scope["path"]
            if kind == "websocket" or scope["method"] == "GET":
                if path == "/v1/events" and kind == "http":
                    return self.streams.serve(scope, receive, send, None, False)
                m = STREAM_PATH.fullmatch(path)
                if m is not None and (m.group(3) == "ws") == (kind == "websocket"):
                    return self.streams.serve(
                        scope, receive, send, m.group(2), m.group(1) == "jobs"
                    )
            if kind == "websocket":
                return _no_socket(receive, send, path)
            # HEAD is answered by the GET endpoint (uvicorn sends no body), with the same
            # authentication: it must not reach a handler through Starlette's fallback.
            method = "GET" if scope["method"] == "HEAD" else scope["method"]
            hit = self.router.match(method, path)
            if hit is not None:
                return self._answer(scope, receive, send, *hit)
            allowed = self.router.allowed(path)
            if allowed is not None and (path != "*" or method == "OPTIONS"):
                return self._unserved(scope, send, allowed)
        # Lifespan, and paths the API does not serve (Starlette answers 404).
        return self.fallback(scope, receive, send)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        endpoint: Endpoint,
        params: dict[str, Any],
        template: str,
    ) -> None:
        """One request/response endpoint, behind the auth gate unless public."""
        start = time.perf_counter()
        scope["app"] = self.starlette
        scope["path_params"] = params
        # The answer's own `send` (through the CORS layer when there is one), for a long
        # poll that the hub answers by itself (tidings.server.hub.DirectPoll). Removed
        # when the answer is done: scope → send → uvicorn's cycle → scope is a reference
        # cycle the collector would otherwise have to find for every request.
        scope["tidings.send"] = send
        request = Request(scope, receive)
        try:
            if template not in PUBLIC_PATHS:
                principal = await self.auth.principal(scope["headers"])
                self.policy.admit(scope, principal)
                scope["tidings.principal"] = principal
            response = await endpoint(request)
        except TidingsError as exc:
            response = error_response(exc)
        except ClientDisconnect:
            scope.pop("tidings.send", None)
            return  # it left while sending its body: there is nobody to answer
        except Exception as exc:
            response = unexpected_response(request.method, request.url.path, exc)
        try:
            await response(scope, receive, send)
        finally:
            scope.pop("tidings.send", None)
            self.metrics.observe(
                scope["method"], template, response.status_code, time.perf_counter() - start
            )

    async def _unserved(self, scope: Scope, send: Send, allowed: Allowed) -> None:
        """A known path asked with a method no endpoint serves there."""
        start = time.perf_counter()
        method: str = scope["method"]
        status, headers, body = unserved_method(
            method, scope["path"], allowed.allow, allowed.websocket
        )
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.observe(method, allowed.template, status, time.perf_counter() - start)
