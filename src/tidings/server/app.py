"""The ASGI application, built by `create_app(settings)`.

Requests take one of two roads:

* Streams (`GET /v1/channels/{c}/events`, `GET /v1/events`, WebSocket
  `/v1/channels/{c}/ws`) go straight to tidings.server.transports with the server's own `send`,
  so the hub's fan-out writes through no middleware wrapper.
* Request/response endpoints are found by tidings.server.http.router (a dict and a few regexes)
  and called with Starlette's Request; errors are mapped and latency recorded here.
* A known path asked with a method it does not serve is answered here: OPTIONS 204, or
  405, both with the path's whole `Allow` (426 for a plain GET on a WebSocket path).
* Whatever neither knows goes to Starlette: lifespan, and 404 answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import re
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tidings.loader import load_object
from tidings.protocol.codecs import encode_json
from tidings.protocol.cursors import decode_composite_cursor
from tidings.protocol.errors import BadRequest, Forbidden, InvalidCursor, StoreError, TidingsError
from tidings.protocol.jobs import TERMINAL_STATUSES, job_channel
from tidings.server import constants as C
from tidings.server.auth import AuthService
from tidings.server.channels import ChannelService, check_channel
from tidings.server.http import admin as admin_routes
from tidings.server.http import auth as auth_routes
from tidings.server.http import channels as channel_routes
from tidings.server.http import jobs as job_routes
from tidings.server.http import rpc as rpc_routes
from tidings.server.http.common import json_response, require_admin
from tidings.server.http.router import Allowed, Endpoint, Router
from tidings.server.hub import Hub
from tidings.server.jobs import JobService
from tidings.server.metrics import Metrics
from tidings.server.openapi import DOCS_HTML, openapi_document
from tidings.server.relay import Relay
from tidings.server.settings import Settings
from tidings.server.stores import open_store
from tidings.server.stores.base import Retention, Store
from tidings.server.transports.sse import serve_sse
from tidings.server.transports.stream import end_at_once
from tidings.server.transports.websocket import serve_ws

__all__ = ["TidingsApp", "create_app"]

log = logging.getLogger("tidings")

_STREAM = re.compile(r"^/v1/(channels|jobs)/([^/]+)/(events|ws)$")


def _redacted(url: str) -> str:
    """A store URL fit for a log line: its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


@functools.lru_cache(maxsize=256)  # asked on every anonymous request; hosts are few
def _loopback_host(host: str) -> bool:
    """True for a Host header naming loopback: localhost, 127.x.y.z or [::1], any port."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# Endpoints anyone may call, whatever --require-auth says.
_PUBLIC = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/v1/auth/login"})


async def _send_error(send: Send, exc: TidingsError) -> None:
    body = encode_json(exc.to_wire())
    await send(
        {
            "type": "http.response.start",
            "status": exc.status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
                *((k.encode(), v.encode()) for k, v in (exc.headers or {}).items()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TidingsApp:
    """The whole server as one ASGI callable.

    Args:
        settings: what to serve and how.
        store: a store to use instead of the one named by `settings.store` (tests).
        handlers: a `tidings.Worker` whose handlers run inside this server, leasing jobs
            straight from the job service (the single-process case: no worker process).
    """

    def __init__(
        self, settings: Settings, store: Store | None = None, handlers: LocalHandlers | None = None
    ) -> None:
        self.settings = settings
        # Asked on every anonymous request: parse the bound address once.
        self._loopback = settings.loopback
        retention = Retention(settings.max_messages, settings.max_age)
        self.store = store or open_store(settings.store, retention, settings.sqlite_synchronous)
        self.hub = Hub(self.store.channels.cursor_key, remember=not self.store.shared)
        self.channels = ChannelService(self.store, self.hub, settings.long_poll_cap)
        self.jobs = JobService(
            self.store,
            self.hub,
            settings.retry_backoff,
            long_poll_cap=settings.long_poll_cap,
            max_depth=settings.max_depth,
        )
        self.auth = AuthService(self.store.auth, settings)
        self.relay: Relay | None = None
        if self.store.shared:
            followable: Any = self.store.channels
            self.relay = Relay(followable, self.hub, self.jobs.notify_ready, self.jobs.parked)
            self.channels.relay_watch = self.jobs.relay_watch = self.relay.watch
            self.jobs.on_park = self.relay.kick
            self.channels.relay_forget = self.relay.forget
        self.handlers = handlers
        self._handlers_stop = asyncio.Event()
        self.metrics = Metrics(self.hub, self.store, self.auth)
        self._background: list[asyncio.Task[None]] = []
        # Streams being served right now; shutdown waits for them to say goodbye.
        self.open_streams = 0
        self._streams_idle = asyncio.Event()
        self._streams_idle.set()
        self.ready = False
        routes = [
            *channel_routes.routes,
            *job_routes.routes,
            *rpc_routes.routes,
            *auth_routes.routes,
            *admin_routes.routes,
            Route("/healthz", self._healthz, methods=["GET"]),
            Route("/readyz", self._readyz, methods=["GET"]),
            Route("/metrics", self._metrics, methods=["GET"]),
            Route("/openapi.json", self._openapi, methods=["GET"]),
            Route("/docs", self._docs, methods=["GET"]),
        ]
        self.router = Router(routes)
        self.starlette = Starlette(
            routes=routes,
            exception_handlers={
                TidingsError: self._tidings_error,
                HTTPException: self._http_error,
                Exception: self._unexpected_error,
            },
            lifespan=self._lifespan,
        )
        self.starlette.state.settings = settings
        self.starlette.state.channels = self.channels
        self.starlette.state.jobs = self.jobs
        self.starlette.state.auth = self.auth
        self._http = self.metrics.middleware(self.starlette)
        origins = settings.origins
        self._cors: CORSMiddleware | None = None
        if origins:
            self._cors = CORSMiddleware(
                self._route,
                allow_origins=origins,
                # Never "*" with credentials: with a wildcard, no cookies and no auth headers.
                allow_credentials="*" not in origins,
                allow_methods=["GET", "POST", "PUT", "DELETE"],
                allow_headers=[
                    "authorization",
                    "content-type",
                    "idempotency-key",
                    "last-event-id",
                    "prefer",
                ],
                expose_headers=["location", "retry-after", "preference-applied"],
                max_age=600,
            )

    # -- ASGI entry ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._cors is not None and scope["type"] == "http":
            # Only browsers' cross-origin requests go through the CORS layer.
            for name, _ in scope["headers"]:
                if name == b"origin":
                    await self._cors(scope, receive, send)
                    return
        await self._route(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind in ("http", "websocket"):
            path: str = scope["path"]
            if kind == "websocket" or scope["method"] == "GET":
                if path == "/v1/events" and kind == "http":
                    await self._stream(scope, receive, send, None, "events")
                    return
                m = _STREAM.match(path)
                if m is not None and (m.group(3) == "ws") == (kind == "websocket"):
                    if m.group(1) == "jobs":
                        await self._stream(scope, receive, send, m.group(2), m.group(3), job=True)
                    else:
                        await self._stream(scope, receive, send, m.group(2), m.group(3))
                    return
            if kind == "websocket":
                if (await receive())["type"] == "websocket.connect":
                    await send({"type": "websocket.accept"})
                    await send(
                        {"type": "websocket.close", "code": 1008, "reason": f"no socket at {path}"}
                    )
                return
            # HEAD is answered by the GET endpoint (uvicorn sends no body), with the same
            # authentication: it must not reach a handler through Starlette's fallback.
            method = "GET" if scope["method"] == "HEAD" else scope["method"]
            hit = self.router.match(method, path)
            if hit is not None:
                await self._answer(scope, receive, send, *hit)
                return
            allowed = self.router.allowed(path)
            if allowed is not None and (path != "*" or method == "OPTIONS"):
                await self._unserved_method(scope, send, allowed)
                return
        # Lifespan, and paths the API does not serve (Starlette answers 404).
        await self._http(scope, receive, send)

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        endpoint: Endpoint,
        params: dict[str, Any],
        template: str,
    ) -> None:
        """One request/response endpoint, errors mapped as Starlette's handlers map them."""
        start = time.perf_counter()
        scope["app"] = self.starlette
        scope["path_params"] = params
        request = Request(scope, receive)
        try:
            if template not in _PUBLIC:
                principal = await self.auth.principal(scope["headers"])
                if principal.via_cookie and scope["method"] not in ("GET", "HEAD"):
                    self.check_origin(scope)
                elif principal.session is None:
                    self.check_anonymous(scope)
                scope["tidings.principal"] = principal
            response = await endpoint(request)
        except TidingsError as exc:
            response = json_response(exc.to_wire(), exc.status, exc.headers)
        except ClientDisconnect:
            return  # it left while sending its body: there is nobody to answer
        except Exception as exc:
            response = await self._unexpected_error(request, exc)
        try:
            await response(scope, receive, send)
        finally:
            self.metrics.observe(
                scope["method"], template, response.status_code, time.perf_counter() - start
            )

    async def _stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        channel: str | None,
        what: str,
        job: bool = False,
    ) -> None:
        websocket = scope["type"] == "websocket"
        if websocket and (await receive())["type"] != "websocket.connect":
            return
        self.open_streams += 1
        self._streams_idle.clear()
        try:
            # Validate and build the stream first, then serve it from this frame: the
            # frames that built it are gone while it lives (memory per idle stream).
            stream = await self._open_stream(scope, receive, send, channel, what, job)
            await stream
        except TidingsError as exc:
            # Refused before the stream started: a JSON error, or an accepted-then-closed
            # socket with the reason (a refused handshake would only say 403).
            if websocket:
                code = 1011 if exc.status >= 500 else 1008
                await send({"type": "websocket.accept"})
                await send({"type": "websocket.close", "code": code, "reason": exc.message[:120]})
            else:
                await _send_error(send, exc)
        finally:
            self.open_streams -= 1
            if not self.open_streams:
                self._streams_idle.set()

    async def _open_stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        channel: str | None,
        what: str,
        job: bool,
    ) -> Coroutine[Any, Any, None]:
        """Check a stream request; the coroutine that serves it, or a TidingsError."""
        settings = self.settings
        if self.hub.closing:
            raise StoreError("server is shutting down: reconnect to another node or retry")
        principal = await self.auth.principal(scope["headers"])
        if principal.via_cookie and scope["type"] == "websocket":
            # A browser sends the cookie with any page's socket: the Origin must be ours.
            self.check_origin(scope)
        elif principal.session is None:
            self.check_anonymous(scope)
        session = principal.session
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        last_event_id = None
        for name, value in scope["headers"]:
            if name == b"last-event-id":
                last_event_id = value.decode("latin-1").strip() or None
        after = next((v for k, v in query if k == "after"), None) or None
        cursor = last_event_id or after
        if channel is None:
            # Each channel once, in the order it first appears: the stream's cursor holds
            # a position per channel of this list.
            names = list(dict.fromkeys(check_channel(v) for k, v in query if k == "channel"))
            if not names:
                raise BadRequest("name the channels: /v1/events?channel=a&channel=b")
            cap = settings.max_stream_channels
            if len(names) > cap:
                raise BadRequest(
                    f"a stream follows at most {cap} channels and this one names "
                    f"{len(names)}: open several streams, or raise the limit with "
                    "--max-stream-channels (TIDINGS_MAX_STREAM_CHANNELS)"
                )
            try:
                positions = decode_composite_cursor(cursor, names) if cursor else {}
                if after is not None and cursor is not after:
                    decode_composite_cursor(after, names)  # refused even when not used
            except ValueError as exc:
                raise InvalidCursor(str(exc)) from None
            for pos in positions.values():
                self.store.channels.cursor_key(pos)
            for name in names:
                await self.channels.check_subscribe(principal, name)
            requested = {n: positions.get(n) for n in names}
            return serve_sse(
                self.channels,
                send,
                receive,
                requested,
                True,
                settings.subscriber_buffer,
                session=session,
            )
        until: frozenset[str] | None = None
        if job:
            # A job's stream: from its first event unless resumed, ending after its last.
            found = await self.jobs.get(channel)
            if not principal.may_follow_job(found.submitted_by, found.type):
                raise Forbidden(f"job {found.id} is not yours to follow")
            channel, until = job_channel(channel), TERMINAL_STATUSES
            cursor = cursor or "0"
            if found.terminal:
                # Resumed at or past the terminal event (an EventSource reconnects by itself
                # after `close`), or nothing left to replay: nothing will follow, so say so
                # instead of pinging forever. The last id comes from the store, read after
                # the job: the job and its event are written together, so it is at least
                # the terminal event's (the hub may not have seen it yet); had the job been
                # retried since, it is past the cursor, and the stream replays the rest.
                last = (await self.channels.read(channel, "0", 0, fresh=True)).last_id or "0"
                if self.store.channels.cursor_key(cursor) >= self.store.channels.cursor_key(last):
                    reason = f"job {found.id} {found.status}: the stream is complete"
                    return end_at_once(send, what == "ws", reason)
        else:
            check_channel(channel)
            await self.channels.check_subscribe(principal, channel)
        for given in (cursor, after):  # `after` is refused when bad even beside Last-Event-ID
            if given is not None:
                self.store.channels.cursor_key(given)
        if what == "ws":
            return serve_ws(
                self.channels,
                send,
                receive,
                channel,
                cursor,
                settings.subscriber_buffer,
                settings.max_message_bytes,
                until,
                session,
                principal.may("publish", channel),
                settings.max_depth,
            )
        return serve_sse(
            self.channels,
            send,
            receive,
            {channel: cursor},
            False,
            settings.subscriber_buffer,
            until,
            session,
        )

    # -- access -------------------------------------------------------------------------

    def check_anonymous(self, scope: Scope) -> None:
        """Forbidden for an anonymous request from a web page of another origin, or (on a
        loopback server) one that names a host other than loopback.

        Anonymous requests act with every permission on a loopback server: without this,
        any website the user visits could use it (its requests carry an Origin), and a DNS
        name rebound to 127.0.0.1 would pass the same-origin test (its Host is that name).
        Clients that are not browsers send no Origin and are not affected.
        """
        origin = host = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
            elif name == b"host":
                host = value.decode("latin-1")
        if self._loopback and host is not None and not _loopback_host(host):
            allowed = self.settings.hosts
            name = host.rsplit(":", 1)[0].lower() if not host.endswith("]") else host
            if "*" not in allowed and name not in allowed:
                raise Forbidden(
                    f"Host {host!r} is not this loopback server's: connect to 127.0.0.1 or "
                    "localhost, authenticate, or list the name in --allowed-hosts"
                )
        if origin is not None:
            self.check_origin(scope)

    def check_origin(self, scope: Scope) -> None:
        """Forbidden unless the request's Origin is this server or an allowed CORS origin.

        Applied to cookie-authenticated state-changing requests and sockets (CSRF, CSWSH);
        bearer tokens are not sent by browsers on their own, so they need no such check.
        """
        origin = host = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1").rstrip("/")
            elif name == b"host":
                host = value.decode("latin-1")
        if origin is None:
            raise Forbidden("a cookie-authenticated request must carry an Origin header")
        scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
        if origin in self.settings.origins or (host is not None and origin == f"{scheme}://{host}"):
            return
        raise Forbidden(f"origin {origin!r} may not use this session: add it to --cors-origins")

    # -- life cycle ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.store.start()
        if self.relay is not None:
            self.relay.start()
        await self.jobs.start()
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._every(C.RETENTION_SWEEP_INTERVAL, self.channels.sweep)),
            loop.create_task(self._every(self.settings.heartbeat, self._heartbeat)),
            loop.create_task(self._every(C.LEASE_EXPIRY_INTERVAL, self.jobs.expire)),
            loop.create_task(self._every(C.JOB_SWEEP_INTERVAL, self._sweep_jobs)),
            loop.create_task(self._every(C.SESSION_SWEEP_INTERVAL, self._sweep_sessions)),
            loop.create_task(self._every(C.JOB_SWEEP_INTERVAL, self._sweep_credentials)),
        ]
        if self.settings.sessions == "memory":
            log.warning(
                "sessions are kept in this process only (--sessions memory): a restart logs "
                "everyone out and other nodes do not know them; use --sessions database"
            )
        handlers_task = None
        if self.handlers is not None:
            handlers_task = loop.create_task(
                self.handlers.run_local(self.jobs, self._handlers_stop), name="tidings-handlers"
            )
        self.ready = True
        log.info("tidings ready on store %s", _redacted(self.settings.store))
        try:
            yield
        finally:
            self.ready = False
            self.drain("server shutting down")
            if handlers_task is not None:
                # In-process handlers finish their running jobs (their own drain timeout).
                await asyncio.gather(handlers_task, return_exceptions=True)
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            if self.relay is not None:
                await self.relay.stop()
            await self.store.close()

    async def _heartbeat(self) -> None:
        self.hub.heartbeat()

    async def _sweep_sessions(self) -> None:
        """End the streams of sessions that were revoked or expired; forget old sessions."""
        now = time.time()
        self.auth.sweep_memory(now)
        sessions = self.hub.sessions()
        if sessions:
            for session in await self.auth.ended(sessions, now):
                self.hub.close_session(session, "session revoked or expired: log in again")

    async def _sweep_credentials(self) -> None:
        await self.store.auth.sweep_credentials(time.time())

    async def _sweep_jobs(self) -> None:
        await self.jobs.sweep(self.settings.job_ttl)

    @staticmethod
    async def _every(interval: float, fn: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await fn()
            except Exception:
                log.exception("background job %s failed; will retry", getattr(fn, "__name__", fn))

    async def wait_streams_closed(self, seconds: float) -> None:
        """After `drain`, give the streams up to `seconds` to send their closing frames."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._streams_idle.wait(), seconds)

    def drain(self, reason: str) -> None:
        """Begin shutdown: end every stream with `reason` and answer every parked long poll."""
        self.ready = False
        self._handlers_stop.set()
        self.hub.close_all(reason)
        self.jobs.close()

    # -- operational endpoints ----------------------------------------------------------

    async def _healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def _readyz(self, request: Request) -> Response:
        if not self.ready:
            return json_response({"status": "not ready", "reason": "starting or draining"}, 503)
        try:
            await self.store.ping()
        except TidingsError as exc:
            return json_response({"status": "not ready", "reason": exc.message}, 503)
        return json_response({"status": "ready", "store": self.settings.store.split("://")[0]})

    async def _metrics(self, request: Request) -> Response:
        require_admin(request)
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")

    async def _openapi(self, request: Request) -> Response:
        return json_response(openapi_document())

    async def _docs(self, request: Request) -> Response:
        return HTMLResponse(DOCS_HTML)

    # -- errors -------------------------------------------------------------------------

    async def _tidings_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TidingsError)  # noqa: S101 - registered for TidingsError only
        return json_response(exc.to_wire(), exc.status, exc.headers)

    async def _unserved_method(self, scope: Scope, send: Send, allowed: Allowed) -> None:
        """A known path asked with a method no endpoint serves there.

        OPTIONS: 204 with the path's `Allow` (a CORS preflight never gets here: the CORS
        layer answers it). A GET without the upgrade on a WebSocket path: 426 naming the
        upgrade (RFC 9110 §15.5.22). Anything else: 405 with the same `Allow` (§15.5.6).
        """
        start = time.perf_counter()
        method: str = scope["method"]
        headers = [(b"allow", allowed.allow.encode())]
        body = b""
        if method == "OPTIONS":
            status = 204
        else:
            if allowed.websocket and method == "GET":
                status, code = 426, "upgrade_required"
                message = f"{scope['path']} is a WebSocket: connect with a WebSocket client"
                headers += [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
            else:
                status, code = 405, "method_not_allowed"
                message = f"{method} is not allowed on {scope['path']}: use {allowed.allow}"
            body = encode_json({"error": {"code": code, "message": message}})
            headers += [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ]
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.observe(method, allowed.template, status, time.perf_counter() - start)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)  # noqa: S101 - registered for HTTPException only
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = exc.detail
        headers = exc.headers
        if exc.status_code == 404:
            message = f"no endpoint {request.url.path}: see /openapi.json for the API"
        elif exc.status_code == 405:
            # Known paths are answered by _unserved_method; should Starlette still say 405,
            # its Allow (one route's methods) is replaced by the whole path's.
            allowed = self.router.allowed(request.url.path)
            if allowed is not None:
                headers = {**(headers or {}), "allow": allowed.allow}
            message = f"{request.method} is not allowed on {request.url.path}"
        return json_response(
            {"error": {"code": code, "message": message}}, exc.status_code, headers
        )

    async def _unexpected_error(self, request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return json_response(
            {
                "error": {
                    "code": "internal_error",
                    "message": "unexpected server error; see the server log",
                }
            },
            500,
        )


class LocalHandlers(Protocol):
    """What the app needs of in-process handlers (a `tidings.Worker`)."""

    async def run_local(self, service: JobService, stop: asyncio.Event) -> None:
        """Lease and run jobs from `service` until `stop` is set, then drain."""


def load_handlers(spec: str) -> LocalHandlers:
    """Import `MODULE:OBJ` (a `tidings.Worker`); ValueError/TypeError saying what is wrong."""
    obj = load_object(spec, "handlers")
    if not callable(getattr(obj, "run_local", None)):
        raise TypeError(f"handlers {spec!r} is not a tidings.Worker (it has no run_local)")
    return cast(LocalHandlers, obj)


def create_app(
    settings: Settings | None = None,
    store: Store | None = None,
    handlers: LocalHandlers | None = None,
) -> TidingsApp:
    """Build the ASGI app from settings (default: from TIDINGS_* variables).

    `settings.handlers` (`MODULE:OBJ`) is loaded when `handlers` is not given.
    """
    settings = settings or Settings.from_env()
    if handlers is None and settings.handlers:
        handlers = load_handlers(settings.handlers)
    return TidingsApp(settings, store, handlers)
