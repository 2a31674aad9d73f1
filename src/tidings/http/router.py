"""Dispatch for the API's request/response endpoints, ahead of Starlette's router.

Starlette's router tries each route's regex in turn and wraps every request in two
exception middlewares; on a 30-byte publish that stack was half the server's time
(docs/decisions/0009-request-dispatch.md). This table finds an endpoint by method and
path — a dict for fixed paths, a few regexes per method for the rest — and answers with
the same handlers, Request and Response classes. Whatever it does not match (unknown
paths, wrong methods, HEAD) goes on to Starlette, which answers 404/405 as before.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["Endpoint", "Router"]

Endpoint = Callable[[Request], Awaitable[Response]]
Match = tuple[Endpoint, dict[str, Any], str]


class Router:
    """Routes by (method, path) to `(endpoint, path_params, path_template)`."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._fixed: dict[tuple[str, str], tuple[Endpoint, str]] = {}
        self._patterns: dict[str, list[Route]] = {}
        for route in routes:
            for method in route.methods or ():
                if method == "HEAD":
                    continue
                if route.param_convertors:
                    self._patterns.setdefault(method, []).append(route)
                else:
                    self._fixed[(method, route.path)] = (route.endpoint, route.path)

    def match(self, method: str, path: str) -> Match | None:
        """The endpoint for this request, or None to let Starlette answer it."""
        fixed = self._fixed.get((method, path))
        if fixed is not None:
            return fixed[0], {}, fixed[1]
        for route in self._patterns.get(method, ()):
            m = route.path_regex.match(path)
            if m is not None:
                params = {
                    key: route.param_convertors[key].convert(value)
                    for key, value in m.groupdict().items()
                }
                return route.endpoint, params, route.path
        return None
