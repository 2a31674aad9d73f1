"""One log format for the server's own lines, uvicorn's error and access lines and the
worker's, always timestamped: text (`TIME LEVEL LOGGER: message`) or JSON (one object per
line), chosen by --log-format / TIDINGS_LOG_FORMAT, in every process of `--workers N`."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess, free_port
from tidings.server.logs import JsonFormatter, TextFormatter, log_time

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (TRACE|DEBUG|INFO|WARNING|ERROR|CRITICAL) "
    r"[\w.]+: \S"
)


def _wait_for(path: Path, text: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path} after {timeout}s:\n{content[-3000:]}")


def _run_worker(url: str, log_path: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Start `tidings worker`, let it say it started, stop it with SIGTERM; its output."""
    cmd = [sys.executable, "-m", "tidings", "worker", "tests.e2e.worker_app:worker", "--url", url]
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [*cmd, *args], cwd=ROOT, stdout=log, stderr=log, env={**base, **(env or {})}
        )
    try:
        _wait_for(log_path, "worker started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return log_path.read_text()


def _requested(srv: ServerProcess, probe: str) -> str:
    assert httpx.get(f"{srv.url}/healthz?probe={probe}").status_code == 200
    return _wait_for(srv.log_path, f"probe={probe}", 5)


def test_text_lines_of_server_uvicorn_access_and_worker_all_carry_a_timestamp(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    srv = tidings_server(env={"TIDINGS_LOG_LEVEL": "info", "TIDINGS_ACCESS_LOG": "true"})
    server_log = _requested(srv, "text")
    lines = server_log.splitlines()
    assert lines
    for line in lines:
        assert TEXT_LINE.match(line), line
    names = {line.split(" ")[2] for line in lines}
    assert {"tidings.server:", "tidings:", "uvicorn.error:", "uvicorn.access:"} <= names, lines
    access = next(line for line in lines if "probe=text" in line)
    assert re.search(r' INFO uvicorn\.access: 127\.0\.0\.1:\d+ - "GET /healthz\?probe=text', access)
    stamp = datetime.fromisoformat(access.split(" ")[0].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60  # UTC, not local time

    worker_log = _run_worker(srv.url, tmp_path / "worker.log")
    worker_lines = worker_log.splitlines()
    assert any(" INFO tidings.worker: worker started" in line for line in worker_lines)
    for line in worker_lines:
        assert TEXT_LINE.match(line), line


def _json_lines(text: str) -> list[dict[str, object]]:
    entries = []
    complete = text[: text.rfind("\n") + 1]  # a line still being written is left for later
    for line in complete.splitlines():
        entry = json.loads(line)  # every line is one JSON object
        assert isinstance(entry, dict), line
        assert {"time", "level", "logger", "message"} <= entry.keys(), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(entry["time"]))
        entries.append(entry)
    return entries


def test_json_lines_of_server_access_and_worker_parse_with_their_fields(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    srv = tidings_server(
        args=["--log-format", "json", "--access-log"], env={"TIDINGS_LOG_LEVEL": "info"}
    )
    entries = _json_lines(_requested(srv, "json"))
    loggers = {entry["logger"] for entry in entries}
    assert {"tidings.server", "tidings", "uvicorn.error", "uvicorn.access"} <= loggers
    ready = next(e for e in entries if str(e["message"]).startswith("tidings ready on"))
    assert ready["level"] == "INFO"
    access = next(e for e in entries if "probe=json" in str(e["message"]))
    assert access["logger"] == "uvicorn.access"
    assert access["method"] == "GET"
    assert access["path"] == "/healthz?probe=json"
    assert access["status"] == 200
    assert str(access["client"]).startswith("127.0.0.1:")

    # The worker's twin variable alone switches it to JSON.
    worker_log = _run_worker(srv.url, tmp_path / "worker.log", env={"TIDINGS_LOG_FORMAT": "json"})
    worker_entries = _json_lines(worker_log)
    started = next(e for e in worker_entries if str(e["message"]).startswith("worker started"))
    assert started["logger"] == "tidings.worker"
    assert started["level"] == "INFO"


def test_every_process_of_workers_n_logs_json(redis_url: str, tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "server.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    env |= {"TIDINGS_WORKERS": "2", "TIDINGS_LOG_FORMAT": "json", "TIDINGS_LOG_LEVEL": "info"}
    cmd = [sys.executable, "-m", "tidings", "serve", "--store", redis_url, "--port", str(port)]
    with log_path.open("wb") as log:
        # Its own process group: the supervisor and its children end together below.
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        # Two spawned children import everything: slow on a busy machine.
        deadline = time.monotonic() + 60
        ready: list[dict[str, object]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            entries = _json_lines(log_path.read_text())
            ready = [e for e in entries if str(e["message"]).startswith("tidings ready on")]
            if len(ready) == 2:
                break
            time.sleep(0.2)
        assert len(ready) == 2, log_path.read_text()  # one per child process, both in JSON
        supervisor = f"tidings: 2 worker processes on 127.0.0.1:{port}"
        assert any(e["message"] == supervisor for e in entries), log_path.read_text()
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _record(exc_info: bool) -> logging.LogRecord:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        info = sys.exc_info()
    return logging.LogRecord(
        "tidings.server", logging.ERROR, __file__, 1, "failed: %s", ("x",),
        info if exc_info else None,
    )  # fmt: skip


def test_a_traceback_is_the_exception_field_in_json_and_follows_the_line_in_text() -> None:
    entry = json.loads(JsonFormatter().format(_record(exc_info=True)))
    assert entry["message"] == "failed: x"
    assert entry["level"] == "ERROR"
    assert entry["exception"].startswith("Traceback (most recent call last):")
    assert entry["exception"].rstrip().endswith("ZeroDivisionError: division by zero")
    assert "exception" not in json.loads(JsonFormatter().format(_record(exc_info=False)))

    text = TextFormatter().format(_record(exc_info=True)).splitlines()
    assert TEXT_LINE.match(text[0])
    assert text[0].endswith(" ERROR tidings.server: failed: x")
    assert text[1] == "Traceback (most recent call last):"


def test_log_time_is_rfc3339_utc_with_milliseconds() -> None:
    assert log_time(0.0) == "1970-01-01T00:00:00.000Z"
    assert log_time(1_796_454_062.3459) == "2026-12-05T07:01:02.345Z"
