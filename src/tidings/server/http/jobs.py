"""Job resources: submit, follow, list, queues and their limits, cancel, retry — and the
worker protocol.

A job's SSE and WebSocket streams are raw ASGI, served by tidings.server.transports like any
channel's (the job's channel is `job.{id}`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.protocol.codecs import encode_json, format_time
from tidings.protocol.errors import BadRequest, Conflict, Forbidden, InvalidBody, TidingsError
from tidings.protocol.jobs import (
    JOB_STATUSES,
    BatchJob,
    Job,
    JobOutcome,
    ParentBudget,
    QueueLimits,
    WorkerIdentity,
)
from tidings.protocol.messages import CHANNEL_RE
from tidings.server.http.common import (
    decode_body,
    json_response,
    principal_of,
    query_float,
    query_int,
    read_body,
    require,
    require_admin,
    unless_disconnected,
    unless_revoked,
)
from tidings.server.jobs import JobService
from tidings.server.principals import Principal
from tidings.server.stores.base import JobCursor

__all__ = ["routes"]

log = logging.getLogger("tidings.jobs")

BODY_LIMIT_SLACK = 64 * 1024
# A report carries many results: its body may be this many messages long.
REPORT_BODY_MESSAGES = 4
# A batch submit (up to MAX_BATCH_JOBS jobs) may be this many messages long.
BATCH_BODY_MESSAGES = 16
# Set (to "true") on a submit's answer when the unique key deduplicated it to a queued or
# running job instead of queuing another.
DEDUPLICATED_HEADER = "Tidings-Deduplicated"
_PREFER_WAIT = re.compile(r"(?:^|[;,\s])wait\s*=\s*([0-9.]+)", re.IGNORECASE)


class SubmitBody(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    payload: Any = None
    max_attempts: int = 3
    timeout: float | None = None
    delay: float = 0.0
    priority: int = 0
    unique_key: str | None = None
    group: str | None = None
    after: list[str] | None = None


class BatchBody(msgspec.Struct, forbid_unknown_fields=True):
    jobs: list[BatchJob]


class ReportItem(msgspec.Struct, forbid_unknown_fields=True):
    """One outcome: a "result" key completes the job, an "error" key fails the attempt."""

    id: str
    lease_token: str
    result: Any | msgspec.UnsetType = msgspec.UNSET
    error: Any | msgspec.UnsetType = msgspec.UNSET
    retry: bool = True


class ReportBody(msgspec.Struct, forbid_unknown_fields=True):
    results: list[ReportItem]


class LeaseBody(msgspec.Struct, forbid_unknown_fields=True):
    types: list[str] | None = None
    max: int = 1
    wait: float = 0.0
    lease: float = 30.0
    # Outcomes to apply first, as in a report: a worker reports and asks for more at once.
    results: list[ReportItem] | None = None
    # Who the worker is, for the worker list (GET /v1/workers); None: it does not say.
    worker: WorkerIdentity | None = None


class HeartbeatBody(msgspec.Struct, forbid_unknown_fields=True):
    lease_token: str
    progress: float | None = None
    message: str | None = None
    lease: float | None = None


class CompleteBody(msgspec.Struct, forbid_unknown_fields=True):
    lease_token: str
    result: Any = None


class FailBody(msgspec.Struct, forbid_unknown_fields=True):
    lease_token: str
    error: Any = None
    retry: bool = True


def _outcomes(items: list[ReportItem]) -> list[JobOutcome]:
    out = []
    for n, item in enumerate(items):
        has_result = item.result is not msgspec.UNSET
        if has_result == (item.error is not msgspec.UNSET):
            raise InvalidBody(
                f'results[{n}] must hold exactly one of "result" (complete) or "error" (fail)'
            )
        value = item.result if has_result else item.error
        out.append(JobOutcome(item.id, item.lease_token, has_result, value, item.retry))
    return out


def _svc(request: Request) -> JobService:
    svc: JobService = request.app.state.jobs
    return svc


async def _body(request: Request, kind: type[Any], messages: int = 1) -> Any:
    limit = request.app.state.settings.max_message_bytes * messages + BODY_LIMIT_SLACK
    return decode_body(kind, await read_body(request, limit))


def _may_follow(principal: Principal, job: Job) -> Job:
    if not principal.may_follow_job(job.submitted_by, job.type):
        raise Forbidden(f"job {job.id} is not yours: only its submitter and its workers see it")
    return job


def _public(principal: Principal, job: Job, **extra: Any) -> Any:
    """A job's public form for `principal`: the last error's traceback only for those who
    may work its type (admins too), not for a submitter who may not (a browser's end user)."""
    return job.to_wire(with_traceback=principal.may("work", job.type), **extra)


def _to_worker(job: Job) -> Any:
    """A job as the answer to a worker's complete or fail: without `errors` and the
    traceback, which the worker sent itself."""
    return job.to_wire(with_errors=False, with_traceback=False)


def _is_worker(request: Request) -> None:
    """Forbidden unless the principal may work some job type (lease tokens do the rest)."""
    principal = principal_of(request)
    if not (principal.admin or principal.permissions.work):
        raise Forbidden(f"{principal.name} may not work jobs: ask for a work grant")


def _wait_of(request: Request) -> float | None:
    """`?wait=S`, or `Prefer: wait=S` (RFC 7240)."""
    wait = query_float(request, "wait")
    if wait is None:
        m = _PREFER_WAIT.search(request.headers.get("prefer", ""))
        if m is not None:
            try:
                wait = float(m.group(1))
            except ValueError:
                raise BadRequest(f"Prefer: wait={m.group(1)!r} is not a number") from None
    return wait


async def submit(request: Request) -> Response:
    svc = _svc(request)
    body: SubmitBody = await _body(request, SubmitBody)
    principal = require(request, "submit", body.type)
    idempotency_key = request.headers.get("idempotency-key")
    job, created = await svc.submit(
        body.type,
        body.payload,
        max_attempts=body.max_attempts,
        timeout=body.timeout,
        delay=body.delay,
        priority=body.priority,
        idempotency_key=idempotency_key,
        unique_key=body.unique_key,
        group=body.group,
        submitted_by=None if principal.session is None else principal.name,
        after=body.after,
        visible=lambda parent: principal.may_follow_job(parent.submitted_by, parent.type),
    )
    deduplicated = svc.deduplicated(job, created, idempotency_key)
    if deduplicated and not principal.may_follow_job(job.submitted_by, job.type):
        # Someone else's job: its payload and result are not this principal's to see.
        raise Conflict(
            f"a waiting, queued or running job of type {body.type!r} holds unique key "
            f"{body.unique_key!r}, and it is not yours: submit again once it has ended"
        )
    # Whether a worker asked for this type lately: false warns of a typo or a worker down.
    # The job is queued already: a store that cannot answer this leaves `served` out rather
    # than have the client submit the job again.
    served: bool | msgspec.UnsetType
    try:
        served = await svc.served(body.type)
    except TidingsError as exc:
        log.warning(
            "job %s queued; whether type %r is served is unknown: %s", job.id, body.type, exc
        )
        served = msgspec.UNSET
    wait = _wait_of(request)
    if wait and not job.terminal:
        job = await unless_revoked(request, svc.wait(job, wait))
    # A job the unique key deduplicated to is answered 200 (nothing was queued), as is one
    # that ended within the wait.
    status = 200 if job.terminal or deduplicated else 202
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if wait and job.terminal:
        headers["Preference-Applied"] = f"wait={wait:g}"
    if deduplicated:
        headers[DEDUPLICATED_HEADER] = "true"
    return json_response(
        _public(principal, job, served=served, deduplicated=deduplicated), status, headers
    )


async def submit_batch(request: Request) -> Response:
    """Submit a graph of jobs at once, all or none: each names the batch's jobs it waits
    for by their `ref` (or existing jobs by id) in `after`. 202 with every job made, in
    the batch's order, each with its `ref`. Every job's type needs the submit right."""
    svc = _svc(request)
    body: BatchBody = await _body(request, BatchBody, BATCH_BODY_MESSAGES)
    principal = principal_of(request)
    for type_ in dict.fromkeys(spec.type for spec in body.jobs):
        require(request, "submit", type_)
    jobs = await svc.submit_batch(
        body.jobs,
        submitted_by=None if principal.session is None else principal.name,
        visible=lambda parent: principal.may_follow_job(parent.submitted_by, parent.type),
    )
    return json_response(
        {
            "jobs": [
                _public(principal, job, ref=spec.ref)
                for spec, job in zip(body.jobs, jobs, strict=True)
            ]
        },
        202,
    )


async def get_job(request: Request) -> Response:
    svc = _svc(request)
    job_id = request.path_params["job_id"]
    wait = query_float(request, "wait")
    job = await svc.get(job_id)
    principal = principal_of(request)
    _may_follow(principal, job)
    if wait and not job.terminal:
        job = await unless_revoked(request, svc.wait(job, wait))
    return json_response(_public(principal, job))


async def list_jobs(request: Request) -> Response:
    """A page of jobs, newest first; `?before=` is the `next` of the page before. A page
    may hold fewer than `limit` jobs (a store looks at a bounded number per request, and
    a non-admin sees only the jobs they may follow): `next` null alone says it is the
    last."""
    status = request.query_params.get("status") or None
    if status is not None and status not in JOB_STATUSES:
        raise BadRequest(f"status={status!r}: use one of {', '.join(JOB_STATUSES)}")
    type_ = request.query_params.get("type") or None
    limit = query_int(request, "limit", 100, 1, 1000)
    before_text = request.query_params.get("before") or None
    try:
        before = None if before_text is None else JobCursor.from_text(before_text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    page = await _svc(request).list_jobs(status, type_, limit, before)
    jobs = page.jobs
    principal = principal_of(request)
    if not principal.admin:
        jobs = [j for j in jobs if principal.may_follow_job(j.submitted_by, j.type)]
    # A listing leaves out `errors` and the traceback: GET /v1/jobs/{id} has them.
    return json_response(
        {
            "jobs": [j.to_wire(with_errors=False, with_traceback=False) for j in jobs],
            "next": None if page.next is None else page.next.to_text(),
        }
    )


def _sees_queue(principal: Principal, type_: str) -> bool:
    """Whether `principal` sees a job type's queue: it submits or works it (admins all)."""
    return principal.may("work", type_) or principal.may("submit", type_)


def _limits_view(limits: QueueLimits | None, waiting: dict[str, int] | None) -> Any:
    """A type's limits as the queue answers show them, with what each holds back now."""
    if limits is None:
        return None
    return {**msgspec.to_builtins(limits), "waiting": waiting}


async def queues(request: Request) -> Response:
    """Job counts per type and status, and each limited type's limits with the jobs each
    limit holds back (`limits`), for the types this principal submits or works."""
    svc = _svc(request)
    counts = await svc.queues()
    principal = principal_of(request)
    limits = await svc.limits(lambda t: _sees_queue(principal, t))
    return json_response(
        {
            "queues": {t: c for t, c in counts.items() if _sees_queue(principal, t)},
            "limits": {t: _limits_view(*view) for t, view in limits.items()},
        }
    )


def _queue_type(request: Request) -> str:
    """The job type of a /v1/queues/{type} path; 400 when it is none."""
    type_: str = request.path_params["type"]
    if CHANNEL_RE.fullmatch(type_) is None:
        raise BadRequest(f"{type_[:80]!r} is not a job type (1-200 of A-Z a-z 0-9 . _ : -)")
    return type_


async def get_queue(request: Request) -> Response:
    """One job type's counts per status, and its limits (null: none) with what they hold."""
    type_ = _queue_type(request)
    principal = principal_of(request)
    if not _sees_queue(principal, type_):
        raise Forbidden(f"{principal.name} may neither submit nor work {type_!r}")
    svc = _svc(request)
    counts = await svc.queues()
    view = (await svc.limits(lambda t: t == type_)).get(type_)
    return json_response(
        {
            "type": type_,
            "counts": counts.get(type_, {}),
            "limits": None if view is None else _limits_view(*view),
        }
    )


async def put_queue(request: Request) -> Response:
    """Set a job type's limits (admins): `{"rate": {"limit", "per"}, "concurrency",
    "group_concurrency"}`, each null or left out for none; all none lifts them."""
    require_admin(request)
    type_ = _queue_type(request)
    body: QueueLimits = await _body(request, QueueLimits)
    kept = await _svc(request).set_limits(type_, body)
    return json_response(
        {"type": type_, "limits": None if kept is None else msgspec.to_builtins(kept)}
    )


async def delete_queue(request: Request) -> Response:
    """Lift a job type's limits (admins)."""
    require_admin(request)
    await _svc(request).set_limits(_queue_type(request), QueueLimits())
    return Response(status_code=204)


async def _own(request: Request) -> None:
    """Forbidden unless the principal submitted the job (or is an admin)."""
    principal = principal_of(request)
    if principal.admin:
        return
    job = await _svc(request).get(request.path_params["job_id"])
    if job.submitted_by != principal.name:
        raise Forbidden(f"job {job.id} was not submitted by {principal.name}")


async def cancel(request: Request) -> Response:
    await _own(request)
    job = await _svc(request).cancel(request.path_params["job_id"])
    return json_response(_public(principal_of(request), job))


async def retry(request: Request) -> Response:
    await _own(request)
    principal = principal_of(request)
    job = await _svc(request).retry(
        request.path_params["job_id"],
        lambda holder: principal.may_follow_job(holder.submitted_by, holder.type),
    )
    return json_response(_public(principal, job))


async def lease(request: Request) -> Response:
    body: LeaseBody = await _body(request, LeaseBody, REPORT_BODY_MESSAGES)
    svc = _svc(request)
    _is_worker(request)
    # A malformed request (`types` empty or too long, ...) is refused as such (422) before
    # its types are checked one by one, and before any outcome it carries is applied.
    svc.check_lease(body.types, body.max, body.lease, body.worker)
    for type_ in body.types or ["*"]:  # no types: every type, which needs a "*" grant
        require(request, "work", type_)
    reporting = None
    if body.results is not None:
        # Started together, the report and the lease share one store transaction.
        reporting = asyncio.ensure_future(_report(svc, body.results))
    # A worker that stops closes its parked lease request: it must not be handed jobs.
    principal = principal_of(request)
    user = None if principal.session is None else principal.name
    leasing = svc.lease(body.types, body.max, body.wait, body.lease, body.worker, user)
    jobs: list[Job] = []
    try:
        try:
            # ... nor a worker whose session was revoked meanwhile (401).
            leased = await unless_revoked(request, unless_disconnected(request, leasing))
            jobs = leased or []
        finally:
            reported = None if reporting is None else await reporting
        answer = await _lease_answer(svc, jobs, reported)
    except BaseException:
        # The answer that would hand these jobs over was not built: none is leased to
        # nobody, they go back to the queue at once.
        svc.give_back(jobs)
        raise
    return Response(answer, 200, media_type="application/json")


async def _lease_answer(
    svc: JobService, jobs: list[Job], reported: list[dict[str, Any]] | None
) -> bytes:
    """The lease answer's body, each job encoded on its own: a job whose payload cannot be
    encoded (stored before payloads were checked) fails for good, without its attempts,
    and the others are handed over."""
    parts: list[bytes] = []
    parents = await svc.parents(jobs)
    budget = ParentBudget()  # the parents' results the whole answer may carry
    for job in jobs:
        try:
            parts.append(encode_json(job.lease_to_wire(parents, budget)))
        except Exception as exc:
            log.exception("job %s cannot be handed over: its payload cannot be encoded", job.id)
            error = {
                "type": "UnencodablePayload",
                "message": f"the payload cannot be encoded: {exc!r}",
            }
            try:
                await svc.fail(job.id, job.lease_token or "", error, retry=False)
            except Exception:
                log.exception("failing job %s failed: it goes back to the queue", job.id)
                svc.give_back([job])
    body = b'{"jobs":[' + b",".join(parts) + b"]"
    if reported is not None:
        body += b',"results":' + encode_json(reported)
    return body + b"}"


async def heartbeat(request: Request) -> Response:
    _is_worker(request)
    body: HeartbeatBody = await _body(request, HeartbeatBody)
    cancel_requested, expires = await _svc(request).heartbeat(
        request.path_params["job_id"], body.lease_token, body.progress, body.message, body.lease
    )
    return json_response(
        {"cancel_requested": cancel_requested, "lease_expires_at": format_time(expires)}
    )


async def complete(request: Request) -> Response:
    _is_worker(request)
    body: CompleteBody = await _body(request, CompleteBody)
    job = await _svc(request).complete(request.path_params["job_id"], body.lease_token, body.result)
    return json_response(_to_worker(job))


async def fail(request: Request) -> Response:
    _is_worker(request)
    body: FailBody = await _body(request, FailBody)
    job = await _svc(request).fail(
        request.path_params["job_id"], body.lease_token, body.error, body.retry
    )
    return json_response(_to_worker(job))


async def _report(svc: JobService, items: list[ReportItem]) -> list[dict[str, Any]]:
    outcomes = _outcomes(items)
    answers = await svc.report(outcomes)
    results: list[dict[str, Any]] = []
    for outcome, answer in zip(outcomes, answers, strict=True):
        if isinstance(answer, TidingsError):
            results.append({"id": outcome.id, **answer.to_wire()})
        else:
            results.append({"id": answer.id, "status": answer.status})
    return results


async def report(request: Request) -> Response:
    _is_worker(request)
    body: ReportBody = await _body(request, ReportBody, REPORT_BODY_MESSAGES)
    return json_response({"results": await _report(_svc(request), body.results)})


routes = [
    Route("/v1/jobs", submit, methods=["POST"]),
    Route("/v1/jobs/batch", submit_batch, methods=["POST"]),
    Route("/v1/jobs", list_jobs, methods=["GET"]),
    Route("/v1/queues", queues, methods=["GET"]),
    Route("/v1/queues/{type}", get_queue, methods=["GET"]),
    Route("/v1/queues/{type}", put_queue, methods=["PUT"]),
    Route("/v1/queues/{type}", delete_queue, methods=["DELETE"]),
    Route("/v1/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/jobs/{job_id}/cancel", cancel, methods=["POST"]),
    Route("/v1/jobs/{job_id}/retry", retry, methods=["POST"]),
    Route("/v1/workers/lease", lease, methods=["POST"]),
    Route("/v1/workers/report", report, methods=["POST"]),
    Route("/v1/jobs/{job_id}/heartbeat", heartbeat, methods=["POST"]),
    Route("/v1/jobs/{job_id}/complete", complete, methods=["POST"]),
    Route("/v1/jobs/{job_id}/fail", fail, methods=["POST"]),
]
