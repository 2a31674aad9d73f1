"""Running the app under uvicorn: one process, or N processes on one port (`--workers`).

The listening sockets are bound first (`listen`), before the app starts: a port in use
or not permitted is one clear error and nothing is logged as ready, and "ready" is
only logged once the port accepts connections.

The accept queue: thousands of clients connecting at once (every browser of a page
reconnecting after a deploy) queue in the kernel while the server accepts them. Linux
caps a socket's queue at net.core.somaxconn (4096 by default); past it, a SYN is
dropped and that client waits a second for its retransmission. Where the cap is below
BACKLOG, `listen` binds a group of SO_REUSEPORT sockets on the one port instead of one
socket (the kernel spreads new connections over them by their addresses), so the
group queues BACKLOG connections on a default kernel. A plain bind comes first, so a
port another process holds is still refused (docs/decisions/0026).

One process: `run(settings, socks)` builds the app and serves it with a uvicorn
server that ends tidings' streams before it waits for connections (graceful drain).

N processes (`--workers N`, a shared store only): `supervise(settings, socks)` starts N
spawned children that each serve the same sockets (the kernel spreads connections over
them), forwards SIGTERM/SIGINT to them, restarts one that dies, and exits once all
have drained.

Logging is `tidings.server.logs`' in every process: uvicorn gets no config of its own.
"""

from __future__ import annotations

import errno
import gc
import logging
import math
import multiprocessing
import signal
import socket
import ssl
import sys
import time
from pathlib import Path
from typing import Any

import uvicorn

from tidings.server import constants as C
from tidings.server.app import TidingsApp, create_app
from tidings.server.http.limits import ConnectionLimits, connection_capacity, raise_file_limit
from tidings.server.http.protocol import TidingsHttpProtocol
from tidings.server.http.ws_protocol import TidingsWebSocketProtocol
from tidings.server.logs import configure_logging
from tidings.server.settings import Settings

__all__ = [
    "PortUnavailable",
    "TidingsConfig",
    "TidingsServer",
    "check_tls",
    "listen",
    "listeners",
    "run",
    "supervise",
]

# Connections the kernel queues for the server while it is busy accepting others.
BACKLOG = 16384
# Most listening sockets one port is split into when somaxconn caps each one's queue.
MAX_LISTENERS = 8
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")

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
    """uvicorn's config, carrying the server's connection limits to its protocols; with
    TLS, it offers HTTP/2 by ALPN before HTTP/1.1 (http/h2_protocol.py)."""

    tidings_limits: ConnectionLimits

    def load(self) -> None:
        super().load()
        if self.ssl is not None:
            self.ssl.set_alpn_protocols(["h2", "http/1.1"])


def uvicorn_config(
    app: Any, settings: Settings, limits: ConnectionLimits | None = None
) -> TidingsConfig:
    config = TidingsConfig(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        # The dispatcher returns its road's coroutine from a plain __call__ (dispatch.py):
        # said here, since uvicorn would guess ASGI 2 from that.
        interface="asgi3",
        # httptools, sending each response's head and body in one write (http/protocol.py).
        # Within the server's limits (http/limits.py): request line and header caps,
        # head/body/keep-alive deadlines, connection caps.
        http=TidingsHttpProtocol,
        # uvicorn's sans-I/O WebSocket, which stops reading while its client does not read.
        ws=TidingsWebSocketProtocol,
        # A ping every 20 s; a client that answers none within 20 s more is closed.
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        # No permessage-deflate: it compresses every frame for each connection alone, so a
        # fan-out could no longer write one batch's frames, built once, to every socket
        # (docs/decisions/0024).
        ws_per_message_deflate=False,
        lifespan="on",
        # No formatters or handlers of uvicorn's own: its records reach the root logger,
        # which configure_logging set up (one format for every line).
        log_config=None,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        timeout_graceful_shutdown=int(C.SHUTDOWN_GRACE),
        ws_max_size=settings.max_message_bytes + 4096,
        backlog=BACKLOG,
        timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]
        # X-Forwarded-For/-Proto are believed only from the proxies the operator names
        # (uvicorn's middleware, a call per request, so only then); no `server:` header
        # advertising the stack.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        server_header=False,
        ssl_certfile=settings.ssl_certfile or None,
        ssl_keyfile=settings.ssl_keyfile or None,
    )
    if limits is not None:
        config.tidings_limits = limits
    return config


class PortUnavailable(OSError):
    """The server's address cannot be listened on; the message says why and what to do."""


def listen(settings: Settings) -> list[socket.socket]:
    """Bind and listen on the server's address; PortUnavailable says why not.

    Listening before the app starts queues the connections that arrive while it starts
    (served once it is ready) instead of refusing them. One socket where the kernel lets
    it queue BACKLOG connections, else a group of SO_REUSEPORT sockets (`listeners`).
    """
    host, port = settings.host, settings.port
    # An IPv6 literal needs an IPv6 socket; a name or IPv4 address, IPv4 (as uvicorn).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    count = listeners()
    if count == 1:
        sock = _bind(family, host, port, reuse_port=False, backlog=BACKLOG)
        sock.set_inheritable(True)
        return [sock]
    # A plain socket first: its bind fails on a port any other socket holds, SO_REUSEPORT
    # or not, so two servers never end up sharing one port.
    sock = _bind(family, host, port, reuse_port=False)
    port = sock.getsockname()[1]  # the port the kernel chose, for --port 0
    # Unlistened, the probe leaves nothing behind: the group binds the port at once.
    sock.close()
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            member = _bind(family, host, port, reuse_port=True, backlog=BACKLOG)
            group.append(member)
            member.set_inheritable(True)
    except BaseException:
        for member in group:
            member.close()
        raise
    log.debug("listening on %d SO_REUSEPORT sockets (somaxconn caps each queue)", count)
    return group


def listeners(somaxconn: int | None = None) -> int:
    """How many sockets the port is split into: enough that their queues, each capped at
    net.core.somaxconn, hold BACKLOG connections together (at most MAX_LISTENERS); one
    where the cap is high enough, unknown, or SO_REUSEPORT is missing."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return 1
    if somaxconn is None:
        try:
            somaxconn = int(SOMAXCONN.read_text())
        except (OSError, ValueError):
            return 1
    if somaxconn <= 0 or somaxconn >= BACKLOG:
        return 1
    return min(MAX_LISTENERS, math.ceil(BACKLOG / somaxconn))


def _bind(
    family: socket.AddressFamily,
    host: str,
    port: int,
    *,
    reuse_port: bool,
    backlog: int | None = None,
) -> socket.socket:
    """A socket bound to (host, port), listening when `backlog` is given; PortUnavailable
    (the socket closed) says why not."""
    where = f"port {port} on {host}"
    again = "pass --port / TIDINGS_PORT"
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if backlog is not None:
            # With SO_REUSEADDR, another socket bound to the port too that listens first
            # makes this fail, not the bind: the same error, the same message.
            sock.listen(backlog)
    except socket.gaierror as exc:
        sock.close()
        raise PortUnavailable(
            f"cannot listen on {host}: the name does not resolve ({exc.strerror}); "
            "pass an address of this machine with --host / TIDINGS_HOST"
        ) from None
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            message = f"{where} is in use: stop the other process or {again}"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            message = (
                f"{where} is not permitted: ports below 1024 need root or "
                f"CAP_NET_BIND_SERVICE; {again} (1024 or above)"
            )
        elif exc.errno == errno.EADDRNOTAVAIL:
            message = (
                f"cannot listen on {host}: it is not an address of this machine; "
                "pass one with --host / TIDINGS_HOST (127.0.0.1, or 0.0.0.0 for every one)"
            )
        else:
            message = f"cannot listen on {where}: {exc.strerror or exc}"
        raise PortUnavailable(message) from None
    return sock


class _EncryptedKey(Exception):
    """The TLS key asked for a pass phrase."""


def _no_pass_phrase() -> str:
    raise _EncryptedKey


def check_tls(settings: Settings) -> None:
    """Load the TLS certificate and key as uvicorn will; ValueError says what is wrong.

    An encrypted key is refused: uvicorn would load it once more and OpenSSL would ask
    for its pass phrase on the terminal each time (or fail without one, as under a
    service manager). The check's own load asks nobody: its pass phrase callback raises.
    """
    if not settings.ssl_certfile:
        return
    key = settings.ssl_keyfile or settings.ssl_certfile
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(
            settings.ssl_certfile, settings.ssl_keyfile or None, password=_no_pass_phrase
        )
    except _EncryptedKey:
        raise ValueError(
            f"TLS: the key {key!r} is encrypted; encrypted private keys are not supported: "
            f"decrypt it with `openssl pkey -in {key} -out {key}.plain` and pass that file"
        ) from None
    except ssl.SSLError as exc:
        raise ValueError(
            f"TLS: the certificate {settings.ssl_certfile!r} and key {key!r} do not load together "
            f"({exc.reason or exc}): both must be PEM and the key the certificate's"
        ) from None
    except OSError as exc:
        raise ValueError(
            f"TLS: cannot read {exc.filename or settings.ssl_certfile!r}: {exc.strerror}; "
            "check --ssl-certfile / --ssl-keyfile (TIDINGS_SSL_CERTFILE / TIDINGS_SSL_KEYFILE)"
        ) from None


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


def run(settings: Settings, socks: list[socket.socket], app: TidingsApp | None = None) -> bool:
    """Serve on `socks` (from `listen`) until told to stop; False when the app did not start."""
    configure_logging(settings.log_level, settings.log_format)
    # Thousands of long-lived streams make each full collection walk every connection's
    # objects; collect young objects less often (see docs/decisions/0003-gc-thresholds.md).
    gc.set_threshold(*C.GC_THRESHOLDS)
    # The SQLite writer thread needs the GIL for a moment per statement: with the default
    # hand-over interval a publish waits behind a long fan-out (docs/decisions/0007), so
    # the hub shortens it while one runs; otherwise the default spares a busy loop the
    # hand-overs (docs/decisions/0024).
    sys.setswitchinterval(C.SWITCH_INTERVAL_IDLE)
    tidings_app = app or create_app(settings)
    tidings_app.hub.switch = (C.SWITCH_INTERVAL, C.SWITCH_INTERVAL_IDLE)
    limits = connection_limits(settings)
    # The dispatcher itself: one call less per request than through TidingsApp.__call__.
    server = TidingsServer(uvicorn_config(tidings_app.dispatch, settings, limits))
    server.tidings = tidings_app
    tidings_app.metrics.watch_connections(limits)
    server.run(sockets=socks)
    return bool(server.started)


def _child(settings: Settings, socks: list[socket.socket]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; SIGTERM drains
    if not run(settings, socks):
        sys.exit(3)


def supervise(settings: Settings, socks: list[socket.socket]) -> int:
    """Serve with `settings.workers` processes on `socks` (from `listen`); the exit status."""
    workers = settings.workers
    ctx = multiprocessing.get_context("spawn")
    stopping = False

    def start() -> Any:
        proc = ctx.Process(target=_child, args=(settings, socks), daemon=False)
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
    for sock in socks:
        sock.close()
    return 1 if failures and any(p.exitcode == 3 for p in procs) else 0
