"""The OpenAPI document describes every route the app serves."""

from __future__ import annotations

from starlette.routing import Route

from tidings.app import create_app
from tidings.openapi import openapi_document
from tidings.settings import Settings


def test_every_route_is_documented():
    app = create_app(Settings(store="memory://"))
    paths = openapi_document()["paths"]
    missing = []
    for route in app.starlette.routes:
        assert isinstance(route, Route)
        if route.path in ("/openapi.json", "/docs"):
            continue
        for method in route.methods or ():
            if method == "HEAD":
                continue
            if method.lower() not in paths.get(route.path, {}):
                missing.append(f"{method} {route.path}")
    assert missing == []
    # The raw-ASGI streams are documented too.
    for stream in ("/v1/channels/{channel}/events", "/v1/channels/{channel}/ws", "/v1/events",
                   "/v1/jobs/{job_id}/events", "/v1/jobs/{job_id}/ws"):  # fmt: skip
        assert "get" in paths[stream]
