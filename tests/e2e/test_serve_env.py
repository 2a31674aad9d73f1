"""The serve options that had no variable take effect from their TIDINGS_* twin alone:
TIDINGS_ACCESS_LOG, TIDINGS_SSL_CERTFILE / TIDINGS_SSL_KEYFILE, TIDINGS_WORKERS."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory, free_port

pytestmark = pytest.mark.timeout(60)


def _env(**variables: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return {**base, **variables}


def test_tidings_access_log_true_logs_each_request(tidings_server: ServerFactory) -> None:
    srv = tidings_server(env={"TIDINGS_ACCESS_LOG": "true", "TIDINGS_LOG_LEVEL": "info"})
    assert httpx.get(f"{srv.url}/healthz?probe=env-twin").status_code == 200
    deadline = time.monotonic() + 5
    while "probe=env-twin" not in srv.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    access = [line for line in srv.log().splitlines() if "probe=env-twin" in line]
    assert len(access) == 1, srv.log()
    assert "uvicorn.access" in access[0]
    assert '"GET /healthz?probe=env-twin HTTP/1.1" 200' in access[0]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a server this test started: SIGTERM, then SIGKILL if it has not exited."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_without_tidings_access_log_no_request_is_logged(tidings_server: ServerFactory) -> None:
    # At trace level uvicorn says when each connection ends, after its response (and the
    # response's access line, were there one) is done: that line of the probe's own
    # connection is what to wait for before looking for an access line.
    srv = tidings_server(env={"TIDINGS_LOG_LEVEL": "trace"})
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as probe:
        local_port = probe.getsockname()[1]
        probe.sendall(
            b"GET /healthz?probe=quiet HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        answer = b""
        while chunk := probe.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer
    ended = f"127.0.0.1:{local_port} - HTTP connection lost"
    deadline = time.monotonic() + 10
    while ended not in srv.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    log = srv.log_path.read_text()
    assert ended in log, log[-5000:]
    assert "uvicorn.access" not in log
    assert '"GET /healthz?probe=quiet' not in log


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, made by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is missing: install the Debian package openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def test_tidings_ssl_certfile_and_keyfile_serve_https(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    port = free_port()
    log_path = tmp_path / "server.log"
    # The client trusts that one certificate: an answer proves the server presents it.
    trust = ssl.create_default_context(cafile=str(cert))
    env = _env(
        TIDINGS_SSL_CERTFILE=str(cert),
        TIDINGS_SSL_KEYFILE=str(key),
        TIDINGS_PORT=str(port),
        TIDINGS_STORE="memory://",
    )
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tidings", "serve"], stdout=log, stderr=log, env=env
        )
    try:
        deadline = time.monotonic() + 30
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = httpx.get(f"https://127.0.0.1:{port}/healthz", verify=trust, timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert answer is not None, log_path.read_text()
        assert answer.status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served on that port
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        assert f"tidings ready on https://127.0.0.1:{port}" in log_path.read_text()
    finally:
        _stop(proc)


def test_a_tls_key_that_does_not_load_is_one_line(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, _key = certificate
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key\n")
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--store", "memory://"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(TIDINGS_SSL_CERTFILE=str(cert), TIDINGS_SSL_KEYFILE=str(bad)),
        check=False,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "do not load together" in done.stderr
    assert "ready" not in done.stderr


def test_an_encrypted_tls_key_is_refused_in_one_line_without_a_prompt(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    locked = tmp_path / "locked.pem"
    subprocess.run(
        [
            str(shutil.which("openssl")), "pkey", "-in", str(key), "-aes256",
            "-passout", "pass:a pass phrase", "-out", str(locked),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    assert "ENCRYPTED" in locked.read_text()
    # A session of its own: no terminal for OpenSSL to prompt on, so a prompt would fail
    # (or a pass phrase read from stdin would find it empty) rather than wait.
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--store", "memory://"],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=_env(
            TIDINGS_SSL_CERTFILE=str(cert),
            TIDINGS_SSL_KEYFILE=str(locked),
            TIDINGS_PORT=str(free_port()),
            COLUMNS="300",
        ),
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip() == (
        f"tidings serve: TLS: the key {str(locked)!r} is encrypted; encrypted private keys are "
        f"not supported: decrypt it with `openssl pkey -in {locked} -out {locked}.plain` and "
        "pass that file"
    )
    assert "pass phrase" not in done.stdout + done.stderr.lower()


def test_tidings_workers_two_with_a_memory_store_needs_a_shared_store() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "serve"],
        capture_output=True,
        text=True,
        timeout=30,
        env=_env(TIDINGS_WORKERS="2", TIDINGS_STORE="memory://", COLUMNS="200"),
        check=False,
    )
    assert done.returncode == 2
    message = " ".join(done.stderr.split())
    assert "--workers 2 needs a store the processes can share (redis://host:port/0)" in message
    assert "Traceback" not in done.stderr
