"""Dispatch for the API's request/response endpoints, ahead of Starlette's router.

Starlette's router tries each route's regex in turn and wraps every request in two
exception middlewares, a large share of the cost of a small request
(docs/decisions/0009-request-dispatch.md). This table finds an endpoint by method and
path — a dict for fixed paths, a few regexes per method for the rest — and answers with
the same handlers, Request and Response classes.

It also knows, for every path the API serves (the streams included), which methods that
path accepts: what an OPTIONS answer and a 405's `Allow` header list (RFC 9110 §9.3.7,
§15.5.6). Only unknown paths go on to Starlette, which answers 404.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NamedTuple

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, compile_path

__all__ = ["STREAMS", "Allowed", "Endpoint", "Router"]

Endpoint = Callable[[Request], Awaitable[Response]]
Match = tuple[Endpoint, dict[str, Any], str]

# The streams, served by tidings.server.transports before this table is asked: (path, WebSocket).
# They answer GET only — an SSE GET or a WebSocket handshake; HEAD is not served, since an
# event stream has no end whose headers a HEAD could describe.
STREAMS: tuple[tuple[str, bool], ...] = (
    ("/v1/channels/{channel}/events", False),
    ("/v1/channels/{channel}/ws", True),
    ("/v1/events", False),
    ("/v1/jobs/{job_id}/events", False),
    ("/v1/jobs/{job_id}/ws", True),
)

# The order methods are listed in an Allow header.
_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class Allowed(NamedTuple):
    """What a known path accepts: its template, its methods and their Allow header."""

    template: str
    methods: frozenset[str]
    allow: str
    websocket: bool


def _allowed(template: str, methods: Iterable[str], websocket: bool) -> Allowed:
    # A Route's methods already hold HEAD beside GET (its GET endpoint answers HEAD).
    every = {*methods, "OPTIONS"}
    ordered = sorted(every, key=lambda m: (_ORDER.index(m) if m in _ORDER else len(_ORDER), m))
    return Allowed(template, frozenset(every), ", ".join(ordered), websocket)


class Router:
    """Routes by (method, path) to `(endpoint, path_params, path_template)`.

    Args:
        routes: the request/response endpoints (the Route list Starlette also gets).
        streams: `(path template, is a WebSocket)` of the endpoints served before this
            table, so that their paths answer OPTIONS and 405 like any other.
    """

    def __init__(
        self, routes: Iterable[Route], streams: Iterable[tuple[str, bool]] = STREAMS
    ) -> None:
        self._fixed: dict[tuple[str, str], tuple[Endpoint, str]] = {}
        self._patterns: dict[str, list[Route]] = {}
        methods: dict[str, set[str]] = {}
        websockets: set[str] = set()
        for route in routes:
            methods.setdefault(route.path, set()).update(route.methods or ())
            for method in route.methods or ():
                if method == "HEAD":
                    continue
                if route.param_convertors:
                    self._patterns.setdefault(method, []).append(route)
                else:
                    self._fixed[(method, route.path)] = (route.endpoint, route.path)
        for path, websocket in streams:
            methods.setdefault(path, set()).add("GET")
            if websocket:
                websockets.add(path)
        self._allowed_fixed: dict[str, Allowed] = {}
        self._allowed_patterns: list[tuple[re.Pattern[str], Allowed]] = []
        # `OPTIONS *` asks about the server as a whole (RFC 9110 §9.3.7): every method.
        self._server = _allowed("*", set().union(*methods.values()), websocket=False)
        for path, accepted in methods.items():
            allowed = _allowed(path, accepted, path in websockets)
            regex, _, convertors = compile_path(path)
            if convertors:
                self._allowed_patterns.append((regex, allowed))
            else:
                self._allowed_fixed[path] = allowed

    def match(self, method: str, path: str) -> Match | None:
        """The endpoint for this request, or None when none serves it. A fixed path
        shadows the templates it also fits (`/v1/jobs/batch` is no `/v1/jobs/{job_id}`):
        a method it does not accept is not served there."""
        fixed = self._fixed.get((method, path))
        if fixed is not None:
            return fixed[0], {}, fixed[1]
        if path in self._allowed_fixed:
            return None
        for route in self._patterns.get(method, ()):
            m = route.path_regex.match(path)
            if m is not None:
                params = {
                    key: route.param_convertors[key].convert(value)
                    for key, value in m.groupdict().items()
                }
                return route.endpoint, params, route.path
        return None

    def allowed(self, path: str) -> Allowed | None:
        """The methods `path` accepts (over every route whose template it fits), or None
        for a path the API does not serve; for `*`, every method the server serves."""
        if path == "*":
            return self._server
        fixed = self._allowed_fixed.get(path)
        if fixed is not None:
            return fixed  # it shadows the templates it fits (`match`)
        found = [a for regex, a in self._allowed_patterns if regex.match(path)]
        if len(found) <= 1:
            return found[0] if found else None
        first = found[0]
        every = frozenset().union(*(a.methods for a in found))
        return _allowed(first.template, every, any(a.websocket for a in found))
