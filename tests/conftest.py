"""Fixtures: real tidings servers on free loopback ports, started as subprocesses."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """A `tidings serve` subprocess: start, stop with a signal, kill, start again.

    The port and store stay the same across restarts, so clients can reconnect.
    """

    def __init__(
        self, store: str, log_path: Path, extra_args: list[str], env: dict[str, str]
    ) -> None:
        self.store = store
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.extra_args = extra_args
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> ServerProcess:
        """Start the server and wait until /healthz answers."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
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
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
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


@pytest.fixture(params=["memory", "sqlite"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store the server supports, as a URL (a fresh SQLite file per test)."""
    if request.param == "memory":
        return "memory://"
    return f"sqlite:///{tmp_path / 'tidings.db'}"
