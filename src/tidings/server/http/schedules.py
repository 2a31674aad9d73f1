"""Schedule resources: `PUT`, `GET`, `DELETE /v1/schedules/{name}` and `GET /v1/schedules`.

Who may do what: a schedule submits jobs of its type as its owner (the principal that put
it last), so putting one needs the right to submit jobs of its type; replacing or deleting
one needs, besides, to be its owner or an admin (as cancelling a job needs to be its
submitter). A schedule is seen by those who may follow the jobs it fires: its owner (their
submitter), those who may work its type, and admins (`Principal.may_follow_job`, as for
the jobs themselves); a listing shows those. An owner that is a user of the store is
checked again at each firing: removing the user, or their grant, stops the firings (the
slots are skipped).
One owner has at most MAX_SCHEDULES_PER_OWNER schedules (409 past it); an admin, and the
anonymous owner of a server without auth, only the store's MAX_SCHEDULES.
"""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.protocol.errors import BadRequest, Forbidden
from tidings.protocol.schedules import Schedule, ScheduleListWire
from tidings.server.http.common import (
    decode_body,
    principal_of,
    query_int,
    read_body,
    require,
    respond,
)
from tidings.server.http.jobs import BODY_LIMIT_SLACK
from tidings.server.principals import Principal
from tidings.server.schedules import ScheduleService, check_name

__all__ = ["routes"]

# Schedules one listing page holds at most, and by default.
MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100


class ScheduleBody(msgspec.Struct, forbid_unknown_fields=True):
    type: str
    payload: Any = None
    cron: str | None = None
    every: int | None = None
    timezone: str | None = None
    max_attempts: int = 3
    timeout: float | None = None
    priority: int = 0
    catch_up: str = "latest"


def _svc(request: Request) -> ScheduleService:
    svc: ScheduleService = request.app.state.schedules
    return svc


def _owner(principal: Principal) -> str | None:
    return None if principal.session is None else principal.name


def _may_see(principal: Principal, schedule: Schedule) -> bool:
    """Whether `principal` may see `schedule`: whoever may follow the jobs it fires (their
    payload is its payload), since they are its owner's jobs of its type."""
    return principal.may_follow_job(schedule.owner, schedule.type)


def _may_change(principal: Principal, schedule: Schedule) -> None:
    """Forbidden unless `principal` owns `schedule` (or is an admin)."""
    if principal.admin:
        return
    if schedule.owner is None or schedule.owner != _owner(principal):
        raise Forbidden(
            f"schedule {schedule.name!r} is {schedule.owner or 'anonymous'}'s: only its "
            "owner or an admin may replace or delete it"
        )


def _name(request: Request) -> str:
    return check_name(request.path_params["name"])


async def put_schedule(request: Request) -> Response:
    svc = _svc(request)
    name = _name(request)
    limit = request.app.state.settings.max_message_bytes + BODY_LIMIT_SLACK
    body: ScheduleBody = decode_body(
        ScheduleBody, await read_body(request, limit), request.headers.get("content-type")
    )
    principal = require(request, "submit", body.type)
    known = await svc.find(name)
    if known is not None:
        _may_change(principal, known)
        require(request, "submit", known.type)
    schedule = svc.build(
        name,
        body.type,
        body.payload,
        cron=body.cron,
        every=body.every,
        timezone=body.timezone,
        max_attempts=body.max_attempts,
        timeout=body.timeout,
        priority=body.priority,
        catch_up=body.catch_up,
        owner=_owner(principal),
        # An application JWT's subject is no user of the store: its grants are in its token.
        owner_is_user=principal.session is not None and not principal.session.startswith("app:"),
        known=known,
    )
    created = await svc.put(schedule, known, admin=principal.admin)
    headers = {"Location": f"/v1/schedules/{name}"}
    return respond(request, schedule.to_wire(), 201 if created else 200, headers)


async def get_schedule(request: Request) -> Response:
    schedule = await _svc(request).get(_name(request))
    principal = principal_of(request)
    if not _may_see(principal, schedule):
        raise Forbidden(
            f"{principal.name} may not see schedule {schedule.name!r}: it is seen by its "
            f"owner, admins and those who may work jobs of type {schedule.type!r}"
        )
    return respond(request, schedule.to_wire())


async def delete_schedule(request: Request) -> Response:
    svc = _svc(request)
    schedule = await svc.get(_name(request))
    principal = principal_of(request)
    _may_change(principal, schedule)
    await svc.delete(schedule.name)
    return Response(status_code=204)


async def list_schedules(request: Request) -> Response:
    """A page of schedules by name; `?after=` is the `next` of the page before. A
    non-admin's page holds only the schedules they may see, so it may be short: `next`
    null alone says it is the last."""
    after = request.query_params.get("after", "")
    if len(after) > 200:
        raise BadRequest("after must be a schedule name: the `next` of the page before")
    limit = query_int(request, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
    # One past the page says whether another follows.
    read = await _svc(request).list_schedules(after, limit + 1)
    more = len(read) > limit
    read = read[:limit]
    principal = principal_of(request)
    shown = [s for s in read if _may_see(principal, s)]
    answer = ScheduleListWire(
        schedules=[s.to_wire() for s in shown], next=read[-1].name if more else None
    )
    return respond(request, answer)


routes = [
    Route("/v1/schedules", list_schedules, methods=["GET"]),
    Route("/v1/schedules/{name}", put_schedule, methods=["PUT"]),
    Route("/v1/schedules/{name}", get_schedule, methods=["GET"]),
    Route("/v1/schedules/{name}", delete_schedule, methods=["DELETE"]),
]
