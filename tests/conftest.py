"""Fixtures: real tidings servers on free loopback ports, started as subprocesses."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx._transports.default
import pytest
from playwright.sync_api import sync_playwright

from tests.hostile.browser import LoopbackPage, launch

# httpx gives every client made without an SSL context of its own a new one, loading
# certifi's CA bundle into it: about 20 ms of CPU, even for a client of a plain http://
# URL. The tests make such clients by the thousand (many in loops that poll a server
# every 50 ms), and that load was most of their processes' CPU. The default context is
# made once and shared; a verify= of another kind (a TLS server's certificate) still gets
# its own.
# (A private function of httpx: should a later httpx move it, the tests only run slower.)
_DEFAULT_SSL_CONTEXT = httpx.create_ssl_context()
_create_ssl_context = getattr(httpx._transports.default, "create_ssl_context", None)


def _shared_default_ssl_context(
    verify: ssl.SSLContext | str | bool = True,
    cert: Any = None,
    trust_env: bool = True,
) -> ssl.SSLContext:
    if verify is True and cert is None and trust_env:
        return _DEFAULT_SSL_CONTEXT
    assert _create_ssl_context is not None  # installed only when found
    return _create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)


if _create_ssl_context is not None:
    httpx._transports.default.create_ssl_context = _shared_default_ssl_context


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` different TCP ports free on 127.0.0.1 right now (held together while chosen:
    two free_port() calls may name the same port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]


class _PortTaken(Exception):
    """The port chosen for a server was bound by someone else before it started."""


class ServerProcess:
    """A `tidings serve` subprocess: start, stop with a signal, kill, start again.

    The port and store stay the same across restarts, so clients can reconnect.
    """

    def __init__(
        self, store: str, log_path: Path, extra_args: list[str], env: dict[str, str]
    ) -> None:
        self.store = store
        self.port = free_port()
        # With --ssl-certfile the server speaks TLS: clients trust that certificate.
        cert = next(
            (extra_args[i + 1] for i, a in enumerate(extra_args[:-1]) if a == "--ssl-certfile"),
            None,
        )
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=cert) if cert else True
        )
        self._tls = "s" if cert else ""
        self._use_port(self.port)
        self.started_once = False
        self.log_path = log_path
        self.extra_args = extra_args
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def _use_port(self, port: int) -> None:
        self.port = port
        self.url = f"http{self._tls}://127.0.0.1:{port}"
        self.ws_url = f"ws{self._tls}://127.0.0.1:{port}"

    def start(self, timeout: float = 15.0) -> ServerProcess:
        """Start the server and wait until /healthz answers.

        A first start whose free port was taken meanwhile (by another test process, or
        an outgoing connection's ephemeral port) tries again on another; a restart keeps
        its port, which its clients reconnect to.
        """
        for _ in range(4):
            try:
                self._start(timeout)
            except _PortTaken:
                self._use_port(free_port())
                continue
            self.started_once = True
            return self
        raise RuntimeError(f"no free port could be bound:\n{self.log()}")

    def _start(self, timeout: float) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = [
            sys.executable, "-m", "tidings", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--store", self.store,
            *self.extra_args,
        ]  # fmt: skip
        env = {**os.environ, "TIDINGS_LOG_LEVEL": "warning", **self.env}
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                with self.log_path.open("rb") as log:
                    log.seek(logged)
                    said = log.read().decode(errors="replace")
                if not self.started_once and f"port {self.port} on 127.0.0.1 is in use" in said:
                    raise _PortTaken
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=1.0, verify=self.verify)
                if ready.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not become ready in {timeout}s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig` and wait for the process to end; returns its exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise RuntimeError(
                    f"server ignored signal {sig} for {timeout}s:\n{self.log()}"
                ) from None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no drain, no clean close."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, sig: int = signal.SIGTERM) -> ServerProcess:
        """Stop with `sig` and start again on the same port and store."""
        self.stop(sig)
        return self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]


ServerFactory = Callable[..., ServerProcess]


@pytest.fixture(scope="session")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and localhost) and its key, made by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is missing: install the Debian package openssl")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tidings_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Factory: `tidings_server(store="memory://", args=[...], env={...})` -> a running server.

    Every server started here is killed at the end of the test.
    """
    started: list[ServerProcess] = []

    def factory(
        store: str = "memory://", args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> ServerProcess:
        srv = ServerProcess(
            store, tmp_path / f"server-{len(started)}.log", list(args or []), dict(env or {})
        )
        started.append(srv)
        return srv.start()

    yield factory
    for srv in started:
        srv.kill()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store the server supports, as a URL (a fresh SQLite file or Redis key prefix
    per test)."""
    if request.param == "memory":
        return "memory://"
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    return f"sqlite:///{tmp_path / 'tidings.db'}"


class RedisProcess:
    """A private `redis-server` on a free loopback port (its data in `folder`).

    `appendfsync always` when `aof` is set: every acknowledged write is on disk, so a
    restart (`restart()`) keeps it.
    """

    def __init__(self, folder: Path, aof: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: `make test` installs it (Debian package "
                "redis-server); install it, or run the tests through make"
            )
        self.binary = binary
        self.folder = folder
        self.aof = aof
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisProcess:
        argv = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--save", "",
            "--appendonly", "yes" if self.aof else "no",
            "--appendfsync", "always",
            "--protected-mode", "yes",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.folder
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> RedisProcess:
        self.stop()
        return self.start()


@pytest.fixture(scope="session")
def redis_proc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """One private redis-server for the whole run; tests keep apart by key prefix."""
    proc = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield proc
    proc.stop()


@pytest.fixture
def redis_url(redis_proc: RedisProcess) -> str:
    """A store URL on the private Redis with a key prefix of this test's own."""
    return f"{redis_proc.url}?prefix=t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def browser_page() -> Iterator[LoopbackPage]:
    """A page of Debian's chromium (headless) that may only reach loopback.

    The test fails if chromium is missing, or if the page tried to reach another host
    (such requests are aborted). A fresh browser per test: nothing is shared between them.
    """
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = LoopbackPage(browser.new_context())
            yield page
        finally:
            browser.close()
    page.check()


# `make test` hands whole files to 4 processes (--dist loadfile); xdist would hand them out
# by their number of tests, which leaves files of few but long tests to the end, one
# process still busy while the others are done. These files, the longest of the suite
# (measured: tens of seconds to minutes each), go first; the others follow by number of
# tests, as xdist would order them.
LONGEST_FILES = (
    "tests/e2e/test_worker_sdk.py",
    "tests/e2e/test_workers_list.py",
    "tests/e2e/test_client.py",
    "tests/e2e/test_redis_nodes.py",
    "tests/e2e/test_cli_commands.py",
    "tests/e2e/test_cli_jobs.py",
    "tests/e2e/auth/test_sessions.py",
    "tests/e2e/bridges/test_outbound_amqp.py",
    "tests/hostile/test_http2.py",
    "tests/e2e/test_cli_channels.py",
    "tests/e2e/auth/test_users_and_tokens.py",
    "tests/e2e/auth/test_schedule_permissions.py",
    "tests/e2e/test_jobs_workers.py",
    "tests/hostile/test_schemathesis.py",
)


def pytest_configure(config: pytest.Config) -> None:
    # Under --dist loadfile, the order the test processes collect (below) is the order the
    # files are handed out in.
    if config.getoption("dist", "no") == "loadfile":
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist test process: the longest files first, then the others by their number
    of tests (most first); each file's tests keep their order."""
    if not hasattr(config, "workerinput"):
        return
    files: dict[str, list[pytest.Item]] = {}
    for item in items:
        files.setdefault(item.nodeid.split("::", 1)[0], []).append(item)
    rank = {path: i for i, path in enumerate(LONGEST_FILES)}
    order = sorted(files, key=lambda f: (rank.get(f, len(rank)), -len(files[f])))
    items[:] = [item for f in order for item in files[f]]
