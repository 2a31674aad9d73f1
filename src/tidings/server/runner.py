"""Running the app under uvicorn: one process, or N processes on one port (`--workers`).

One process: `run(settings, options)` builds the app and serves it with a uvicorn
server that ends tidings' streams before it waits for connections (graceful drain).

N processes (`--workers N`, a shared store only): the supervisor binds the listening
socket once and starts N spawned children that each serve it (the kernel spreads
connections over them), forwards SIGTERM/SIGINT to them, restarts one that dies, and
exits once all have drained.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import signal
import socket
import sys
import time
from typing import Any

import uvicorn

from tidings.server import constants as C
from tidings.server.app import TidingsApp, create_app
from tidings.server.http.limits import ConnectionLimits, connection_capacity, raise_file_limit
from tidings.server.http.protocol import TidingsHttpProtocol
from tidings.server.http.ws_protocol import TidingsWebSocketProtocol
from tidings.server.settings import Settings

__all__ = ["TidingsConfig", "TidingsServer", "run", "supervise"]

log = logging.getLogger("tidings.server")


class TidingsServer(uvicorn.Server):
    """uvicorn's server, told to end tidings' streams before it waits for connections."""

    tidings: TidingsApp

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # stop accepting first, so no new stream slips in
        self.tidings.drain("server shutting down")
        await self.tidings.wait_streams_closed(C.SHUTDOWN_GRACE / 2)
        await super().shutdown(sockets)


class TidingsConfig(uvicorn.Config):
    """uvicorn's config, carrying the server's connection limits to its protocols."""

    tidings_limits: ConnectionLimits


def uvicorn_config(
    app: Any,
    settings: Settings,
    options: dict[str, Any],
    limits: ConnectionLimits | None = None,
) -> TidingsConfig:
    config = TidingsConfig(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # httptools, sending each response's head and body in one write (http/protocol.py).
        # Within the server's limits (http/limits.py): request line and header caps,
        # head/body/keep-alive deadlines, connection caps.
        http=TidingsHttpProtocol,
        # uvicorn's sans-I/O WebSocket, which stops reading while its client does not read.
        ws=TidingsWebSocketProtocol,
        # A ping every 20 s; a client that answers none within 20 s more is closed.
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="on",
        log_level=settings.log_level,
        access_log=bool(options.get("access_log")),
        timeout_graceful_shutdown=int(C.SHUTDOWN_GRACE),
        ws_max_size=settings.max_message_bytes + 4096,
        backlog=8192,
        timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]
        # No X-Forwarded-* rewriting (a middleware call per request; tidings has no use for
        # the client address yet) and no `server:` header advertising the stack.
        proxy_headers=False,
        server_header=False,
        ssl_certfile=options.get("ssl_certfile"),
        ssl_keyfile=options.get("ssl_keyfile"),
    )
    if limits is not None:
        config.tidings_limits = limits
    return config


def connection_limits(settings: Settings) -> ConnectionLimits:
    """Raise the open-file limit, work out the connection cap, and say what they are."""
    file_limit = raise_file_limit()
    capacity = connection_capacity(file_limit, settings.max_connections)
    if capacity > file_limit:
        log.warning(
            "--max-connections %d is over the open-file limit (%d): past it, new "
            "connections are accepted and closed at once (raise `ulimit -n`)",
            capacity,
            file_limit,
        )
    log.info("serving up to %d connections (file limit %d)", capacity, file_limit)
    return ConnectionLimits(settings, capacity)


def run(
    settings: Settings,
    options: dict[str, Any],
    sockets: list[socket.socket] | None = None,
    app: TidingsApp | None = None,
) -> bool:
    """Serve until told to stop; False when the server could not start."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    # Thousands of long-lived streams make each full collection walk every connection's
    # objects; collect young objects less often (see docs/decisions/0003-gc-thresholds.md).
    gc.set_threshold(*C.GC_THRESHOLDS)
    # The SQLite writer thread needs the GIL for a moment per statement; with the default
    # hand-over interval a publish waits behind a long fan-out (docs/decisions/0007).
    sys.setswitchinterval(C.SWITCH_INTERVAL)
    tidings_app = app or create_app(settings)
    limits = connection_limits(settings)
    # The dispatcher itself: one call less per request than through TidingsApp.__call__.
    server = TidingsServer(uvicorn_config(tidings_app.dispatch, settings, options, limits))
    server.tidings = tidings_app
    tidings_app.metrics.watch_connections(limits)
    server.run(sockets=sockets)
    return bool(server.started)


def _child(settings: Settings, options: dict[str, Any], sock: socket.socket) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; SIGTERM drains
    if not run(settings, options, [sock]):
        sys.exit(3)


def supervise(workers: int, settings: Settings, options: dict[str, Any]) -> int:
    """Serve with `workers` processes on one port; the exit status."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
    sock = uvicorn_config(None, settings, options).bind_socket()
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> Any:
        proc = ctx.Process(target=_child, args=(settings, options, sock), daemon=False)
        proc.start()
        return proc

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()  # SIGTERM: each child drains its streams

    procs = [start() for _ in range(workers)]
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("tidings: %d worker processes on %s:%d", workers, settings.host, settings.port)
    failures = 0
    while not stopping:
        time.sleep(0.25)
        for i, proc in enumerate(procs):
            if stopping or proc.is_alive():
                continue
            failures += 1
            if proc.exitcode == 3 or failures > workers * 10:
                log.error("a worker process could not start: stopping")
                on_signal(signal.SIGTERM, None)
                break
            log.warning(
                "worker process %s exited with %s: starting another", proc.pid, proc.exitcode
            )
            procs[i] = start()
    for proc in procs:
        proc.join(C.SHUTDOWN_GRACE + 5)
        if proc.is_alive():
            proc.kill()
            proc.join()
    sock.close()
    return 1 if failures and any(p.exitcode == 3 for p in procs) else 0
