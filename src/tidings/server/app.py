"""The ASGI application, built by `create_app(settings)`: where the server's parts are made
and joined, in dependency order — store, hub, services, relay, lifecycle, endpoints,
dispatcher.

What each part does lives in its own module: tidings.server.dispatch (which road a
request takes), tidings.server.streams (stream requests), tidings.server.policy (the
host/origin gate), tidings.server.lifecycle (start, background loops, drain),
tidings.server.ops (health, readiness, metrics, API description) and
tidings.server.http.errors (errors as answers).
"""

from __future__ import annotations

from typing import cast

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from tidings.loader import load_object
from tidings.server.auth import AuthService
from tidings.server.bridges import Bridges, parse_bridges
from tidings.server.channels import ChannelService
from tidings.server.dispatch import Dispatcher
from tidings.server.http import admin as admin_routes
from tidings.server.http import auth as auth_routes
from tidings.server.http import channels as channel_routes
from tidings.server.http import jobs as job_routes
from tidings.server.http import lab as lab_routes
from tidings.server.http import rpc as rpc_routes
from tidings.server.http import schedules as schedule_routes
from tidings.server.http import workers as worker_routes
from tidings.server.http.errors import exception_handlers
from tidings.server.http.router import Router
from tidings.server.hub import Hub
from tidings.server.jobs import JobService
from tidings.server.lifecycle import Lifecycle, LocalHandlers
from tidings.server.metrics import Metrics
from tidings.server.ops import Ops
from tidings.server.policy import AccessPolicy
from tidings.server.relay import Followable, Relay
from tidings.server.schedules import ScheduleService
from tidings.server.settings import Settings
from tidings.server.static import static_routes
from tidings.server.stores import open_store
from tidings.server.stores.base import Retention, Store
from tidings.server.streams import Streams

__all__ = ["LocalHandlers", "TidingsApp", "create_app", "load_handlers"]


class TidingsApp:
    """The whole server as one ASGI callable.

    Args:
        settings: what to serve and how.
        store: a store to use instead of the one named by `settings.store` (tests).
        handlers: a `tidings.Worker` whose handlers run inside this server, leasing jobs
            straight from the job service (the single-process case: no worker process).

    `dispatch` is the ASGI callable itself; a server that runs this app (runner.py) is
    handed `dispatch` directly, saving the call through `__call__`.
    """

    def __init__(
        self, settings: Settings, store: Store | None = None, handlers: LocalHandlers | None = None
    ) -> None:
        self.settings = settings
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
        self.schedules = ScheduleService(self.store, self.jobs, settings.max_depth)
        self.auth = AuthService(self.store.auth, settings)
        self.relay = self._relay() if self.store.shared else None
        self.metrics = Metrics(self.hub, self.store, self.auth)
        self.metrics.watch_jobs(self.jobs.counters)
        self.metrics.watch_schedules(self.schedules.counters)
        # Bridge URLs are checked here, before the port is bound: a mistake stops the start.
        self.bridges = Bridges(
            parse_bridges(
                settings.bridges, settings.max_message_bytes, settings.max_depth, settings.workers
            ),
            self.channels,
            self.jobs,
        )
        self.metrics.watch_bridges(self.bridges)
        self.lifecycle = Lifecycle(
            settings,
            self.store,
            self.hub,
            self.channels,
            self.jobs,
            self.auth,
            self.relay,
            handlers,
            self.schedules,
            self.bridges,
        )
        ops = Ops(settings, self.store, self.lifecycle, self.metrics)
        routes = [
            *channel_routes.routes,
            *job_routes.routes,
            *worker_routes.routes,
            *schedule_routes.routes,
            *rpc_routes.routes,
            *auth_routes.routes,
            *admin_routes.routes,
            *lab_routes.routes,
            *ops.routes,
            *static_routes(settings.static),
        ]
        self.router = router = Router(routes)

        def allow_of(path: str) -> str | None:
            allowed = router.allowed(path)
            return None if allowed is None else allowed.allow

        self.starlette = Starlette(
            routes=routes,
            exception_handlers=exception_handlers(allow_of),
            lifespan=self.lifecycle.lifespan,
        )
        # What handlers reach through `request.app.state`.
        self.starlette.state.settings = settings
        self.starlette.state.channels = self.channels
        self.starlette.state.jobs = self.jobs
        self.starlette.state.schedules = self.schedules
        self.starlette.state.auth = self.auth
        self.starlette.state.bridges = self.bridges
        policy = AccessPolicy(settings)
        streams = Streams(
            settings,
            self.store,
            self.channels,
            self.jobs,
            self.auth,
            policy,
            self.lifecycle.open_streams,
        )
        self.dispatch = Dispatcher(
            router,
            streams,
            self.auth,
            policy,
            self.metrics,
            self.starlette,
            self.metrics.middleware(self.starlette),
            settings.origins,
        )

    def _relay(self) -> Relay:
        """The follower of a shared store, and the services' hooks into it."""
        # A shared store's channel part is followable (stores/redis); the base class does
        # not declare what only shared stores offer.
        relay = Relay(
            cast(Followable, self.store.channels),
            self.hub,
            self.jobs.notify_ready,
            self.jobs.parked,
        )
        # The services and the relay need each other (the relay wakes parked lease
        # requests; the services tell it what to follow), so these are joined here.
        self.channels.relay_watch = self.jobs.relay_watch = relay.watch
        self.channels.relay_forget = relay.forget
        self.jobs.on_park = relay.kick
        return relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.dispatch(scope, receive, send)

    @property
    def ready(self) -> bool:
        """Started, and not draining."""
        return self.lifecycle.ready

    def drain(self, reason: str) -> None:
        """Begin shutdown: end every stream with `reason` and answer every parked long poll."""
        self.lifecycle.drain(reason)

    async def wait_streams_closed(self, seconds: float) -> None:
        """After `drain`, give the streams up to `seconds` to send their closing frames."""
        await self.lifecycle.wait_streams_closed(seconds)


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
