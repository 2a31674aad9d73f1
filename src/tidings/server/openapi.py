"""The OpenAPI document served at /openapi.json (and rendered by /docs: tidings.server.ops).

Written by hand from the handlers (tidings.server.http.*, the streams in tidings.server.streams): every
operation lists every status it can answer and every parameter and body field its
constraints, so that a client generated from it — or schemathesis run against it
(tests/hostile/test_schemathesis.py) — finds no answer and no refusal it does not name.

Statuses every operation can answer are added to each by `openapi_document`: the
connection-level ones (408, 414, 429, 431, 503, answered before any endpoint runs) and,
on every endpoint that is not public, 401 and 403 (credentials and the loopback rules).

The answers' shapes that `tidings.protocol` defines (messages, pages, jobs, leases,
errors) are its Structs' own JSON Schemas (`msgspec.json.schema_components`), so the
document cannot drift from what the server encodes and the SDK decodes.
"""

from __future__ import annotations

from functools import cache
from typing import Any, NamedTuple

import msgspec

from tidings._version import __version__
from tidings.protocol.errors import ErrorBody
from tidings.protocol.jobs import (
    JOB_STATUSES,
    MAX_GROUP,
    MAX_QUEUE_CONCURRENCY,
    MAX_RATE_LIMIT,
    MAX_RATE_PER,
    MAX_UNIQUE_KEY,
    MAX_WORKER_CONCURRENCY,
    MAX_WORKER_NAME,
    MIN_RATE_PER,
    WORKER_NAME_UNPRINTABLE,
    BatchAnswerWire,
    HeartbeatAnswerWire,
    JobListWire,
    JobWire,
    LeaseAnswerWire,
    LeasedJobWire,
    ReportAnswerWire,
    WorkerListWire,
)
from tidings.protocol.messages import MessageWire, PageWire, PublishAckWire, ResetWire
from tidings.protocol.schedules import (
    CATCH_UP_POLICIES,
    MAX_SCHEDULE_NAME,
    ScheduleListWire,
    ScheduleWire,
)
from tidings.server import constants as C
from tidings.server import doctor
from tidings.server.auth import COOKIE
from tidings.server.channels import MAX_EVENT_LEN
from tidings.server.constants import MAX_AFTER, MAX_BATCH_JOBS
from tidings.server.http import lab
from tidings.server.http.jobs import BODY_LIMIT_SLACK, REPORT_BODY_MESSAGES
from tidings.server.http.rpc import MAX_BATCH
from tidings.server.http.schedules import DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT
from tidings.server.jobs import (
    MAX_ATTEMPTS_LIMIT,
    MAX_DELAY,
    MAX_LEASE,
    MAX_LEASE_BATCH,
    MAX_LEASE_TYPES,
    MAX_REPORT_BATCH,
    MIN_LEASE,
)
from tidings.server.schedules import MAX_CRON_LEN, MAX_TIMEZONE_LEN

__all__ = ["openapi_document"]

Schema = dict[str, Any]

# -- shapes -----------------------------------------------------------------------------

_NAME_CHARS = "A-Za-z0-9._:-"
# A channel name, and a job type (the same rule: a job's type names its queue).
_CHANNEL_NAME: Schema = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": f"^[{_NAME_CHARS}]{{1,200}}$",
}
# A message id, as every store gives them: decimal digits ("0" = before the first).
_CURSOR: Schema = {"type": "string", "pattern": "^[0-9]{0,18}$", "maxLength": 18}
_TIME: Schema = {"type": "string", "format": "date-time"}
_OPT_TIME: Schema = {"type": ["string", "null"], "format": "date-time"}
_ANY: Schema = {"description": "any JSON value (nested at most --max-depth deep)"}
_SECONDS: Schema = {"type": "number", "minimum": 0}
# A job's payload, result or error: any JSON value whose integers fit in 64 bits (the job
# stores keep MessagePack), nested at most --max-depth deep.
_JOB_VALUE: Schema = {"$ref": "#/components/schemas/JobValue"}
_JOB_VALUE_DEF: Schema = {
    "description": "any JSON value; integers within -2^63..2^64-1; nested at most --max-depth",
    "anyOf": [
        {"type": ["null", "boolean", "string"]},
        {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1},
        {"type": "number", "not": {"type": "integer"}},
        {"type": "array", "items": {"$ref": "#/components/schemas/JobValue"}},
        {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/JobValue"}},
    ],
}
# What a worker holds for a leased job: the token its lease answer gave.
_LEASE_TOKEN: Schema = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
_INT32 = 2**31

# The wire shapes of tidings.protocol: a reference each, their schemas in components.
(
    (
        _ERROR,
        _MESSAGE,
        _PAGE,
        _PUBLISH_ACK,
        _RESET,
        _JOB,
        _JOBS,
        _LEASED_JOB,
        _LEASE_ANSWER,
        _REPORT_ANSWER,
        _HEARTBEAT_ANSWER,
        _WORKER_LIST,
        _SCHEDULE,
        _SCHEDULES,
        _BATCH_ANSWER,
    ),
    _WIRE_SCHEMAS,
) = msgspec.json.schema_components(
    (
        ErrorBody,
        MessageWire,
        PageWire,
        PublishAckWire,
        ResetWire,
        JobWire,
        JobListWire,
        LeasedJobWire,
        LeaseAnswerWire,
        ReportAnswerWire,
        HeartbeatAnswerWire,
        WorkerListWire,
        ScheduleWire,
        ScheduleListWire,
        BatchAnswerWire,
    ),
    ref_template="#/components/schemas/{name}",
)
# The `worker` of a lease request (tidings.protocol.jobs.WorkerIdentity, its rules spelled
# out: msgspec's own schema of it has no patterns).
_WORKER_IDENTITY: Schema = {
    "type": ["object", "null"],
    "description": "who this worker is, for the worker list (GET /v1/workers); absent or "
    "null: it does not say",
    "properties": {
        "id": {
            "type": "string",
            "pattern": f"^[{_NAME_CHARS}]{{1,64}}$",
            "description": "the worker's own id, random per run",
        },
        "name": {
            "type": "string",
            "maxLength": MAX_WORKER_NAME,
            "pattern": f"^[^{WORKER_NAME_UNPRINTABLE}]*$",
            "default": "",
            "description": f"for people (`host:pid`): at most {MAX_WORKER_NAME} printable "
            "characters",
        },
        "concurrency": {
            "type": ["integer", "null"],
            "minimum": 1,
            "maximum": MAX_WORKER_CONCURRENCY,
            "description": "the jobs it runs at once; null: not said",
        },
    },
    "required": ["id"],
    "additionalProperties": False,
}
_CREDENTIAL: Schema = {
    "type": "object",
    "properties": {
        "key": {"type": "string", "description": "what DELETE /v1/admin/tokens/{key} takes"},
        "kind": {"enum": ["token", "session"]},
        "name": {"type": "string"},
        "created": _TIME,
        "expires": {**_OPT_TIME, "description": "null: never"},
    },
    "required": ["key", "kind", "name", "created", "expires"],
}
_SERVER_INFO: Schema = {
    "type": "object",
    "properties": {
        "version": {"type": "string"},
        "python": {"type": "string"},
        "pid": {"type": "integer"},
        "started_at": _TIME,
        "uptime": {"type": "number", "minimum": 0, "description": "seconds"},
        "store": {
            "type": "object",
            "properties": {
                "engine": {"enum": ["memory", "sqlite", "redis"]},
                "url": {"type": "string", "description": "without its password"},
            },
            "required": ["engine", "url"],
        },
        "settings": {
            "type": "object",
            "description": "every setting by name; a secret that is set reads `***`",
        },
    },
    "required": ["version", "python", "pid", "started_at", "uptime", "store", "settings"],
}
_BRIDGES: Schema = {
    "type": "object",
    "properties": {
        "bridges": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "kind": {"enum": ["amqp", "nats", "mqtt", "postgres"]},
                    "url": {"type": "string", "description": "without its password"},
                    "channel": {
                        "type": ["string", "null"],
                        "description": "the channel template (null: a job bridge, or one that only forwards)",
                    },
                    "event": {"type": ["string", "null"], "description": "the event template"},
                    "job": {
                        "type": ["string", "null"],
                        "description": "the job type each message becomes (else null)",
                    },
                    "state": {
                        "enum": [
                            "starting",
                            "connecting",
                            "running",
                            "standby",
                            "backoff",
                            "stopped",
                        ],
                        "description": "standby: an outbound-only bridge whose forward lease "
                        "another node holds",
                    },
                    "acknowledged": {
                        "type": "integer",
                        "description": "acknowledged to the bus after tidings committed them",
                    },
                    "published": {"type": "integer", "description": "new channel messages"},
                    "submitted": {"type": "integer", "description": "new jobs"},
                    "replied": {
                        "type": "integer",
                        "description": "job outcomes sent to a request's reply address",
                    },
                    "awaiting": {
                        "type": "integer",
                        "description": "requests held until their jobs end",
                    },
                    "duplicates": {
                        "type": "integer",
                        "description": "redeliveries already published or submitted",
                    },
                    "dead_lettered": {"type": "integer"},
                    "reconnects": {"type": "integer"},
                    "lag": {
                        "type": ["integer", "null"],
                        "description": "messages waiting on the bus, when it says",
                    },
                    "last_error": {"type": ["string", "null"]},
                    "last_error_at": {"anyOf": [_TIME, {"type": "null"}]},
                    "connected_since": {"anyOf": [_TIME, {"type": "null"}]},
                    "forward": {
                        "description": "the outbound side (forward=), null when none",
                        "anyOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "properties": {
                                    "patterns": {"type": "string"},
                                    "target": {"type": "string"},
                                    "state": {
                                        "enum": [
                                            "starting",
                                            "standby",
                                            "connecting",
                                            "forwarding",
                                            "backoff",
                                            "stopped",
                                        ]
                                    },
                                    "holder": {
                                        "type": "boolean",
                                        "description": "this node holds the lease: it forwards",
                                    },
                                    "channels": {"type": "integer"},
                                    "forwarded": {"type": "integer"},
                                    "missed": {
                                        "type": "integer",
                                        "description": "dropped by retention before forwarded",
                                    },
                                    "lag": {"type": "integer"},
                                    "leases": {"type": "integer"},
                                    "refused": {
                                        "type": "integer",
                                        "description": "messages the bus refused (each try)",
                                    },
                                    "stalled_channels": {
                                        "type": "integer",
                                        "description": "channels held back by a refusal",
                                    },
                                    "stalled": {
                                        "type": "object",
                                        "additionalProperties": {"type": "string"},
                                        "description": "some stalled channels and the "
                                        "bus's error for each",
                                    },
                                    "last_error": {"type": ["string", "null"]},
                                    "last_error_at": {"anyOf": [_TIME, {"type": "null"}]},
                                },
                            },
                        ],
                    },
                },
                "required": [
                    "name",
                    "kind",
                    "state",
                    "acknowledged",
                    "published",
                    "duplicates",
                    "dead_lettered",
                    "lag",
                    "last_error",
                ],
            },
        }
    },
    "required": ["bridges"],
}
_CHANNEL_INFO: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "first_id": {"type": ["string", "null"]},
        "last_id": {"type": ["string", "null"]},
        "messages": {"type": "integer", "minimum": 0},
        "created": _TIME,
        "retention": {
            "type": "object",
            "properties": {
                "max_messages": {"type": "integer"},
                "max_age": {"type": "number"},
                "custom": {"type": "boolean"},
            },
            "required": ["max_messages", "max_age", "custom"],
        },
        "subscribers": {
            "type": "object",
            "additionalProperties": {"type": "integer"},
            "description": "live subscribers by transport",
        },
    },
    "required": ["name", "first_id", "last_id", "messages", "created", "retention"],
}
# One outcome in a report: exactly one of "result" (complete) or "error" (fail the attempt).
_REPORT_ITEM: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "lease_token": _LEASE_TOKEN,
        "result": _JOB_VALUE,
        "error": _JOB_VALUE,
        "retry": {"type": "boolean", "default": True},
    },
    "required": ["id", "lease_token"],
    "oneOf": [{"required": ["result"]}, {"required": ["error"]}],
    "additionalProperties": False,
}
_REPORT_ITEMS: Schema = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_REPORT_BATCH,
    "items": _REPORT_ITEM,
}
_PERMISSIONS: Schema = {
    "type": "object",
    "properties": {
        "publish": {"type": "array", "items": {"type": "string"}},
        "subscribe": {"type": "array", "items": {"type": "string"}},
        "submit": {"type": "array", "items": {"type": "string"}},
        "work": {"type": "array", "items": {"type": "string"}},
        "admin": {"type": "boolean"},
    },
    "additionalProperties": False,
}
_USER: Schema = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "password": {"type": "boolean", "description": "whether the user has a password"},
        "permissions": _PERMISSIONS,
        "created": {"type": "number"},
    },
    "required": ["name", "password", "permissions", "created"],
}
_SESSION_INFO: Schema = {
    "type": "object",
    "properties": {
        "user": {"type": "string"},
        "anonymous": {"type": "boolean"},
        "permissions": _PERMISSIONS,
        "expires_at": _OPT_TIME,
    },
    "required": ["user", "anonymous", "permissions", "expires_at"],
}
# One Server-Sent Event as parsed by a client (an OpenAPI 3.1 `schema` of
# text/event-stream describes each event; 3.2 calls it `itemSchema`).
_SSE_EVENT: Schema = {
    "type": "object",
    "properties": {
        "id": {"type": "string", "description": "the cursor to resume after this event"},
        "event": {
            "type": "string",
            "description": "the message's event name; `reset` and `close` are control events",
        },
        "data": {
            "type": "string",
            "description": "a string message as itself, any other value as its JSON",
        },
        "retry": {"type": "integer", "minimum": 0},
    },
}

# -- parameters -------------------------------------------------------------------------


def _path(name: str, schema: Schema, desc: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": desc}


def _query(name: str, schema: Schema, desc: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}


def _header(name: str, schema: Schema, desc: str) -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": desc}


_CHANNEL = _path("channel", _CHANNEL_NAME, f"1-200 characters of {_NAME_CHARS}")
_JOB_ID = _path("job_id", {"type": "string", "minLength": 1}, "the id /v1/jobs gave")
_JOB_TYPE = _path("type", _CHANNEL_NAME, f"a job type: 1-200 characters of {_NAME_CHARS}")
# A job type's limits, as PUT /v1/queues/{type} takes them and the queue answers show them.
_RUNNING_CAP: Schema = {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_QUEUE_CONCURRENCY}
_QUEUE_LIMITS_PROPERTIES: dict[str, Schema] = {
    "rate": {
        "type": ["object", "null"],
        "description": "at most `limit` leases per `per` seconds on average; a burst takes "
        "at most `limit` at once (a token bucket)",
        "properties": {
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_RATE_LIMIT},
            "per": {
                "type": "number",
                "minimum": MIN_RATE_PER,
                "maximum": MAX_RATE_PER,
                "default": 1.0,
            },
        },
        "required": ["limit"],
        "additionalProperties": False,
    },
    "concurrency": {
        **_RUNNING_CAP,
        "description": "running jobs of the type at once, across nodes",
    },
    "group_concurrency": {
        **_RUNNING_CAP,
        "description": "running jobs of the type at once per `group` given on submit",
    },
}
_WAITING: Schema = {
    "type": "object",
    "description": "the jobs each limit holds back now: the due jobs by `concurrency` "
    "when the type runs as many as it may, else by `rate` when its bucket is empty; by "
    "`group` the queued jobs of the groups at their limit",
    "properties": {k: {"type": "integer"} for k in ("concurrency", "rate", "group")},
    "required": ["concurrency", "rate", "group"],
}
_QUEUE_LIMITS_VIEW: Schema = {
    "type": ["object", "null"],
    "properties": {**_QUEUE_LIMITS_PROPERTIES, "waiting": _WAITING},
    "required": ["rate", "concurrency", "group_concurrency", "waiting"],
}
_COUNTS: Schema = {"type": "object", "additionalProperties": {"type": "integer"}}
_SCHEDULE_NAME = _path(
    "name",
    {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_SCHEDULE_NAME,
        "pattern": f"^[{_NAME_CHARS}]{{1,{MAX_SCHEDULE_NAME}}}$",
    },
    f"1-{MAX_SCHEDULE_NAME} characters of {_NAME_CHARS}",
)
_USER_NAME = _path(
    "name",
    {"type": "string", "pattern": "^[A-Za-z0-9_@-]{1,64}$", "minLength": 1, "maxLength": 64},
    "1-64 characters of A-Z a-z 0-9 _ @ -",
)
_AFTER = _query(
    "after",
    _CURSOR,
    "cursor: the last message id you have; 0: from the oldest kept; absent or empty: "
    "from now (only messages published after this request), on every transport",
)
# A job's own streams replay its events from the first unless resumed.
_JOB_AFTER = _query(
    "after",
    _CURSOR,
    "cursor: the last event id you have; absent, empty or 0: from the job's first event",
)
_LAST_EVENT_ID = _header(
    "Last-Event-ID", _CURSOR, "cursor, as EventSource resends it; wins over `after`"
)
_FORMAT = _query(
    "format",
    {"type": "string", "enum": ["text", "json"], "default": "text"},
    "text: each event's data is the message's data (text as itself, any other JSON value "
    "as its JSON: what a plain EventSource shows); json: the whole message as JSON "
    "(id, channel, event, data, time), so the data keeps its type",
)
_WAIT = _query(
    "wait",
    _SECONDS,
    "seconds to wait (a long poll); capped at the server's --long-poll-cap "
    f"(default {C.DEFAULT_LONG_POLL_CAP:g}); 0 or absent: answer at once",
)
_IDEMPOTENCY_KEY = _header(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 200},
    "1-200 characters; a repeat within 24 h answers the first request's result",
)


def _limit(low: int, high: int, default: int) -> Schema:
    return _query(
        "limit",
        {"type": "integer", "minimum": low, "maximum": high, "default": default},
        f"at most this many ({low}-{high}, default {default})",
    )


# -- responses --------------------------------------------------------------------------

_ERRORS = {
    400: (
        "Malformed request: a parameter out of its range, a channel name or cursor that is "
        "not one, a body that is not JSON (or MessagePack) or nests deeper than --max-depth "
        f"(default {C.DEFAULT_MAX_DEPTH})"
    ),
    401: "No credentials where the server requires them, or credentials that do not check out",
    403: (
        "Not allowed: no grant for this channel or job type; or an anonymous request from "
        "another web origin, or to a loopback server under a host name it does not know"
    ),
    404: "No such channel, job, schedule, user or token",
    405: "Method not allowed on this path (the `Allow` header lists the methods)",
    408: "The request's line, headers or body did not arrive in time (the connection closes)",
    409: (
        "Conflict with the resource's state (a stale lease token, a finished job, a new "
        f"schedule past the {C.MAX_SCHEDULES} a server keeps, a lab while one runs or on a "
        "server it cannot measure)"
    ),
    413: "Body over its limit (--max-message-bytes for messages and jobs)",
    414: f"Request line over {C.MAX_REQUEST_LINE} bytes (the connection closes)",
    415: "Unsupported Content-Type",
    422: "Well-formed body whose fields do not fit (missing, unknown, out of range)",
    426: "A WebSocket path asked without the WebSocket upgrade",
    429: "Too many requests or connections from this client: wait for `Retry-After` seconds",
    431: (
        f"Request headers over --max-header-bytes (default {C.DEFAULT_MAX_HEADER_BYTES}) or "
        f"more than {C.MAX_HEADER_FIELDS} fields (the connection closes)"
    ),
    502: "The lab's child process failed (its error says why)",
    503: (
        "The store is unavailable, the server is shutting down or at its connection limit, "
        "or (login) too many password checks are waiting: retry, after `Retry-After` if given"
    ),
    504: "The lab outlived its deadline and was killed",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }
}
_CONNECTION_LEVEL = (408, 414, 429, 431, 503)
_AUTH = (401, 403)

# How a request says who it is (tidings.server.auth): a bearer token of any kind, or the
# session cookie login sets. Without either a request is anonymous, which only a server
# started with --require-auth refuses: hence the empty alternative in `_SECURITY`.
_SECURITY_SCHEMES: Schema = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "A login session's token (`tds_…`, or a JWT under --sessions jwt), "
        "an API token (`tdt_…`, from `tidings tokens create` or POST "
        "/v1/admin/users/{name}/tokens), or a JWT signed by the application's backend "
        "(--app-jwt-*)",
    },
    "session_cookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": COOKIE,
        "description": "The HttpOnly session cookie POST /v1/auth/login sets",
    },
}
_SECURITY: list[Schema] = [{"bearer": []}, {"session_cookie": []}, {}]


def _error_ref(status: int) -> Schema:
    return {"$ref": f"#/components/responses/E{status}"}


def _ok(desc: str, schema: Schema | None = None, media: str = "application/json") -> Schema:
    out: Schema = {"description": desc}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def _negotiated(desc: str, schema: Schema) -> Schema:
    """An answer in JSON, or MessagePack when the request's Accept prefers it."""
    return {
        "description": desc,
        "content": {"application/json": {"schema": schema}, "application/msgpack": {}},
    }


def _json_body(schema: Schema, *, msgpack: bool = True) -> Schema:
    content: Schema = {"application/json": {"schema": schema}}
    if msgpack:
        content["application/msgpack"] = {"schema": schema}
    return {"required": True, "content": content}


_STREAM: Schema = {
    "description": "event stream",
    "content": {"text/event-stream": {"schema": _SSE_EVENT}},
}
_SWITCHING: Schema = {"description": "switching protocols: the WebSocket is open"}


class _Op(NamedTuple):
    """One operation: what it does, its parameters, body and answers."""

    path: str
    method: str
    summary: str
    parameters: list[Schema]
    body: Schema | None
    responses: dict[str, Schema]
    errors: tuple[int, ...]
    public: bool = False


# Every answer each handler can give beyond the ones added to all (see the docstring).
_OPS: list[_Op] = [
    _Op(
        "/v1/channels",
        "get",
        "List channels (those this principal may subscribe to; no job channels unless admin)",
        [
            _query("prefix", {"type": "string"}, "name prefix"),
            _query(
                "after",
                {"type": "string"},
                "the `next` of the page before: names after this one",
            ),
            _limit(1, 10_000, 1000),
        ],
        None,
        {
            "200": _negotiated(
                "channels",
                {
                    "type": "object",
                    "properties": {
                        "channels": {"type": "array", "items": _CHANNEL_INFO},
                        "next": {
                            "type": ["string", "null"],
                            "description": "`after` for the next page; null: the last page",
                        },
                    },
                    "required": ["channels", "next"],
                },
            )
        },
        (400,),
    ),
    _Op(
        "/v1/channels/{channel}",
        "get",
        "A channel's stats, last id and live subscribers by transport",
        [_CHANNEL],
        None,
        {"200": _negotiated("stats", _CHANNEL_INFO)},
        (400, 404),
    ),
    _Op(
        "/v1/channels/{channel}",
        "put",
        "Admin: set the channel's own retention, or null for the server's default",
        [_CHANNEL],
        _json_body(
            {
                "type": "object",
                "properties": {
                    "retention": {
                        "type": ["object", "null"],
                        "properties": {
                            "max_messages": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": C.MAX_RETAINED,
                            },
                            "max_age": {
                                "type": "number",
                                "exclusiveMinimum": 0,
                                "maximum": C.MAX_RETENTION_AGE,
                            },
                        },
                        "required": ["max_messages", "max_age"],
                    }
                },
                "required": ["retention"],
                "additionalProperties": False,
            }
        ),
        {"200": _negotiated("stats", _CHANNEL_INFO)},
        (400, 413, 422),
    ),
    _Op(
        "/v1/channels/{channel}",
        "delete",
        "Admin: delete a channel, its history and its streams",
        [_CHANNEL],
        None,
        {"204": _ok("deleted")},
        (400, 404),
    ),
    _Op(
        "/v1/channels/{channel}/messages",
        "post",
        'Publish: a JSON or MessagePack body {"data", "event"?}; any other Content-Type: '
        "the body as UTF-8 text, its event name in ?event=. Channels job.* are 403.",
        [
            _CHANNEL,
            _query(
                "event",
                {"type": "string", "minLength": 1, "maxLength": MAX_EVENT_LEN},
                "event name of a text body",
            ),
            _IDEMPOTENCY_KEY,
        ],
        {
            # No body (and no Content-Type) publishes the empty text message.
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "data": _ANY,
                            "event": {
                                "type": ["string", "null"],
                                "minLength": 1,
                                "maxLength": MAX_EVENT_LEN,
                                "pattern": "^[^\\r\\n]*$",
                            },
                        },
                        "required": ["data"],
                        "additionalProperties": False,
                    }
                },
                "application/msgpack": {},
                "text/plain": {"schema": {"type": "string"}},
            },
        },
        {"201": _negotiated("durable: its id, channel and time", _PUBLISH_ACK)},
        (400, 413, 422),
    ),
    _Op(
        "/v1/channels/{channel}/messages",
        "get",
        "Short poll; with wait=S a long poll (answers at the first message, or empty). "
        "Without `after`, from now: a short poll answers no messages and the channel's last "
        "id as `next`, a long poll waits for the next message. On a job's channel "
        "`job.{id}`: 404 once the job is gone, no waiting once it has ended",
        [_CHANNEL, _AFTER, _limit(1, C.MAX_POLL_LIMIT, C.DEFAULT_POLL_LIMIT), _WAIT],
        None,
        {"200": _negotiated("page", _PAGE)},
        (400, 404),
    ),
    _Op(
        "/v1/channels/{channel}/events",
        "get",
        "Server-Sent Events; resume with Last-Event-ID or after=",
        [_CHANNEL, _AFTER, _LAST_EVENT_ID, _FORMAT],
        None,
        {"200": _STREAM},
        (400,),
    ),
    _Op(
        "/v1/channels/{channel}/ws",
        "get",
        'WebSocket: messages as JSON text frames; send {"data", "event"?, "ref"?} to publish. '
        "A refused socket is accepted, then closed with 1008 (1011: store unavailable) and "
        "the reason.",
        [_CHANNEL, _AFTER],
        None,
        {"101": _SWITCHING},
        (426,),
    ),
    _Op(
        "/v1/events",
        "get",
        "One SSE stream for several channels; resumable with the cursor of its events' `id:`",
        [
            {
                "name": "channel",
                "in": "query",
                "required": True,
                "schema": {
                    "type": "array",
                    "items": _CHANNEL_NAME,
                    "minItems": 1,
                    "maxItems": C.DEFAULT_MAX_STREAM_CHANNELS,
                },
                "style": "form",
                "explode": True,
                "description": "repeat for each channel: at most --max-stream-channels "
                f"(default {C.DEFAULT_MAX_STREAM_CHANNELS}) distinct ones",
            },
            _query(
                "after",
                {"type": "string", "pattern": "^(~[0-9.]*)?$"},
                "the `id:` of the last event you have (one position per channel, in the "
                "order of the URL's channels); Last-Event-ID wins over it",
            ),
            _header("Last-Event-ID", {"type": "string", "pattern": "^(~[0-9.]*)?$"}, "cursor"),
        ],
        None,
        {"200": _STREAM},
        (400,),
    ),
    _Op(
        "/v1/jobs",
        "post",
        "Submit a job: 202 queued (or waiting, with `after`); with ?wait=S or Prefer: wait=S, "
        "200 with the finished job if it ends in time. With `unique_key`, while a waiting, "
        "queued or running job of the type "
        "holds that key: 200 with that job, `deduplicated: true` and the header "
        "Tidings-Deduplicated: true, and nothing is queued (409 when that job is not the "
        "caller's to follow)",
        [
            _WAIT,
            _header(
                "Prefer",
                {"type": "string"},
                "wait=S (RFC 7240) asks what ?wait=S does (which wins); other preferences "
                "are ignored",
            ),
            _IDEMPOTENCY_KEY,
        ],
        _json_body(
            {
                "type": "object",
                "properties": {
                    "type": _CHANNEL_NAME,
                    "payload": _JOB_VALUE,
                    "max_attempts": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_ATTEMPTS_LIMIT,
                        "default": 3,
                    },
                    "timeout": {
                        "type": ["number", "null"],
                        "exclusiveMinimum": 0,
                        "maximum": MAX_LEASE * 24,
                        "description": "seconds one attempt may run",
                    },
                    "delay": {"type": "number", "minimum": 0, "maximum": MAX_DELAY, "default": 0},
                    "priority": {
                        "type": "integer",
                        "minimum": -_INT32,
                        "maximum": _INT32 - 1,
                        "default": 0,
                    },
                    "unique_key": {
                        "type": ["string", "null"],
                        "minLength": 1,
                        "maxLength": MAX_UNIQUE_KEY,
                        "pattern": f"^[^{WORKER_NAME_UNPRINTABLE}]*$",
                        "description": "while a queued or running job of this type holds "
                        "this key, a submit answers that job instead of queuing another",
                    },
                    "group": {
                        "type": ["string", "null"],
                        "minLength": 1,
                        "maxLength": MAX_GROUP,
                        "pattern": f"^[^{WORKER_NAME_UNPRINTABLE}]*$",
                        "description": "what the type's group_concurrency counts this job "
                        "by (e.g. a tenant)",
                    },
                    "after": {
                        "type": ["array", "null"],
                        "items": {"type": "string", "minLength": 1, "maxLength": 200},
                        "minItems": 1,
                        "maxItems": MAX_AFTER,
                        "description": "parent job ids: the job waits (status `waiting`) "
                        "until they all succeeded, then is queued, and its worker gets their "
                        "results (`parents`); a parent that fails or is cancelled cancels it",
                    },
                },
                "required": ["type"],
                "additionalProperties": False,
            },
            msgpack=False,
        ),
        {
            "202": {
                "description": "queued",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": _JOB}},
            },
            "200": {
                "description": "finished within the wait, or deduplicated to the queued or "
                "running job holding `unique_key` (then with Tidings-Deduplicated: true)",
                "headers": {
                    "Location": {"schema": {"type": "string"}},
                    "Tidings-Deduplicated": {"schema": {"type": "string", "enum": ["true"]}},
                },
                "content": {"application/json": {"schema": _JOB}},
            },
        },
        (400, 409, 413, 422),
    ),
    _Op(
        "/v1/jobs",
        "get",
        "List jobs, newest first (those this principal may follow)",
        [
            _query(
                "status",
                {"type": "string", "enum": ["", *JOB_STATUSES]},
                "only jobs in this state",
            ),
            _query("type", {"type": "string"}, "only jobs of this type"),
            _query(
                "before",
                {
                    "type": "string",
                    "pattern": "^([0-9]{1,12}(\\.[0-9]{1,9})?~[A-Za-z0-9_-]{1,64})?$",
                },
                "the `next` of the page before: jobs older than it",
            ),
            _limit(1, 1000, 100),
        ],
        None,
        {"200": _ok("jobs", _JOBS)},
        (400,),
    ),
    _Op(
        "/v1/queues",
        "get",
        "Job counts per type and status, and each limited type's limits with the jobs "
        "each holds back (the types this principal submits or works)",
        [],
        None,
        {
            "200": _ok(
                "counts and limits",
                {
                    "type": "object",
                    "properties": {
                        "queues": {"type": "object", "additionalProperties": _COUNTS},
                        "limits": {"type": "object", "additionalProperties": _QUEUE_LIMITS_VIEW},
                    },
                    "required": ["queues", "limits"],
                },
            )
        },
        (),
    ),
    _Op(
        "/v1/queues/{type}",
        "get",
        "A job type's counts per status, and its limits (null: none) with the jobs each "
        "holds back (those who submit or work the type)",
        [_JOB_TYPE],
        None,
        {
            "200": _ok(
                "the queue",
                {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "counts": _COUNTS,
                        "limits": _QUEUE_LIMITS_VIEW,
                    },
                    "required": ["type", "counts", "limits"],
                },
            )
        },
        (400,),
    ),
    _Op(
        "/v1/queues/{type}",
        "put",
        "Set a job type's limits (admins): leases never pass them, across nodes. Each null "
        "or left out: no such limit; all null lifts them",
        [_JOB_TYPE],
        _json_body(
            {
                "type": "object",
                "properties": _QUEUE_LIMITS_PROPERTIES,
                "additionalProperties": False,
            },
            msgpack=False,
        ),
        {
            "200": _ok(
                "the limits now",
                {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string"},
                        "limits": {
                            "type": ["object", "null"],
                            "properties": _QUEUE_LIMITS_PROPERTIES,
                        },
                    },
                    "required": ["type", "limits"],
                },
            )
        },
        (400, 409, 413, 422),
    ),
    _Op(
        "/v1/queues/{type}",
        "delete",
        "Lift a job type's limits (admins)",
        [_JOB_TYPE],
        None,
        {"204": _ok("lifted")},
        (400,),
    ),
    _Op(
        "/v1/jobs/{job_id}",
        "get",
        "A job (short poll); ?wait=S long-polls until it ends",
        [_JOB_ID, _WAIT],
        None,
        {"200": _ok("job", _JOB)},
        (400, 404),
    ),
    _Op(
        "/v1/jobs/{job_id}/events",
        "get",
        "SSE of the job's events from its first, ending after the terminal one (`close`). "
        "Resumed at or after the terminal event: 204, so that EventSource stops.",
        [_JOB_ID, _JOB_AFTER, _LAST_EVENT_ID, _FORMAT],
        None,
        {"200": _STREAM, "204": _ok("the stream is complete: the job ended before the cursor")},
        (400, 404),
    ),
    _Op(
        "/v1/jobs/{job_id}/ws",
        "get",
        "WebSocket of the job's events, closing after the terminal one (at once, with code "
        "1000 and the reason, when resumed after it)",
        [_JOB_ID, _JOB_AFTER],
        None,
        {"101": _SWITCHING},
        (426,),
    ),
    _Op(
        "/v1/jobs/{job_id}/cancel",
        "post",
        "Cancel: queued → cancelled; running → cancel_requested (its submitter or an admin)",
        [_JOB_ID],
        None,
        {"200": _ok("job", _JOB)},
        (404, 409),
    ),
    _Op(
        "/v1/jobs/{job_id}/retry",
        "post",
        "Requeue a failed (dead) or cancelled job (its submitter or an admin); 409 while "
        "another queued or running job of its type holds its unique key",
        [_JOB_ID],
        None,
        {"200": _ok("job", _JOB)},
        (404, 409),
    ),
    _Op(
        "/v1/workers/lease",
        "post",
        "Lease jobs (a long poll up to `wait`); `results` (as in /v1/workers/report) are "
        "applied first and answered beside the jobs",
        [],
        _json_body(
            {
                "type": "object",
                "properties": {
                    "types": {
                        "type": ["array", "null"],
                        "items": _CHANNEL_NAME,
                        "minItems": 1,
                        "maxItems": MAX_LEASE_TYPES,
                        "description": "job types to lease; absent: every type",
                    },
                    "max": {"type": "integer", "minimum": 1, "maximum": MAX_LEASE_BATCH},
                    "wait": {
                        "type": "number",
                        "description": "seconds to wait for a job, capped at --long-poll-cap",
                    },
                    "lease": {"type": "number", "minimum": MIN_LEASE, "maximum": MAX_LEASE},
                    "results": {**_REPORT_ITEMS, "type": ["array", "null"]},
                    "worker": _WORKER_IDENTITY,
                },
                "additionalProperties": False,
            },
            msgpack=False,
        ),
        {
            "200": _ok(
                "the leased jobs (with their lease tokens), and the results' outcomes",
                _LEASE_ANSWER,
            )
        },
        (400, 413, 422),
    ),
    _Op(
        "/v1/workers",
        "get",
        "The workers that asked for jobs or heartbeat one within the last "
        f"{C.WORKER_WINDOW:g} s, with the jobs each is running, then the running jobs of no "
        "listed worker (`unidentified`). An admin sees every worker; a principal with a "
        "work grant the workers that authenticate as itself",
        [],
        None,
        {"200": _ok("the workers, most recently seen first", _WORKER_LIST)},
        (),
    ),
    _Op(
        "/v1/workers/report",
        "post",
        "Complete or fail many leased jobs in one request (one store transaction); each is "
        "applied or refused (409 conflict, 404 not_found, in its outcome) on its own",
        [],
        _json_body(
            {
                "type": "object",
                "properties": {"results": _REPORT_ITEMS},
                "required": ["results"],
                "additionalProperties": False,
            },
            msgpack=False,
        ),
        {"200": _ok("outcomes", _REPORT_ANSWER)},
        (400, 413, 422),
    ),
    _Op(
        "/v1/jobs/{job_id}/heartbeat",
        "post",
        "Extend the lease, report progress",
        [_JOB_ID],
        _json_body(
            {
                "type": "object",
                "properties": {
                    "lease_token": _LEASE_TOKEN,
                    "progress": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
                    "message": {"type": ["string", "null"]},
                    "lease": {
                        "type": ["number", "null"],
                        "minimum": MIN_LEASE,
                        "maximum": MAX_LEASE,
                    },
                },
                "required": ["lease_token"],
                "additionalProperties": False,
            },
            msgpack=False,
        ),
        {"200": _ok("whether cancel was asked, and the lease's new end", _HEARTBEAT_ANSWER)},
        (400, 404, 409, 413, 422),
    ),
    _Op(
        "/v1/jobs/{job_id}/complete",
        "post",
        "Finish the job with its result",
        [_JOB_ID],
        _json_body(
            {
                "type": "object",
                "properties": {"lease_token": _LEASE_TOKEN, "result": _JOB_VALUE},
                "required": ["lease_token"],
                "additionalProperties": False,
            },
            msgpack=False,
        ),
        {"200": _ok("job", _JOB)},
        (400, 404, 409, 413, 422),
    ),
    _Op(
        "/v1/jobs/{job_id}/fail",
        "post",
        "Fail the attempt: retried after a backoff while attempts remain (and retry is true)",
        [_JOB_ID],
        _json_body(
            {
                "type": "object",
                "properties": {
                    "lease_token": _LEASE_TOKEN,
                    "error": _JOB_VALUE,
                    "retry": {"type": "boolean", "default": True},
                },
                "required": ["lease_token"],
                "additionalProperties": False,
            },
            msgpack=False,
        ),
        {"200": _ok("job", _JOB)},
        (400, 404, 409, 413, 422),
    ),
    _Op(
        "/v1/rpc",
        "post",
        "JSON-RPC 2.0 (one call or a batch of 1-100): method = job type, params = payload; "
        "waits for the result. Malformed calls are answered 200 with a JSON-RPC error "
        "(-32700 parse, -32600 invalid request, -32601, -32602; -32000 failed, -32001 "
        "cancelled, -32002 no result within the wait: the job is cancelled). A method no "
        f"worker asked to lease in the last {C.SERVED_WINDOW:g} s is -32601 at once, and no "
        "job is queued.",
        [_WAIT],
        _json_body(
            {
                "oneOf": [
                    {"type": "object"},
                    {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_BATCH,
                        "items": {"type": "object"},
                    },
                ]
            },
            msgpack=False,
        ),
        {
            "200": _ok("JSON-RPC response(s)", {"type": ["object", "array"]}),
            "204": _ok("notifications only: nothing to answer"),
        },
        (400, 413),
    ),
    _Op(
        "/v1/schedules",
        "get",
        "List schedules by name (those this principal owns or may submit the type of)",
        [
            _query(
                "after",
                {"type": "string", "maxLength": 200},
                "the `next` of the page before: names after this one",
            ),
            _limit(1, MAX_LIST_LIMIT, DEFAULT_LIST_LIMIT),
        ],
        None,
        {"200": _negotiated("schedules", _SCHEDULES)},
        (400,),
    ),
    _Op(
        "/v1/schedules/{name}",
        "put",
        "Create (201) or replace (200) a schedule: a job of `type` at each slot of `cron` "
        "(five fields in `timezone`) or every `every` seconds; each firing's job id is "
        "sched:{name}:{slot as YYYYmmddTHHMMSSZ}. Needs the right to submit `type`; "
        "replacing needs to be its owner or an admin. The next slot is computed from now.",
        [_SCHEDULE_NAME],
        _json_body(
            {
                "type": "object",
                "properties": {
                    "type": _CHANNEL_NAME,
                    "payload": _JOB_VALUE,
                    "cron": {
                        "type": ["string", "null"],
                        "maxLength": MAX_CRON_LEN,
                        "pattern": "^\\s*\\S+(\\s+\\S+){4}\\s*$",
                        "description": "five fields: minute hour day-of-month month "
                        'day-of-week, e.g. "*/5 * * * *" (croniter\'s syntax; an expression '
                        "out of range or naming no date is 422); exactly one of cron and every",
                    },
                    "every": {
                        "type": ["integer", "null"],
                        "minimum": 1,
                        "maximum": C.MAX_SCHEDULE_EVERY,
                        "description": "whole seconds between firings; exactly one of cron "
                        "and every",
                    },
                    "timezone": {
                        "type": ["string", "null"],
                        "maxLength": MAX_TIMEZONE_LEN,
                        "description": "IANA time zone the cron expression is read in, "
                        "e.g. Europe/Paris (default UTC; a name the server's time zone "
                        "database lacks is 422); cron only",
                    },
                    "max_attempts": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_ATTEMPTS_LIMIT,
                        "default": 3,
                    },
                    "timeout": {
                        "type": ["number", "null"],
                        "exclusiveMinimum": 0,
                        "maximum": MAX_LEASE * 24,
                        "description": "seconds one attempt of each job may run",
                    },
                    "priority": {
                        "type": "integer",
                        "minimum": -_INT32,
                        "maximum": _INT32 - 1,
                        "default": 0,
                    },
                    "catch_up": {
                        "type": "string",
                        "enum": list(CATCH_UP_POLICIES),
                        "default": "latest",
                        "description": "slots at most "
                        f"{C.SCHEDULE_GRACE:g} s late are all fired, in order; after "
                        "downtime (older slots) latest fires the most recent slot once, "
                        "skip fires none of the older ones",
                    },
                },
                "required": ["type"],
                "additionalProperties": False,
                # Exactly one of cron and every; a time zone with cron only.
                "oneOf": [
                    {"required": ["cron"], "properties": {"every": {"type": "null"}}},
                    {
                        "required": ["every"],
                        "properties": {"cron": {"type": "null"}, "timezone": {"type": "null"}},
                    },
                ],
            }
        ),
        {
            "201": {
                "description": "created",
                "headers": {"Location": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": _SCHEDULE}, "application/msgpack": {}},
            },
            "200": _negotiated("replaced", _SCHEDULE),
        },
        (400, 409, 413, 422),
    ),
    _Op(
        "/v1/schedules/{name}",
        "get",
        "A schedule, with its next slot and the job of its last firing",
        [_SCHEDULE_NAME],
        None,
        {"200": _negotiated("schedule", _SCHEDULE)},
        (400, 404),
    ),
    _Op(
        "/v1/schedules/{name}",
        "delete",
        "Remove a schedule (its owner or an admin); jobs it submitted stay",
        [_SCHEDULE_NAME],
        None,
        {"204": _ok("deleted")},
        (400, 404),
    ),
    _Op(
        "/v1/auth/login",
        "post",
        "Log in: a fresh session as a bearer token and an HttpOnly SameSite cookie. Limited "
        f"per client address (--login-rate-per-address, default "
        f"{C.DEFAULT_LOGIN_RATE_PER_ADDRESS}/min) and per account "
        f"(--login-failures-per-account, default {C.DEFAULT_LOGIN_FAILURES_PER_ACCOUNT} "
        f"failures in {C.LOGIN_ACCOUNT_WINDOW:g} s): 429 with Retry-After; 503 when "
        f"--login-queue (default {C.DEFAULT_LOGIN_QUEUE}) password checks already wait",
        [],
        {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "required": ["username", "password"],
                        "properties": {
                            "username": {"type": "string"},
                            "password": {"type": "string"},
                        },
                        "additionalProperties": False,
                    }
                }
            },
        },
        {
            "200": _ok(
                "token, expires_at, user, permissions (and the session cookie)",
                {
                    "type": "object",
                    "properties": {
                        "token": {"type": "string"},
                        "expires_at": _TIME,
                        "user": {"type": "string"},
                        "permissions": _PERMISSIONS,
                    },
                    "required": ["token", "expires_at", "user", "permissions"],
                },
            )
        },
        (400, 401, 413, 415, 422),
        public=True,
    ),
    _Op(
        "/v1/auth/logout",
        "post",
        "End the session that authenticated this request (its token is 401 at once). An API "
        "token is not a session: 400, and it keeps working (revoke it with DELETE "
        "/v1/admin/tokens/{key} or `tidings tokens revoke`)",
        [],
        None,
        {
            "200": _ok(
                "logged out",
                {
                    "type": "object",
                    "properties": {"status": {"type": "string"}},
                    "required": ["status"],
                },
            )
        },
        (400,),
    ),
    _Op(
        "/v1/auth/me",
        "get",
        "The principal of this request and its permissions",
        [],
        None,
        {"200": _ok("who this is", _SESSION_INFO)},
        (),
    ),
    _Op(
        "/v1/admin/users",
        "get",
        "Admin: users and their permissions",
        [],
        None,
        {
            "200": _ok(
                "users",
                {
                    "type": "object",
                    "properties": {"users": {"type": "array", "items": _USER}},
                    "required": ["users"],
                },
            )
        },
        (),
    ),
    _Op(
        "/v1/admin/users/{name}",
        "put",
        "Admin: create or replace a user (password optional: kept when omitted)",
        [_USER_NAME],
        _json_body(
            {
                "type": "object",
                "properties": {
                    "password": {"type": ["string", "null"], "minLength": 8},
                    "permissions": _PERMISSIONS,
                },
                "additionalProperties": False,
            }
        ),
        {"200": _ok("replaced", _USER), "201": _ok("created", _USER)},
        (400, 413, 422),
    ),
    _Op(
        "/v1/admin/users/{name}",
        "delete",
        "Admin: remove a user and their sessions and tokens",
        [_path("name", {"type": "string"}, "the user's name")],
        None,
        {"204": _ok("removed")},
        (404,),
    ),
    _Op(
        "/v1/admin/users/{name}/tokens",
        "post",
        "Admin: an API token for a user (its secret is in this answer only)",
        [_path("name", {"type": "string"}, "the user's name")],
        _json_body(
            {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "default": ""},
                    "expires": {
                        "type": ["number", "null"],
                        "exclusiveMinimum": 0,
                        "description": "seconds from now; null: never",
                    },
                },
                "additionalProperties": False,
            }
        ),
        {
            "201": _ok(
                "the token",
                {
                    "type": "object",
                    "properties": {
                        "token": {"type": "string"},
                        "key": {"type": "string"},
                        "user": {"type": "string"},
                        "name": {"type": "string"},
                        "expires": {"type": ["number", "null"]},
                    },
                    "required": ["token", "key", "user", "name", "expires"],
                },
            )
        },
        (400, 404, 413, 422),
    ),
    _Op(
        "/v1/admin/users/{name}/credentials",
        "get",
        "Admin: a user's API tokens and login sessions (their keys, never their secrets), "
        "oldest first",
        [_path("name", {"type": "string"}, "the user's name")],
        None,
        {
            "200": _ok(
                "the credentials",
                {
                    "type": "object",
                    "properties": {"credentials": {"type": "array", "items": _CREDENTIAL}},
                    "required": ["credentials"],
                },
            )
        },
        (404,),
    ),
    _Op(
        "/v1/admin/bridges",
        "get",
        "Admin: this server's bridges to message buses: state, counts acknowledged / published "
        "/ duplicates / dead-lettered, lag, last error",
        [],
        None,
        {"200": _ok("the bridges", _BRIDGES)},
        (),
    ),
    _Op(
        "/v1/admin/server",
        "get",
        "Admin: this server process (version, Python, pid, start, store) and every setting, "
        "secrets replaced by ***",
        [],
        None,
        {"200": _ok("the server", _SERVER_INFO)},
        (),
    ),
    _Op(
        "/v1/admin/tokens/{key}",
        "delete",
        "Admin: revoke a token or session by its key",
        [_path("key", {"type": "string"}, "the key given when the token was made")],
        None,
        {"204": _ok("revoked")},
        (404,),
    ),
    _Op(
        "/v1/admin/network",
        "get",
        "Admin: the network path to the store's host (route, TCP connect p50/p95, default "
        "gateway MAC); tidings doctor's report",
        [
            _query(
                "tries",
                {"type": "integer", "minimum": 1, "maximum": 20, "default": doctor.DEFAULT_TRIES},
                f"TCP connects timed (1-20, default {doctor.DEFAULT_TRIES})",
            )
        ],
        None,
        {"200": _ok("targets, gateway, warnings, notes", {"type": "object"})},
        (400,),
    ),
    _Op(
        "/v1/admin/lab",
        "post",
        "Admin: run `tidings lab` against this server (loopback, one process, one lab at a "
        "time); the lab's JSON report and its chart as SVG",
        [],
        _json_body(
            {
                "type": "object",
                "properties": {
                    "clients": {"type": "integer", "minimum": 1, "maximum": lab.MAX_CLIENTS},
                    "rate": {"type": "integer", "minimum": 1, "maximum": lab.MAX_RATE},
                    "seconds": {"type": "integer", "minimum": 1, "maximum": lab.MAX_SECONDS},
                    "patterns": {
                        "type": "array",
                        "items": {"enum": list(lab.LAB_PATTERNS)},
                        "minItems": 1,
                        "uniqueItems": True,
                    },
                },
                "additionalProperties": False,
            }
        ),
        {
            "200": _ok(
                "the report and the chart",
                {
                    "type": "object",
                    "properties": {"report": {"type": "object"}, "svg": {"type": "string"}},
                    "required": ["report", "svg"],
                },
            )
        },
        (409, 422, 502, 504),
    ),
    _Op(
        "/healthz",
        "get",
        "Liveness",
        [],
        None,
        {"200": _ok("alive", {"type": "object", "properties": {"status": {"const": "ok"}}})},
        (),
        public=True,
    ),
    _Op(
        "/readyz",
        "get",
        "Readiness: the store answers and the server is not draining",
        [],
        None,
        {
            "200": _ok("ready", {"type": "object", "properties": {"status": {"const": "ready"}}}),
            "503": _ok(
                "not ready",
                {
                    "type": "object",
                    "properties": {"status": {"const": "not ready"}, "reason": {"type": "string"}},
                },
            ),
        },
        (),
        public=True,
    ),
    _Op(
        "/metrics",
        "get",
        "Admin: Prometheus metrics",
        [],
        None,
        {"200": _ok("metrics", {"type": "string"}, "text/plain")},
        (),
    ),
]


def _batch_op() -> _Op:
    """POST /v1/jobs/batch: its jobs take the fields of POST /v1/jobs, and a `ref`."""
    submit = next(op for op in _OPS if op.path == "/v1/jobs" and op.method == "post")
    assert submit.body is not None  # noqa: S101 - the submit above has one
    fields = submit.body["content"]["application/json"]["schema"]
    ref = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_UNIQUE_KEY,
        "pattern": f"^[^{WORKER_NAME_UNPRINTABLE}]*$",
        "description": "the job's name in the batch, for the `after` of its other jobs",
    }
    after = {
        **fields["properties"]["after"],
        "items": {"type": "string", "minLength": 1, "maxLength": 200},
        "description": "refs of jobs of this batch, or ids of existing jobs: the job waits "
        "until they all succeeded",
    }
    job = {
        **fields,
        "properties": {"ref": ref, **fields["properties"], "after": after},
        "required": ["ref", "type"],
    }
    return _Op(
        "/v1/jobs/batch",
        "post",
        "Submit a graph of jobs at once, all or none: 202 with every job made, in order, "
        "each with its `ref`. A cycle, a ref used twice, or an `after` naming neither a ref "
        "of the batch nor an existing job is 422 and makes nothing; a unique key held by "
        "a job that exists is 409. Every job's type needs the submit right",
        [],
        _json_body(
            {
                "type": "object",
                "properties": {
                    "jobs": {
                        "type": "array",
                        "items": job,
                        "minItems": 1,
                        "maxItems": MAX_BATCH_JOBS,
                    }
                },
                "required": ["jobs"],
                "additionalProperties": False,
            },
            msgpack=False,
        ),
        {"202": _ok("every job made, each with its `ref`", _BATCH_ANSWER)},
        (400, 409, 413, 422),
    )


_OPS.append(_batch_op())

_DESCRIPTION = f"""\
Push server: channels (publish, poll, SSE, WebSocket) and jobs.

Errors are JSON `{{"error": {{"code", "message"}}}}`. Every operation can also answer:
408 (a request not received in time: --header-timeout, default {C.DEFAULT_HEADER_TIMEOUT:g} s,
--body-timeout, default {C.DEFAULT_BODY_TIMEOUT:g} s), 414 (a request line over
{C.MAX_REQUEST_LINE} bytes), 431 (headers over --max-header-bytes, default
{C.DEFAULT_MAX_HEADER_BYTES}, or over {C.MAX_HEADER_FIELDS} fields), 429 (too many
connections from one address: --max-connections-per-address, default
{C.DEFAULT_MAX_CONNECTIONS_PER_ADDRESS}) and 503 (the store unavailable, or the server at
--max-connections). Endpoints other than login, health and this document answer 401
without valid credentials when the server requires them and 403 when not allowed.

Every path answers OPTIONS with 204 and `Allow`, and a method it does not serve with 405
and the same `Allow`. JSON and MessagePack values nest at most --max-depth (default
{C.DEFAULT_MAX_DEPTH}) deep: deeper is 400. A job body (submit, heartbeat, complete, fail)
is at most --max-message-bytes + {BODY_LIMIT_SLACK} bytes; a lease or report body
{REPORT_BODY_MESSAGES} times that.
"""


@cache
def openapi_document() -> dict[str, Any]:
    """The API as OpenAPI 3.1."""
    paths: dict[str, dict[str, Any]] = {}
    for op in _OPS:
        statuses = set(op.errors) | set(_CONNECTION_LEVEL)
        if not op.public and "101" not in op.responses:
            statuses |= set(_AUTH)
        responses = dict(op.responses)
        for status in sorted(statuses):
            responses.setdefault(str(status), _error_ref(status))
        operation: dict[str, Any] = {
            "summary": op.summary,
            "parameters": op.parameters,
            "responses": dict(sorted(responses.items())),
        }
        if op.body is not None:
            operation["requestBody"] = op.body
        if not op.public:
            operation["security"] = _SECURITY
        paths.setdefault(op.path, {})[op.method] = operation
    error_responses: dict[str, Any] = {}
    for status, desc in _ERRORS.items():
        response: Schema = {
            "description": desc,
            "content": {"application/json": {"schema": _ERROR}},
        }
        if status in (429, 503):
            response["headers"] = _RETRY_AFTER
        if status == 405:
            response["headers"] = {"Allow": {"schema": {"type": "string"}}}
        if status == 426:
            response["headers"] = {"Upgrade": {"schema": {"const": "websocket"}}}
        error_responses[f"E{status}"] = response
    return {
        "openapi": "3.1.0",
        "info": {"title": "tidings", "version": __version__, "description": _DESCRIPTION},
        "paths": paths,
        "components": {
            "schemas": {**_WIRE_SCHEMAS, "JobValue": _JOB_VALUE_DEF},
            "responses": error_responses,
            "securitySchemes": _SECURITY_SCHEMES,
        },
    }
