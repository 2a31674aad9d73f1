"""`POST /v1/admin/lab`: `tidings lab` run by the server against itself, for the console.

The server never imports the lab (an import-linter contract keeps the server free of the
CLI and the lab's clients): it runs `python -m tidings lab --url <its loopback URL>
--server-pid <its pid> --json --chart <file>` as a child process and answers the lab's
JSON report with the chart's SVG: `{"report": {...}, "svg": "<svg ..."}`.

Bounds: 1-50 clients, 1-50 messages a second, 1-10 seconds a pattern, some of the
patterns; one lab at a time (409 while one runs); the child is killed (its whole process
group, by its pid) when it outlives its deadline (504).

Only on a server bound to loopback: the lab publishes to channels and opens up to a few
hundred connections of its own, which has no place on a server that users share; and the
lab speaks plain HTTP/1.1 to the server's own loopback port (refused with TLS). One
server process only (`--workers 1`): the lab reads that process's CPU time. Under
`--require-auth`, the lab acts as the admin who asked, through an API token made for
this run (passed in the child's environment, never on its command line) and revoked
when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.protocol.errors import Conflict, InvalidBody, TidingsError
from tidings.server.auth import new_api_token, token_key
from tidings.server.http.common import decode_body, json_response, read_body, require_admin
from tidings.server.principals import KIND_TOKEN, Credential
from tidings.server.settings import Settings
from tidings.server.stores.base import Store

__all__ = ["LAB_PATTERNS", "LabBody", "routes"]

# The patterns the lab knows (tidings.lab.workload.Pattern; named here, not imported).
LAB_PATTERNS = (
    "poll",
    "longpoll",
    "sse",
    "ws",
    "job-poll",
    "job-longpoll",
    "job-push",
    "job-request",
)
MAX_CLIENTS = 50
MAX_RATE = 50
MAX_SECONDS = 10
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# Beyond the patterns' own seconds: the child's start, each pattern's set-up and drain.
_START_SECONDS = 30.0
_PATTERN_SECONDS = 10.0
# The end of the lab's stderr quoted when it fails.
_STDERR_TAIL = 2000

# One lab at a time in this process (and `--workers 1` makes this process the server).
_running = asyncio.Lock()


class LabFailed(TidingsError):
    """The lab's child process failed or outlived its deadline."""

    status = 502
    code = "lab_failed"


class LabTimeout(LabFailed):
    status = 504


class LabBody(msgspec.Struct, forbid_unknown_fields=True):
    clients: int = 5
    rate: int = 5
    seconds: int = 2
    patterns: list[str] = msgspec.field(default_factory=lambda: ["poll", "longpoll", "sse", "ws"])

    def check(self) -> None:
        """InvalidBody (422) saying which field is out of bounds."""
        for name, value, top in (
            ("clients", self.clients, MAX_CLIENTS),
            ("rate", self.rate, MAX_RATE),
            ("seconds", self.seconds, MAX_SECONDS),
        ):
            if not 1 <= value <= top:
                raise InvalidBody(f'"{name}" is {value}: give an integer from 1 to {top}')
        if not self.patterns:
            raise InvalidBody(f'"patterns" is empty: give some of {", ".join(LAB_PATTERNS)}')
        for pattern in self.patterns:
            if pattern not in LAB_PATTERNS:
                raise InvalidBody(
                    f'"patterns": {pattern[:40]!r} is not a pattern: pick from '
                    f"{', '.join(LAB_PATTERNS)}"
                )
        if len(set(self.patterns)) != len(self.patterns):
            raise InvalidBody('"patterns" names a pattern twice: give each once')

    def deadline(self) -> float:
        return _START_SECONDS + len(self.patterns) * (self.seconds + _PATTERN_SECONDS)


def _own_url(request: Request, settings: Settings) -> str:
    """This server's URL on loopback, or Conflict saying why the lab cannot run here."""
    if settings.host not in _LOOPBACK_HOSTS:
        raise Conflict(
            f"the lab runs only on a server bound to loopback (this one: {settings.host}): "
            "it publishes to channels and opens connections of its own; run "
            "`tidings lab` against a server of its own instead"
        )
    if settings.ssl_certfile:
        raise Conflict("the lab speaks plain HTTP/1.1: it cannot measure a TLS server")
    if settings.workers != 1:
        raise Conflict("the lab measures one server process: serve with --workers 1")
    server = request.scope.get("server")
    port = server[1] if server and isinstance(server[1], int) else None
    if port is None:
        raise Conflict("the lab needs the server's TCP port; this request came another way")
    host = "[::1]" if settings.host == "::1" else "127.0.0.1"
    return f"http://{host}:{port}"


async def _lab_token(request: Request, store: Store, name: str, deadline: float) -> str | None:
    """An API token for `name` lasting the lab's deadline, when the server requires
    authentication; None when it does not."""
    settings: Settings = request.app.state.settings
    if not settings.require_auth:
        return None
    if await store.auth.get_user(name) is None:
        raise Conflict(
            f"{name} is not a user of this server's store (signed in with an application "
            "JWT?): the lab needs an API token of a stored admin"
        )
    secret = new_api_token()
    now = time.time()
    await store.auth.put_credential(
        Credential(token_key(secret), KIND_TOKEN, name, now, now + deadline, "lab")
    )
    return secret


async def _run(command: list[str], env: dict[str, str], deadline: float) -> tuple[bytes, bytes]:
    """The child's stdout and stderr; LabTimeout after `deadline` seconds (its process
    group killed), LabFailed when it exits non-zero."""
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,  # its client processes share its group: killed together
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), deadline)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    if proc.returncode != 0:
        tail = err.decode(errors="replace")[-_STDERR_TAIL:].strip()
        raise LabFailed(f"the lab failed (exit {proc.returncode}): {tail}")
    return out, err


async def run_lab(request: Request) -> Response:
    """Run a small lab against this server; its report and chart."""
    principal = require_admin(request)
    body: LabBody = decode_body(LabBody, await read_body(request, 4 * 1024))
    body.check()
    settings: Settings = request.app.state.settings
    url = _own_url(request, settings)
    if _running.locked():
        raise Conflict("a lab is running: wait for its answer, then run another")
    async with _running:
        deadline = body.deadline()
        store: Store = request.app.state.channels.store
        token = await _lab_token(request, store, principal.name, deadline)
        env = {k: v for k, v in os.environ.items() if k != "TIDINGS_TOKEN"}
        if token is not None:
            env["TIDINGS_TOKEN"] = token
        try:
            with tempfile.TemporaryDirectory(prefix="tidings-lab-") as folder:
                chart = Path(folder) / "lab.svg"
                command = [
                    sys.executable,
                    "-m",
                    "tidings",
                    "lab",
                    "--url",
                    url,
                    "--server-pid",
                    str(os.getpid()),
                    "--clients",
                    str(body.clients),
                    "--rate",
                    str(body.rate),
                    "--seconds",
                    str(body.seconds),
                    "--patterns",
                    ",".join(body.patterns),
                    "--processes",
                    "1",
                    "--json",
                    "--chart",
                    str(chart),
                ]
                try:
                    out, _ = await _run(command, env, deadline)
                except TimeoutError:
                    raise LabTimeout(f"the lab outlived its {deadline:.0f} s: killed") from None
                report: dict[str, Any] = json.loads(out)
                report.pop("chart", None)  # a path in a directory now gone
                svg = chart.read_text()
        finally:
            if token is not None:
                await store.auth.delete_credential(token_key(token))
    return json_response({"report": report, "svg": svg}, headers={"cache-control": "no-store"})


routes = [Route("/v1/admin/lab", run_lab, methods=["POST"])]
