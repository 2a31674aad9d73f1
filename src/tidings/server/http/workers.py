"""The worker list: `GET /v1/workers`.

Each worker that asked to lease jobs, or heartbeat a job it holds, within the last
WORKER_WINDOW seconds, as its lease requests describe it (`worker` of the lease body), with
the running jobs it holds; then `unidentified`: the running jobs of no listed worker (their
worker did not say who it is, or has not been seen within the window).

An admin sees every worker; a principal with a work grant sees the workers that
authenticate as itself, and the unidentified jobs it may follow; anyone else is refused.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.protocol.codecs import format_time
from tidings.protocol.errors import Forbidden
from tidings.protocol.jobs import RunningJobWire, WorkerListWire, WorkerWire
from tidings.server.http.common import json_response, principal_of
from tidings.server.jobs import JobService

__all__ = ["routes"]


async def list_workers(request: Request) -> Response:
    principal = principal_of(request)
    if not (principal.admin or principal.permissions.work):
        raise Forbidden(
            f"{principal.name} may not see workers: this needs an admin, or a work grant "
            "(to see the workers that authenticate as this user)"
        )
    svc: JobService = request.app.state.jobs
    seen, running = await svc.workers()
    listed = {w.id for w in seen}
    shown = seen if principal.admin else [w for w in seen if w.user == principal.name]
    held: dict[str, list[RunningJobWire]] = {w.id: [] for w in shown}
    unidentified: list[RunningJobWire] = []
    for job in running:
        worker = job.worker
        if worker is not None and worker in held:
            # A worker's id is no secret (jobs show it): a non-admin sees, of the jobs
            # under its workers' ids, only those it may follow.
            if principal.admin or principal.may_follow_job(job.submitted_by, job.type):
                held[worker].append(job.running_wire())
        elif (worker is None or worker not in listed) and principal.may_follow_job(
            job.submitted_by, job.type
        ):
            unidentified.append(job.running_wire())
    answer = WorkerListWire(
        workers=[
            WorkerWire(
                id=w.id,
                name=w.name,
                user=w.user,
                types=w.types,
                concurrency=w.concurrency,
                first_seen=format_time(w.first_seen),
                last_seen=format_time(w.last_seen),
                running=held[w.id],
            )
            for w in shown
        ],
        unidentified=unidentified,
    )
    return json_response(answer, headers={"cache-control": "no-store"})


routes = [Route("/v1/workers", list_workers, methods=["GET"])]
