"""`POST /v1/rpc`: JSON-RPC 2.0 on top of jobs — method = job type, params = payload.

A call submits a job and waits for it; its result is the job's result. Notifications
(no `id`) submit and return nothing. Batches run concurrently.

A call to a method no worker serves — no worker asked to lease jobs of that type in the
last SERVED_WINDOW seconds (`JobService.served`) — is not found (-32601, `data.reason`
says so) and queues nothing: its caller waits for an answer nobody would give. A
notification is queued all the same: nobody waits for it, and a worker may start later.

Error codes: the JSON-RPC ones (-32700 parse, -32600 invalid request, -32601 method not
found, -32602 invalid params) and -32000 job failed, -32001 job cancelled, -32002 timed
out waiting (the wait capped by the server's long-poll cap): a job still queued is then
cancelled, so that it does not run later for a caller who has gone, while a running one
goes on; `data.job_id` says which. `data.error` holds the job's error, its traceback only
for a caller who may work the type. A request nested deeper than the server's
`max_depth` is an invalid request (-32600, `data.error.code` `nested_too_deep`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.protocol.codecs import JSON_DECODER
from tidings.protocol.errors import TidingsError
from tidings.protocol.jobs import without_traceback
from tidings.protocol.messages import CHANNEL_RE
from tidings.server.constants import SERVED_WINDOW
from tidings.server.depth import NestedTooDeep, decode_limited
from tidings.server.http.common import (
    json_response,
    principal_of,
    query_float,
    read_body,
    unless_revoked,
)
from tidings.server.http.errors import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    JOB_CANCELLED,
    JOB_FAILED,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    TIMED_OUT,
    rpc_error,
)
from tidings.server.jobs import JobService
from tidings.server.principals import Principal

__all__ = ["routes"]

MAX_BATCH = 100


async def _call(
    request: Request, svc: JobService, req: Any, wait: float, principal: Principal
) -> dict[str, Any] | None:
    if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or "method" not in req:
        return rpc_error(None, INVALID_REQUEST, 'a request is {"jsonrpc": "2.0", "method", ...}')
    notification = "id" not in req
    id_ = req.get("id")
    if not (id_ is None or isinstance(id_, str | int | float)) or isinstance(id_, bool):
        return rpc_error(None, INVALID_REQUEST, '"id" must be a string, a number or null')
    method = req["method"]
    if not isinstance(method, str) or CHANNEL_RE.fullmatch(method) is None:
        return rpc_error(id_, METHOD_NOT_FOUND, "method must be a job type (A-Z a-z 0-9 . _ : -)")
    params = req.get("params")
    if params is not None and not isinstance(params, dict | list):
        return rpc_error(id_, INVALID_PARAMS, '"params" must be an object or an array')
    if not principal.may("submit", method):
        return rpc_error(id_, METHOD_NOT_FOUND, f"{principal.name} may not call {method!r}")
    if not notification and not await svc.served(method):
        reason = (
            f"no worker has asked for jobs of type {method!r} in the last {SERVED_WINDOW:g} s:"
            " start one that handles it (tidings worker MODULE:OBJ, or serve --handlers)"
        )
        return rpc_error(id_, METHOD_NOT_FOUND, "Method not found", {"reason": reason})
    submitter = None if principal.session is None else principal.name
    try:
        job, _ = await svc.submit(method, params, submitted_by=submitter)
    except TidingsError as exc:
        return None if notification else rpc_error(id_, INVALID_PARAMS, exc.message)
    if notification:
        return None
    job = await unless_revoked(request, svc.wait(job, wait))
    timed_out = not job.terminal
    if timed_out:
        # Nobody would get the result of a job that has not started; one that has goes on.
        job = await svc.cancel_queued(job.id)
    if job.status == "succeeded":
        return {"jsonrpc": "2.0", "result": job.result, "id": id_}
    error = job.error if principal.may("work", method) else without_traceback(job.error)
    data = {"job_id": job.id, "status": job.status, "error": error}
    if job.status == "failed":
        return rpc_error(id_, JOB_FAILED, "job failed", data)
    if job.status == "cancelled" and not timed_out:
        return rpc_error(id_, JOB_CANCELLED, "job cancelled", data)
    waited = max(0.0, min(wait, svc.long_poll_cap))
    fate = (
        "it was still queued and is cancelled"
        if job.status == "cancelled"
        else (f"it is {job.status} and goes on")
    )
    return rpc_error(id_, TIMED_OUT, f"no result within {waited:g} s; {fate}", data)


async def rpc(request: Request) -> Response:
    svc: JobService = request.app.state.jobs
    wait = query_float(request, "wait") or svc.long_poll_cap
    principal = principal_of(request)
    body = await read_body(request, request.app.state.settings.max_message_bytes)
    try:
        parsed = decode_limited(JSON_DECODER.decode, body, body.max_depth, "request")
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return json_response(rpc_error(None, PARSE_ERROR, f"parse error: {exc}"))
    except NestedTooDeep as exc:
        return json_response(rpc_error(None, INVALID_REQUEST, exc.message, exc.to_wire()))
    if isinstance(parsed, list):
        if not parsed or len(parsed) > MAX_BATCH:
            return json_response(
                rpc_error(None, INVALID_REQUEST, f"a batch holds 1 to {MAX_BATCH} requests")
            )
        answers = await asyncio.gather(*(_call(request, svc, r, wait, principal) for r in parsed))
        out = [a for a in answers if a is not None]
        return json_response(out) if out else Response(status_code=204)
    answer = await _call(request, svc, parsed, wait, principal)
    return Response(status_code=204) if answer is None else json_response(answer)


routes = [Route("/v1/rpc", rpc, methods=["POST"])]
