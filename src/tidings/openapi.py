"""The OpenAPI document served at /openapi.json, and the /docs page that renders it."""

from __future__ import annotations

import html
from functools import cache
from typing import Any

from tidings import __version__

__all__ = ["DOCS_HTML", "openapi_document"]

_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        }
    },
}
_MESSAGE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "channel": {"type": "string"},
        "event": {"type": ["string", "null"]},
        "data": {},
        "time": {"type": "string", "format": "date-time"},
    },
    "required": ["id", "channel", "event", "data", "time"],
}
_JOB = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "type": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["queued", "running", "succeeded", "failed", "cancelled"],
        },
        "payload": {},
        "progress": {"type": ["number", "null"]},
        "message": {"type": ["string", "null"]},
        "result": {},
        "error": {},
        "attempt": {"type": "integer"},
        "max_attempts": {"type": "integer"},
    },
}
_JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
_CHANNEL = {
    "name": "channel",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,200}$"},
}


def _p(name: str) -> dict[str, Any]:
    """A string path parameter."""
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _q(name: str, kind: str, desc: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": kind},
        "description": desc,
    }


def _ok(
    desc: str, schema: dict[str, Any] | None = None, media: str = "application/json"
) -> dict[str, Any]:
    out: dict[str, Any] = {"description": desc}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def _err(*codes: int) -> dict[str, Any]:
    return {str(c): _ok("error", _ERROR) for c in codes}


_REPORT_ITEMS: dict[str, Any] = {
    "type": "array",
    "minItems": 1,
    "maxItems": 100,
    "items": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "lease_token": {"type": "string"},
            "result": {"description": "present: complete the job with it"},
            "error": {"description": "present: fail the attempt with it"},
            "retry": {"type": "boolean"},
        },
        "required": ["id", "lease_token"],
    },
}

# (path, method, summary, parameters, request body schema or None, responses)
_OPS: list[tuple[str, str, str, list[dict[str, Any]], dict[str, Any] | None, dict[str, Any]]] = [
    (
        "/v1/channels",
        "get",
        "List channels",
        [_q("prefix", "string", "name prefix"), _q("limit", "integer", "at most this many")],
        None,
        {"200": _ok("channels", {"type": "object"})},
    ),
    (
        "/v1/channels/{channel}",
        "get",
        "A channel's stats, last id and live subscribers by transport",
        [_CHANNEL],
        None,
        {"200": _ok("stats", {"type": "object"}), **_err(400, 404)},
    ),
    (
        "/v1/channels/{channel}",
        "put",
        'Set the channel\'s own retention ({"retention": {"max_messages", "max_age"} | null})',
        [_CHANNEL],
        {"type": "object", "properties": {"retention": {"type": ["object", "null"]}}},
        {"200": _ok("stats"), **_err(400, 422)},
    ),
    (
        "/v1/channels/{channel}",
        "delete",
        "Delete a channel, its history and its streams",
        [_CHANNEL],
        None,
        {"204": _ok("deleted"), **_err(400, 404)},
    ),
    (
        "/v1/channels/{channel}/messages",
        "post",
        'Publish. application/json body {"data": any, "event"?: str}; any other type: the raw body as text. Idempotency-Key header dedups.',
        [
            _CHANNEL,
            _q("event", "string", "event name for a raw (non-JSON) body"),
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            },
        ],
        {
            "type": "object",
            "properties": {"data": {}, "event": {"type": "string"}},
            "required": ["data"],
        },
        {
            "201": _ok(
                "durable",
                {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "channel": {"type": "string"},
                        "time": {"type": "string"},
                    },
                },
            ),
            **_err(400, 413, 422),
        },
    ),
    (
        "/v1/channels/{channel}/messages",
        "get",
        "Short poll; with wait=S a long poll (capped)",
        [
            _CHANNEL,
            _q("after", "string", "cursor: the last id you have; 0 = from the oldest retained"),
            _q("limit", "integer", "1-1000, default 100"),
            _q("wait", "number", "seconds to wait for a message"),
        ],
        None,
        {
            "200": _ok(
                "page",
                {
                    "type": "object",
                    "properties": {
                        "messages": {"type": "array", "items": _MESSAGE},
                        "next": {"type": "string"},
                        "reset": {"type": "boolean"},
                    },
                },
            ),
            **_err(400),
        },
    ),
    (
        "/v1/channels/{channel}/events",
        "get",
        "Server-Sent Events; resume with Last-Event-ID or after=",
        [
            _CHANNEL,
            _q("after", "string", "cursor"),
            {
                "name": "Last-Event-ID",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            },
        ],
        None,
        {"200": _ok("event stream", {"type": "string"}, "text/event-stream"), **_err(400)},
    ),
    (
        "/v1/channels/{channel}/ws",
        "get",
        'WebSocket: messages as JSON text frames; send {"data", "event"?, "ref"?} to publish',
        [_CHANNEL, _q("after", "string", "cursor")],
        None,
        {"101": _ok("switching protocols")},
    ),
    (
        "/v1/events",
        "get",
        "One SSE stream for several channels; resumable composite cursor",
        [
            _q("channel", "string", "repeat for each channel"),
            _q("after", "string", "composite cursor (an id: from this stream)"),
        ],
        None,
        {"200": _ok("event stream", {"type": "string"}, "text/event-stream"), **_err(400)},
    ),
    (
        "/v1/jobs",
        "post",
        "Submit a job; ?wait=S or Prefer: wait=S answers 200 with the finished job if it ends in time",
        [
            _q("wait", "number", "seconds to wait for the job to finish"),
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
            },
        ],
        {
            "type": "object",
            "properties": {
                "type": {"type": "string"},
                "payload": {},
                "max_attempts": {"type": "integer"},
                "timeout": {"type": "number"},
                "delay": {"type": "number"},
                "priority": {"type": "integer"},
            },
            "required": ["type"],
        },
        {
            "202": _ok("queued (Location: /v1/jobs/{id})", _JOB),
            "200": _ok("finished within wait", _JOB),
            **_err(400, 413, 422),
        },
    ),
    (
        "/v1/jobs",
        "get",
        "List jobs, newest first",
        [
            _q("status", "string", "queued|running|succeeded|failed|cancelled"),
            _q("type", "string", "job type"),
            _q("limit", "integer", "1-1000"),
        ],
        None,
        {
            "200": _ok(
                "jobs", {"type": "object", "properties": {"jobs": {"type": "array", "items": _JOB}}}
            )
        },
    ),
    (
        "/v1/queues",
        "get",
        "Job counts per type and status",
        [],
        None,
        {"200": _ok("counts", {"type": "object"})},
    ),
    (
        "/v1/jobs/{job_id}",
        "get",
        "A job (short poll); ?wait=S long-polls until it ends",
        [_JOB_ID, _q("wait", "number", "seconds")],
        None,
        {"200": _ok("job", _JOB), **_err(404)},
    ),
    (
        "/v1/jobs/{job_id}/events",
        "get",
        "SSE of the job's events from its first, ending after the terminal one",
        [_JOB_ID],
        None,
        {"200": _ok("event stream", {"type": "string"}, "text/event-stream"), **_err(404)},
    ),
    (
        "/v1/jobs/{job_id}/ws",
        "get",
        "WebSocket of the job's events, closing after the terminal one",
        [_JOB_ID],
        None,
        {"101": _ok("switching protocols")},
    ),
    (
        "/v1/jobs/{job_id}/cancel",
        "post",
        "Cancel: queued → cancelled; running → cancel_requested",
        [_JOB_ID],
        None,
        {"200": _ok("job", _JOB), **_err(404, 409)},
    ),
    (
        "/v1/jobs/{job_id}/retry",
        "post",
        "Requeue a failed (dead) or cancelled job",
        [_JOB_ID],
        None,
        {"200": _ok("job", _JOB), **_err(404, 409)},
    ),
    (
        "/v1/workers/lease",
        "post",
        "Lease jobs (long poll): {types?, max, wait, lease, results?}; `results` (as in"
        " /v1/workers/report) are applied first and answered beside the jobs",
        [],
        {
            "type": "object",
            "properties": {
                "types": {"type": "array", "items": {"type": "string"}},
                "max": {"type": "integer"},
                "wait": {"type": "number"},
                "lease": {"type": "number"},
                "results": _REPORT_ITEMS,
            },
        },
        {
            "200": _ok("{jobs: leased jobs with lease_token, results?}", {"type": "object"}),
            **_err(422),
        },
    ),
    (
        "/v1/workers/report",
        "post",
        "Complete or fail many leased jobs in one request (one store transaction):"
        " {results: [{id, lease_token, result} | {id, lease_token, error, retry?}]};"
        " each is applied or refused (409 conflict, 404 not_found) on its own",
        [],
        {
            "type": "object",
            "properties": {
                "results": _REPORT_ITEMS,
            },
            "required": ["results"],
        },
        {
            "200": _ok(
                "per outcome, in order: {id, status} or {id, error: {code, message}}",
                {"type": "object"},
            ),
            **_err(400, 413, 422),
        },
    ),
    (
        "/v1/jobs/{job_id}/heartbeat",
        "post",
        "Extend the lease, report progress: {lease_token, progress?, message?, lease?}",
        [_JOB_ID],
        {
            "type": "object",
            "properties": {
                "lease_token": {"type": "string"},
                "progress": {"type": "number"},
                "message": {"type": "string"},
            },
            "required": ["lease_token"],
        },
        {"200": _ok("{cancel_requested, lease_expires_at}"), **_err(404, 409, 422)},
    ),
    (
        "/v1/jobs/{job_id}/complete",
        "post",
        "Finish the job: {lease_token, result}",
        [_JOB_ID],
        {
            "type": "object",
            "properties": {"lease_token": {"type": "string"}, "result": {}},
            "required": ["lease_token"],
        },
        {"200": _ok("job", _JOB), **_err(404, 409)},
    ),
    (
        "/v1/jobs/{job_id}/fail",
        "post",
        "Fail the attempt: {lease_token, error, retry?}",
        [_JOB_ID],
        {
            "type": "object",
            "properties": {
                "lease_token": {"type": "string"},
                "error": {},
                "retry": {"type": "boolean"},
            },
            "required": ["lease_token"],
        },
        {"200": _ok("job", _JOB), **_err(404, 409)},
    ),
    (
        "/v1/rpc",
        "post",
        "JSON-RPC 2.0 (single or batch): method = job type, params = payload; waits for the result",
        [_q("wait", "number", "seconds to wait per call")],
        {"type": ["object", "array"]},
        {"200": _ok("JSON-RPC response(s)"), "204": _ok("notifications only")},
    ),
    (
        "/v1/auth/login",
        "post",
        "Log in: a fresh session as a bearer token and an HttpOnly SameSite cookie",
        [],
        {
            "type": "object",
            "required": ["username", "password"],
            "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
        },
        {"200": _ok("token, expires_at, user, permissions"), **_err(401, 422)},
    ),
    (
        "/v1/auth/logout",
        "post",
        "End the session that authenticated this request (its token is 401 at once)",
        [],
        None,
        {"200": _ok("logged out"), **_err(401)},
    ),
    (
        "/v1/auth/me",
        "get",
        "The principal of this request and its permissions",
        [],
        None,
        {"200": _ok("user, anonymous, permissions, expires_at"), **_err(401)},
    ),
    (
        "/v1/admin/users",
        "get",
        "Admin: users and their permissions",
        [],
        None,
        {"200": _ok("users"), **_err(401, 403)},
    ),
    (
        "/v1/admin/users/{name}",
        "put",
        "Admin: create or replace a user (password optional: kept when omitted)",
        [_p("name")],
        {
            "type": "object",
            "properties": {"password": {"type": "string"}, "permissions": {"type": "object"}},
        },
        {"200": _ok("replaced"), "201": _ok("created"), **_err(401, 403, 422)},
    ),
    (
        "/v1/admin/users/{name}",
        "delete",
        "Admin: remove a user and their sessions and tokens",
        [_p("name")],
        None,
        {"204": _ok("removed"), **_err(401, 403, 404)},
    ),
    (
        "/v1/admin/users/{name}/tokens",
        "post",
        "Admin: an API token for a user (its secret is in this answer only)",
        [_p("name")],
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "expires": {"type": ["number", "null"]}},
        },
        {"201": _ok("token, key"), **_err(401, 403, 404, 422)},
    ),
    (
        "/v1/admin/tokens/{key}",
        "delete",
        "Admin: revoke a token or session by its key",
        [_p("key")],
        None,
        {"204": _ok("revoked"), **_err(401, 403, 404)},
    ),
    (
        "/v1/admin/network",
        "get",
        "Admin: the network path to the store's host (route, TCP connect p50/p95, default "
        "gateway MAC); tidings doctor's report",
        [_q("tries", "integer", "TCP connects timed (1-20, default 5)")],
        None,
        {"200": _ok("targets, gateway, warnings, notes", {"type": "object"}), **_err(400, 403)},
    ),
    ("/healthz", "get", "Liveness", [], None, {"200": _ok("alive")}),
    (
        "/readyz",
        "get",
        "Readiness: the store answers and the server is not draining",
        [],
        None,
        {"200": _ok("ready"), "503": _ok("not ready")},
    ),
    (
        "/metrics",
        "get",
        "Prometheus metrics",
        [],
        None,
        {"200": _ok("metrics", {"type": "string"}, "text/plain")},
    ),
]


@cache
def openapi_document() -> dict[str, Any]:
    """The API as OpenAPI 3.1."""
    paths: dict[str, dict[str, Any]] = {}
    for path, method, summary, params, body, responses in _OPS:
        op: dict[str, Any] = {"summary": summary, "parameters": params, "responses": responses}
        if body is not None:
            op["requestBody"] = {"content": {"application/json": {"schema": body}}}
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "tidings", "version": __version__},
        "paths": paths,
    }


def _docs_html() -> str:
    rows = "".join(
        f"<tr><td><code>{m.upper()}</code></td><td><code>{html.escape(p)}</code></td><td>{html.escape(s)}</td></tr>"
        for p, m, s, *_ in _OPS
    )
    return (
        "<!doctype html><meta charset=utf-8><title>tidings API</title>"
        "<style>body{font:15px system-ui;margin:2em}td{padding:.3em .8em;border-bottom:1px solid #ddd}</style>"
        "<h1>tidings API</h1><p>Machine-readable: <a href=/openapi.json>/openapi.json</a></p>"
        f"<table>{rows}</table>"
    )


DOCS_HTML = _docs_html()
