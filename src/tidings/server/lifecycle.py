"""The server's life: start, the background loops while it runs, drain and stop.

Start (the ASGI lifespan): open the store, start the relay and the job service, start
the background loops (retention sweep, heartbeats, lease expiry, job, session and
credential sweeps, the scheduler), the in-process handlers and the bridges, then report
ready. Stop: end every stream and parked long poll (`drain`), stop the bridges, let
in-process handlers finish their jobs, cancel the loops, stop the relay, close the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from tidings.server import constants as C
from tidings.server.auth import AuthService
from tidings.server.bridges import Bridges
from tidings.server.channels import ChannelService
from tidings.server.hub import Hub
from tidings.server.jobs import JobService
from tidings.server.relay import Relay
from tidings.server.schedules import ScheduleService
from tidings.server.settings import Settings
from tidings.server.stores.base import Store

__all__ = ["Lifecycle", "LocalHandlers", "OpenStreams", "redacted"]

log = logging.getLogger("tidings")


class LocalHandlers(Protocol):
    """What the app needs of in-process handlers (a `tidings.Worker`)."""

    async def run_local(self, service: JobService, stop: asyncio.Event) -> None:
        """Lease and run jobs from `service` until `stop` is set, then drain."""


def redacted(url: str) -> str:
    """A store URL fit for a log line: its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class OpenStreams:
    """How many streams are being served; shutdown waits for them to say goodbye."""

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def opened(self) -> None:
        """A stream began."""
        self.count += 1
        self._idle.clear()

    def closed(self) -> None:
        """A stream ended."""
        self.count -= 1
        if not self.count:
            self._idle.set()

    async def wait_closed(self, seconds: float) -> None:
        """Return once no stream is open, or after `seconds`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), seconds)


async def _every(interval: float, fn: Callable[[], Awaitable[Any]]) -> None:
    """Run `fn` every `interval` seconds; a failure is logged and retried next time."""
    while True:
        await asyncio.sleep(interval)
        try:
            await fn()
        except Exception:
            log.exception("background job %s failed; will retry", getattr(fn, "__name__", fn))


class Lifecycle:
    """Starts and stops one server's collaborators, and runs its background loops.

    Args:
        settings: the intervals and what to log.
        store: opened first, closed last.
        hub: heartbeats, and the streams drained at shutdown.
        channels: the retention sweep.
        jobs: lease expiry, the job sweep, the dependency repair, and the long polls
            drained at shutdown.
        auth: the session and credential sweeps.
        relay: the cross-node follower of a shared store (None otherwise).
        handlers: in-process job handlers to run while the server runs (None: none).
        schedules: the scheduler, run on every node (None: schedules do not fire here).
        bridges: the bridges to message buses, started once the store is open, stopped
            before it closes (None: none).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        hub: Hub,
        channels: ChannelService,
        jobs: JobService,
        auth: AuthService,
        relay: Relay | None,
        handlers: LocalHandlers | None,
        schedules: ScheduleService | None = None,
        bridges: Bridges | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.channels = channels
        self.jobs = jobs
        self.auth = auth
        self.relay = relay
        self.handlers = handlers
        self.schedules = schedules
        self.bridges = bridges
        self.open_streams = OpenStreams()
        self.ready = False
        self._handlers_stop = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """The ASGI lifespan: everything started on entry, stopped on exit."""
        await self.store.start()
        if self.relay is not None:
            self.relay.start()
        await self.jobs.start()
        loop = asyncio.get_running_loop()
        settings = self.settings
        self._background = [
            loop.create_task(_every(C.RETENTION_SWEEP_INTERVAL, self.channels.sweep)),
            loop.create_task(_every(settings.heartbeat, self._heartbeat)),
            loop.create_task(_every(C.LEASE_EXPIRY_INTERVAL, self.jobs.expire)),
            loop.create_task(_every(C.JOB_SWEEP_INTERVAL, self._sweep_jobs)),
            loop.create_task(_every(C.DEPENDENCY_REPAIR_INTERVAL, self.jobs.repair)),
            loop.create_task(_every(C.SESSION_SWEEP_INTERVAL, self._sweep_sessions)),
            loop.create_task(_every(C.JOB_SWEEP_INTERVAL, self._sweep_credentials)),
        ]
        if self.schedules is not None:
            # Its first look comes at once, before the first job sweep (`_every` waits
            # first): a slot submitted before a stop is advanced past while its job is
            # still there to answer a repeat (schedules.py, the exactly-once guarantee).
            self._background.append(
                loop.create_task(self.schedules.run(), name="tidings-scheduler")
            )
        if settings.sessions == "memory":
            log.warning(
                "sessions are kept in this process only (--sessions memory): a restart logs "
                "everyone out and other nodes do not know them; use --sessions database"
            )
        handlers_task = None
        if self.handlers is not None:
            handlers_task = loop.create_task(
                self.handlers.run_local(self.jobs, self._handlers_stop), name="tidings-handlers"
            )
        if self.bridges is not None:
            self.bridges.start()
        self.ready = True
        # The port is already listening (runner.listen binds it first): this line means accepting.
        scheme = "https" if settings.ssl_certfile else "http"
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        log.info(
            "tidings ready on %s://%s:%d, store %s",
            scheme,
            host,
            settings.port,
            redacted(settings.store),
        )
        try:
            yield
        finally:
            self.ready = False
            self.drain("server shutting down")
            if self.bridges is not None:
                # First: no bus message is taken in that could not be committed; what a
                # bridge had not acknowledged stays on its bus.
                await self.bridges.stop()
            if handlers_task is not None:
                # In-process handlers finish their running jobs (their own drain timeout).
                await asyncio.gather(handlers_task, return_exceptions=True)
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            if self.relay is not None:
                await self.relay.stop()
            await self.store.close()

    def drain(self, reason: str) -> None:
        """Begin shutdown: end every stream with `reason` and answer every parked long poll."""
        self.ready = False
        self._handlers_stop.set()
        self.hub.close_all(reason)
        self.jobs.close()

    async def wait_streams_closed(self, seconds: float) -> None:
        """After `drain`, give the streams up to `seconds` to send their closing frames."""
        await self.open_streams.wait_closed(seconds)

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
