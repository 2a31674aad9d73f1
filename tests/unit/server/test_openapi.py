"""The OpenAPI document describes every route the app serves."""

from __future__ import annotations

import copy

import jsonschema_rs
import pytest
import schemathesis
from starlette.routing import Route

from tidings.server.app import create_app
from tidings.server.auth import COOKIE
from tidings.server.openapi import openapi_document
from tidings.server.settings import Settings


def test_every_route_is_documented():
    app = create_app(Settings(store="memory://"))
    paths = openapi_document()["paths"]
    missing = []
    for route in app.starlette.routes:
        assert isinstance(route, Route)
        if route.path in (
            "/",
            "/openapi.json",
            "/docs",
            "/docs/{asset}",
            "/client/{asset}",
            "/console",
            "/console/{asset}",
        ):
            continue  # the pages that describe the API, not the API
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


def test_every_operation_names_its_error_answers_and_every_limit_is_stated():
    """Connection-level answers on every operation, 401/403 on every non-public one, and
    the limits schemathesis found missing (limit, wait, a job's type) as constraints."""
    doc = openapi_document()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            answers = set(op["responses"])
            assert {"408", "414", "429", "431", "503"} <= answers, (method, path)
            if "101" not in answers and path not in ("/healthz", "/readyz", "/v1/auth/login"):
                assert {"401", "403"} <= answers, (method, path)
    poll = doc["paths"]["/v1/channels/{channel}/messages"]["get"]["parameters"]
    limit = next(p for p in poll if p["name"] == "limit")["schema"]
    assert (limit["minimum"], limit["maximum"]) == (1, 1000)
    wait = next(p for p in poll if p["name"] == "wait")["schema"]
    assert wait["minimum"] == 0
    submit = doc["paths"]["/v1/jobs"]["post"]
    job_type = submit["requestBody"]["content"]["application/json"]["schema"]["properties"]["type"]
    assert job_type["pattern"] == "^[A-Za-z0-9._:-]{1,200}$"
    assert {"400", "413", "422"} <= set(submit["responses"])
    login = doc["paths"]["/v1/auth/login"]["post"]["responses"]
    assert {"400", "401", "415", "422", "429", "503"} <= set(login)


def test_answers_of_the_wire_shapes_are_the_protocol_structs_schemas():
    """The job, page, publish, lease and error answers point at the schemas msgspec makes
    of tidings.protocol's Structs, which list every field the server sends."""
    doc = openapi_document()
    schemas = doc["components"]["schemas"]
    paths = doc["paths"]

    def answer(path: str, method: str, status: str) -> dict:
        return paths[path][method]["responses"][status]["content"]["application/json"]["schema"]

    assert answer("/v1/jobs/{job_id}", "get", "200") == {"$ref": "#/components/schemas/JobWire"}
    assert answer("/v1/channels/{channel}/messages", "get", "200")["$ref"].endswith("/PageWire")
    assert answer("/v1/channels/{channel}/messages", "post", "201")["$ref"].endswith(
        "/PublishAckWire"
    )
    assert answer("/v1/workers/lease", "post", "200")["$ref"].endswith("/LeaseAnswerWire")
    assert doc["components"]["responses"]["E404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    job = schemas["JobWire"]
    assert "lease_token" not in job["properties"]
    assert {"id", "status", "created_at", "links"} <= set(job["required"])
    assert "payload" not in job["required"]  # job events leave it out
    assert job["properties"]["created_at"] == {"type": "string", "format": "date-time"}
    assert set(schemas["LeasedJobWire"]["required"]) >= {"id", "lease_token"}
    assert schemas["JobLinks"]["required"] == ["self", "events", "ws", "channel"]
    for name in ("MessageWire", "ResetWire", "ErrorDetail", "OutcomeWire"):
        assert name in schemas


PUBLIC = {("/healthz", "get"), ("/readyz", "get"), ("/v1/auth/login", "post")}


def test_the_document_is_valid_openapi_3_1_and_a_broken_one_is_caught():
    doc = openapi_document()
    schemathesis.openapi.from_dict(doc).validate()
    broken = copy.deepcopy(doc)
    broken["components"]["securitySchemes"]["bearer"]["type"] = "password"
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()


def test_operations_name_how_to_authenticate_bearer_tokens_and_the_session_cookie():
    """Bearer tokens (sessions, API tokens, JWTs) and the login cookie as security schemes;
    every operation but the public ones takes them, or none when auth is not required."""
    doc = openapi_document()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearer"]["type"] == "http"
    assert schemes["bearer"]["scheme"] == "bearer"
    for kind in ("tds_", "tdt_", "JWT"):
        assert kind in schemes["bearer"]["description"]
    assert schemes["session_cookie"] == {
        "type": "apiKey",
        "in": "cookie",
        "name": COOKIE,
        "description": schemes["session_cookie"]["description"],
    }
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if (path, method) in PUBLIC:
                assert "security" not in op, (method, path)
            else:
                assert op["security"] == [{"bearer": []}, {"session_cookie": []}, {}], path


def test_times_are_rfc_3339_and_no_cursor_means_from_now():
    doc = openapi_document()
    info = doc["paths"]["/v1/channels/{channel}"]["get"]["responses"]["200"]
    created = info["content"]["application/json"]["schema"]["properties"]["created"]
    assert created == {"type": "string", "format": "date-time"}
    for path in ("/v1/channels/{channel}/messages", "/v1/channels/{channel}/events",
                 "/v1/channels/{channel}/ws"):  # fmt: skip
        after = next(p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == "after")
        assert "absent or empty: from now" in after["description"], path
        assert "0: from the oldest kept" in after["description"], path
    logout = doc["paths"]["/v1/auth/logout"]["post"]
    assert "400" in logout["responses"]
    assert "API token" in logout["summary"]
