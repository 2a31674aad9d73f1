"""What the browser tests share: servers, nginx, a worker, and the page that drives the client.

The page (`page/index.html`) is served by tidings itself with `--static`, so it shares the
API's origin and loads the client from the server's own `/client/tidings.js`. Python reads
what the page recorded (`window.runs`) through Playwright.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from playwright.sync_api import Page

from tests.conftest import ServerProcess, free_ports
from tests.e2e.test_behind_nginx import main_config, nginx_command, wait_for_port
from tests.hostile.browser import LoopbackPage

__all__ = [
    "PAGE_DIR",
    "ROOT",
    "Harness",
    "Nginx",
    "serve",
    "start_worker",
    "stop_process",
]

ROOT = Path(__file__).resolve().parents[3]
PAGE_DIR = Path(__file__).resolve().parent / "page"


def serve(
    folder: Path, name: str, *args: str, store: str = "memory://", static: Path = PAGE_DIR
) -> ServerProcess:
    """A running `tidings serve --static static` with its log in `folder`."""
    return ServerProcess(
        store, folder / f"{name}.log", ["--static", str(static), *args], {}
    ).start()


def start_worker(server: ServerProcess, log: Path, target: str) -> subprocess.Popen[bytes]:
    """`tidings worker TARGET --url` of the server, run from the repository's root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "tidings", "worker", target, "--url", server.url],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal a process this test started and wait for it (SIGKILL after 10 s)."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Nginx:
    """Debian's nginx in front of `upstream` on two free loopback ports, passing everything
    but a WebSocket upgrade: it forwards neither `Upgrade` nor `Connection` (nginx drops
    hop-by-hop headers unless told to set them), as many real proxies are configured.

    `url` streams responses as they come (tidings asks for that with X-Accel-Buffering);
    `buffering_url` ignores that and compresses event streams, so it holds a stream's head
    and events until its buffers fill, as a buffering proxy or antivirus does.
    """

    def __init__(self, folder: Path, upstream: ServerProcess) -> None:
        self.folder = folder
        self.port, self.buffering_port = free_ports(2)
        site = folder / "site.conf"
        site.write_text(
            self._server(self.port, upstream, "proxy_buffering off;")
            + self._server(
                self.buffering_port,
                upstream,
                "proxy_buffering on;\n        proxy_ignore_headers X-Accel-Buffering;\n"
                "        gzip on;\n        gzip_types text/event-stream;",
            )
        )
        conf = folder / "nginx.conf"
        conf.write_text(main_config(folder, site))
        log = folder / "nginx.out"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*nginx_command(folder, conf), "-g", "daemon off;"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.proc, log)
        wait_for_port(self.buffering_port, self.proc, log)

    @staticmethod
    def _server(port: int, upstream: ServerProcess, buffering: str) -> str:
        return (
            "server {\n"
            f"    listen 127.0.0.1:{port};\n"
            "    location / {\n"
            f"        proxy_pass http://127.0.0.1:{upstream.port};\n"
            "        proxy_http_version 1.1;\n"
            "        proxy_set_header Host $http_host;\n"
            f"        {buffering}\n"
            "    }\n"
            "}\n"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def buffering_url(self) -> str:
        return f"http://127.0.0.1:{self.buffering_port}"

    def access_log(self) -> str:
        return (self.folder / "access.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)  # SIGTERM: nginx's fast shutdown, open streams cut


class Harness:
    """The test page, opened in `loopback`'s page from `base` (the origin it is served on)."""

    def __init__(self, loopback: LoopbackPage, base: str) -> None:
        self.loopback = loopback
        self.page: Page = loopback.page
        self.page.goto(f"{base}/static/index.html")
        self.page.wait_for_function("window.ready === true", timeout=10_000)

    def follow(
        self,
        key: str,
        channels: str | list[str],
        settings: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        """Subscribe in the page as `key` (options as `subscribe` takes them; `settings`
        for the client, such as its `timeout`)."""
        self.page.evaluate(
            "([k, c, o, s]) => follow(k, c, o, s)", [key, channels, options, settings or {}]
        )

    def submit(self, key: str, type: str, payload: Any, **options: Any) -> None:
        """Submit a job in the page and follow its events as `key`."""
        self.page.evaluate("([k, t, p, o]) => submit(k, t, p, o)", [key, type, payload, options])

    def run(self, key: str) -> dict[str, Any]:
        """What run `key` recorded: items or events, statuses, the error, whether done."""
        run: dict[str, Any] = self.page.evaluate(
            "k => { const { subscription, ...rest } = runs[k]; return rest; }", key
        )
        return run

    def items(self, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.run(key)["items"]
        return items

    def until(self, condition: str, key: str, timeout: float = 15.0) -> None:
        """Wait until `condition` (JavaScript, of `run`) holds for run `key`."""
        try:
            self.page.wait_for_function(
                f"k => {{ const run = runs[k]; return {condition}; }}",
                arg=key,
                timeout=timeout * 1000,
            )
        except Exception as exc:
            raise AssertionError(f"{key}: {condition} within {timeout} s: {self.run(key)}") from exc

    def until_open(self, key: str, timeout: float = 15.0) -> None:
        self.until("run.statuses.some((s) => s.state === 'open')", key, timeout)

    def until_started(self, key: str, timeout: float = 15.0) -> None:
        """Wait until the subscription knows where it starts: a subscription "from now"
        reads the channel's newest id before it connects, so what is published after that
        reaches it. (A long poll reports "open" only with its first answer.)"""
        self.until("run.statuses.some((s) => s.state === 'connecting')", key, timeout)

    def until_items(self, key: str, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        self.until(f"run.items.length >= {count}", key, timeout)
        return self.items(key)

    def close(self, key: str) -> None:
        self.page.evaluate("k => runs[k].subscription.close()", key)
