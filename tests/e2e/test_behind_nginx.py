"""docs/deploy.md's nginx front, run for real: Debian's nginx with the config exactly as the
document gives it, in front of a real `tidings serve` configured from the document's
environment file.

Only the ports, the upstream address and the certificate paths of the config are replaced
(`DOC_*` below: each must appear exactly once, so the document cannot drift from what is
tested). nginx runs in the foreground with its own prefix, pid file and logs in a temporary
directory, on free loopback ports, with a self-signed certificate made by `openssl req
-x509`; the clients trust that certificate. nginx missing fails the test: `make test`
installs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerProcess, free_ports
from tests.e2e.helpers import cli_ok

pytestmark = pytest.mark.timeout(90)

DEPLOY_MD = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"
NGINX = "/usr/sbin/nginx"
PUBLIC_HOST = "tidings.example.com"
PASSWORD = secrets.token_urlsafe(16)

# What the test replaces in the document's nginx config, and with what (see `front`).
DOC_HTTP_LISTEN = "listen 80;"
DOC_HTTPS_LISTEN = "listen 443 ssl http2;"
DOC_UPSTREAM = "server 127.0.0.1:8000;"
DOC_CERT = f"/etc/letsencrypt/live/{PUBLIC_HOST}/fullchain.pem"
DOC_KEY = f"/etc/letsencrypt/live/{PUBLIC_HOST}/privkey.pem"
# ... in the systemd unit.
DOC_ENV_FILE = "/etc/tidings/tidings.env"
DOC_EXEC = "/opt/tidings/bin/tidings"


def doc_block(name: str) -> str:
    """The fenced block after `<!-- tested: NAME ... -->` in docs/deploy.md."""
    text = DEPLOY_MD.read_text()
    found = re.search(
        rf"<!-- tested: {re.escape(name)}\b[^>]*-->\n```[a-z]*\n(.*?)\n```", text, re.DOTALL
    )
    assert found is not None, f"docs/deploy.md has no block marked <!-- tested: {name} -->"
    return found.group(1) + "\n"


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Replace each key, which must occur exactly once."""
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{old!r} should occur once in the documented block"
        text = text.replace(old, new)
    return text


def doc_env() -> dict[str, str]:
    """The documented environment file as a dict."""
    env = {}
    for raw in doc_block("tidings-env").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


@dataclass
class Front:
    """nginx (https on `https_port`, http on `http_port`) in front of `server`."""

    dir: Path
    https_port: int
    http_port: int
    server: ServerProcess
    ssl: ssl.SSLContext
    token: str

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    def client(self, token: str | None = "", **kw: Any) -> httpx.Client:
        """An HTTPS client naming the public host, with the user's token (None: none)."""
        headers = {"Host": PUBLIC_HOST}
        if token is not None:
            headers["Authorization"] = f"Bearer {token or self.token}"
        return httpx.Client(base_url=self.url, verify=self.ssl, headers=headers, **kw)

    def nginx_log(self) -> str:
        return (self.dir / "error.log").read_text(errors="replace")[-3000:]


def nginx_binary() -> str:
    if not os.access(NGINX, os.X_OK):
        pytest.fail(
            f"{NGINX} is missing: `make test` installs it (Debian package nginx, `make nginx`)"
        )
    return NGINX


def main_config(folder: Path, site: Path) -> str:
    """The smallest nginx.conf that includes the documented site config: everything nginx
    writes (pid, logs, temporary files) in `folder`."""
    temp = "\n".join(
        f"    {kind}_temp_path {folder / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would switch to `nobody`, who cannot enter pytest's
    # private temporary directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        f"{user}worker_processes 1;\npid {folder / 'nginx.pid'};\n"
        f"error_log {folder / 'error.log'} info;\n"
        "events { worker_connections 512; }\n"
        "http {\n"
        f"    access_log {folder / 'access.log'};\n{temp}\n"
        f"    include {site};\n"
        "}\n"
    )


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"nginx exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    pytest.fail(f"nginx did not listen on {port} in time:\n{log.read_text()[-3000:]}")


def nginx_command(folder: Path, conf: Path) -> list[str]:
    return [nginx_binary(), "-p", str(folder), "-c", str(conf), "-e", str(folder / "error.log")]


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    folder = tmp_path_factory.mktemp("nginx")
    nginx_command(folder, folder / "nginx.conf")  # fail first when nginx is missing
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1", "-subj", f"/CN={PUBLIC_HOST}",
            "-addext", f"subjectAltName=DNS:{PUBLIC_HOST},IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip

    # tidings, from the documented environment file, on a free port and a fresh SQLite file.
    store = f"sqlite:///{folder / 'tidings.db'}"
    env = {**doc_env(), "TIDINGS_LOG_LEVEL": "warning"}
    assert env["TIDINGS_REQUIRE_AUTH"] == "true", "the documented front requires auth"
    cli_ok(
        "users", "add", "alice", "--store", store, "--password-stdin",
        "--publish", "news.*", "--subscribe", "news.*", "--submit", "transcode",
        "--work", "transcode",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    token = cli_ok("tokens", "create", "alice", "--store", store, "--name", "proxy").split()[-1]
    assert token.startswith("tdt_"), token
    server = ServerProcess(store, folder / "tidings.log", [], env)
    server.start()
    try:  # the server stops however the front's set-up ends
        https_port, http_port = free_ports(2)
        site = folder / "tidings.conf"
        site.write_text(
            substitute(
                doc_block("nginx-conf"),
                {
                    DOC_HTTP_LISTEN: f"listen 127.0.0.1:{http_port};",
                    DOC_HTTPS_LISTEN: f"listen 127.0.0.1:{https_port} ssl http2;",
                    DOC_UPSTREAM: f"server 127.0.0.1:{server.port};",
                    DOC_CERT: str(cert),
                    DOC_KEY: str(key),
                },
            )
        )
        conf = folder / "nginx.conf"
        conf.write_text(main_config(folder, site))
        command = nginx_command(folder, conf)
        checked = subprocess.run(
            [*command, "-t"], check=False, capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 0, f"nginx -t refused the documented config:\n{checked.stderr}"

        log = folder / "nginx.out"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*command, "-g", "daemon off;"], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(https_port, proc, log)
            context = ssl.create_default_context(cafile=str(cert))
            yield Front(folder, https_port, http_port, server, context, token)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGQUIT)  # graceful: ends open connections
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
    finally:
        server.kill()


def publish(front: Front, channel: str, data: str) -> str:
    with front.client() as client:
        answer = client.post(f"/v1/channels/{channel}/messages", content=data)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


class EventReader:
    """An SSE stream read in a thread: each event (a dict of its fields) lands in a queue
    with the time it arrived."""

    def __init__(self, front: Front, path: str, headers: dict[str, str] | None = None) -> None:
        self.events: queue.Queue[tuple[float, dict[str, str]]] = queue.Queue()
        self.status: queue.Queue[int] = queue.Queue()
        self._client = front.client(timeout=httpx.Timeout(10, read=30))
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._read, args=(path, headers or {}))
        self._thread.daemon = True
        self._thread.start()
        self.status_code = self.status.get(timeout=10)

    def _read(self, path: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", path, headers=headers) as answer:
                self._sock = answer.extensions["network_stream"].get_extra_info("socket")
                self.status.put(answer.status_code)
                event: dict[str, str] = {}
                for line in answer.iter_lines():
                    if not line:
                        if event:
                            self.events.put((time.monotonic(), event))
                        event = {}
                    elif not line.startswith(":"):
                        name, _, value = line.partition(":")
                        event[name] = value.removeprefix(" ")
        except httpx.HTTPError:
            pass  # closed by close() or by the end of the test
        finally:
            self.status.put(0)

    def next(self, timeout: float = 10.0) -> tuple[float, dict[str, str]]:
        return self.events.get(timeout=timeout)

    def close(self) -> None:
        # Wake the reading thread with an end of stream, and let it finish, before the
        # socket is closed: closed under a thread still reading, its descriptor number
        # could be reused by the next connection, and that thread's TLS reads would then
        # take the next connection's bytes.
        if self._sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(self._sock, socket.SHUT_RDWR)
        self._thread.join(10)
        self._client.close()


def test_nginx_accepts_the_documented_config(front: Front) -> None:
    command = nginx_command(front.dir, front.dir / "nginx.conf")
    checked = subprocess.run(
        [*command, "-t"], check=False, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr


def test_plain_http_redirects_and_anonymous_is_refused(front: Front) -> None:
    with httpx.Client(headers={"Host": PUBLIC_HOST}) as plain:
        moved = plain.get(f"http://127.0.0.1:{front.http_port}/v1/channels/news.a/messages")
    assert moved.status_code == 308
    assert moved.headers["location"].startswith(f"https://{PUBLIC_HOST}/v1/channels/news.a")
    with front.client(token=None) as anonymous:
        refused = anonymous.get("/v1/channels/news.a/messages?after=0")
    assert refused.status_code == 401, refused.text
    assert refused.json()["error"]["code"]


def test_sse_resumes_and_is_not_buffered(front: Front) -> None:
    first = publish(front, "news.sse", "one")
    publish(front, "news.sse", "two")
    reader = EventReader(front, "/v1/channels/news.sse/events", {"Last-Event-ID": first})
    try:
        assert reader.status_code == 200
        _, resumed = reader.next()
        assert resumed["data"] == "two", resumed  # resumed after `first`, nothing lost
        time.sleep(0.3)
        sent = time.monotonic()
        third = publish(front, "news.sse", "three")
        arrived, event = reader.next()
        assert (event["id"], event["data"]) == (third, "three")
        # A buffered stream holds the event until far more arrives (never, here); 5 s
        # leaves room for a loaded machine.
        assert arrived - sent < 5.0, f"the event took {arrived - sent:.2f} s through nginx"
    finally:
        reader.close()
    # Resuming by the query string passes through too.
    with (
        front.client() as client,
        client.stream("GET", f"/v1/channels/news.sse/events?after={third}") as answer,
    ):
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")


def test_websocket_subscribes_and_publishes(front: Front) -> None:
    publish(front, "news.ws", "before")
    # The URL names the public host (Host, SNI, certificate); the socket goes to nginx.
    sock = socket.create_connection(("127.0.0.1", front.https_port), timeout=10)
    with ws_connect(
        f"wss://{PUBLIC_HOST}/v1/channels/news.ws/ws?after=0",
        sock=sock,
        ssl=front.ssl,
        additional_headers={"Authorization": f"Bearer {front.token}"},
        open_timeout=10,
    ) as ws:
        assert _frame(ws)["data"] == "before"
        publish(front, "news.ws", "after")
        assert _frame(ws)["data"] == "after"
        ws.send('{"data": "from the socket", "ref": "r1"}')
        ack = _frame(ws)
        assert (ack["type"], ack["ref"]) == ("ack", "r1")
        assert _frame(ws)["data"] == "from the socket"


def _frame(ws: Any) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return frame


def test_long_poll_answers_on_publish(front: Front) -> None:
    last = publish(front, "news.poll", "old")
    answers: queue.Queue[httpx.Response] = queue.Queue()

    def poll() -> None:
        with front.client(timeout=30) as client:
            answers.put(client.get(f"/v1/channels/news.poll/messages?after={last}&wait=20"))

    started = time.monotonic()
    threading.Thread(target=poll, daemon=True).start()
    time.sleep(0.5)
    publish(front, "news.poll", "new")
    answer = answers.get(timeout=25)
    assert time.monotonic() - started < 5, "the long poll waited past the publish"
    assert answer.status_code == 200, answer.text
    assert [m["data"] for m in answer.json()["messages"]] == ["new"]


def test_job_event_stream(front: Front) -> None:
    with front.client() as client:
        submitted = client.post("/v1/jobs", json={"type": "transcode", "payload": {"id": 7}})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        reader = EventReader(front, f"/v1/jobs/{job_id}/events")
        try:
            leased = client.post("/v1/workers/lease", json={"types": ["transcode"], "wait": 5})
            assert leased.status_code == 200, leased.text
            (job,) = leased.json()["jobs"]
            token = job["lease_token"]
            beat = client.post(
                f"/v1/jobs/{job_id}/heartbeat",
                json={"lease_token": token, "progress": 50, "message": "half"},
            )
            assert beat.status_code == 200, beat.text
            done = client.post(
                f"/v1/jobs/{job_id}/complete",
                json={"lease_token": token, "result": {"url": "/videos/7.mp4"}},
            )
            assert done.status_code == 200, done.text
            events = [reader.next()[1] for _ in range(5)]
        finally:
            reader.close()
        names = [e.get("event") for e in events]
        assert names == ["queued", "running", "progress", "succeeded", "close"], events
        assert '"progress":50.0' in events[2]["data"]
        assert '"/videos/7.mp4"' in events[3]["data"]
        # The EventSource's reconnect after the end: 204, passed through unchanged.
        again = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": events[3]["id"]})
        assert again.status_code == 204, again.text


def test_session_cookie_is_secure_and_same_site_writes_work(front: Front) -> None:
    origin = {"Origin": f"https://{PUBLIC_HOST}"}
    with front.client(token=None) as browser:
        login = browser.post(
            "/v1/auth/login", json={"username": "alice", "password": PASSWORD}, headers=origin
        )
        assert login.status_code == 200, login.text
        cookie = login.headers["set-cookie"]
        assert "secure" in cookie.lower(), f"the session cookie lacks Secure: {cookie}"
        # httpx keeps a Secure cookie for https only, which this client is.
        written = browser.post("/v1/channels/news.cookie/messages", content="hi", headers=origin)
        assert written.status_code == 201, written.text
        elsewhere = browser.post(
            "/v1/channels/news.cookie/messages",
            content="hi",
            headers={"Origin": "https://evil.example"},
        )
        assert elsewhere.status_code == 403, elsewhere.text


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: install the Debian package systemd")
    env_file = tmp_path / "tidings.env"
    env_file.write_text(doc_block("tidings-env"))
    tidings = str(Path(sys.executable).parent / "tidings")
    unit = tmp_path / "tidings.service"
    unit.write_text(
        substitute(doc_block("systemd-unit"), {DOC_ENV_FILE: str(env_file), DOC_EXEC: tidings})
    )
    checked = subprocess.run(
        [analyze, "verify", str(unit)], check=False, capture_output=True, text=True, timeout=60
    )
    # verify exits 0 on unknown keys and bad values, only warning: any output is a fault.
    assert checked.returncode == 0 and not checked.stderr.strip(), checked.stderr
