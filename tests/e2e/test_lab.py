"""`tidings lab`: a short run against a real server measures every pattern from its own
processes' sockets, and its figures order the patterns as the seed says they should at a
rate below the poll frequency; a sweep of two points notes where costs cross and where a
browser's six connections run out; a bad flag value says which flag to fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerFactory, free_port
from tests.e2e.auth.helpers import auth_server
from tests.e2e.helpers import cli_ok, tidings_cli

pytestmark = pytest.mark.timeout(150)

ALL = ["poll", "longpoll", "sse", "ws", "job-poll", "job-longpoll", "job-push", "job-request"]


def lab(*args: str) -> subprocess.CompletedProcess[str]:
    """`python -m tidings lab ARGS` (it starts and stops its own processes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.run(
        [sys.executable, "-m", "tidings", "lab", *args],
        capture_output=True,
        text=True,
        timeout=140,
        env={**env, "COLUMNS": "200"},
        check=False,
    )


def lab_json(*args: str) -> dict[str, Any]:
    done = lab(*args, "--json")
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_short_lab_measures_every_pattern_and_short_polling_is_the_chattiest(
    tmp_path: Path,
) -> None:
    """Polls every 0.05 s for 5 messages a second: short polling makes more requests per
    delivered message than long polling, which makes more than SSE; nothing is missed."""
    chart = tmp_path / "lab.svg"
    result = lab_json(
        "--clients", "3", "--rate", "5", "--seconds", "1", "--interval", "0.05",
        "--job-seconds", "0.1", "--processes", "1", "--chart", str(chart),
    )  # fmt: skip
    assert result["server"]["store"].startswith("sqlite:///")  # the default: a temporary file
    (point,) = result["points"]
    rows = {r["pattern"]: r for r in point["results"]}
    assert list(rows) == ALL
    for name, r in rows.items():
        assert r["requests"] > 0, name
        assert r["bytes_out"] > 0, name
        assert r["bytes_in"] > 0, name
        assert r["delivered"] > 0, name
        assert r["missed"] == 0, (name, r["errors"])
        assert r["duplicated"] == 0, name
        assert r["errors"] == [], name
        assert r["server_cpu_s"] is not None, name
        assert r["latency_p50_ms"] is not None and r["latency_p50_ms"] <= r["latency_p99_ms"]
    for name in ("poll", "longpoll", "sse", "ws"):
        assert rows[name]["delivered"] == 3 * rows[name]["published"] == 15, name
    assert (
        rows["poll"]["requests_per_delivery"]
        > rows["longpoll"]["requests_per_delivery"]
        > rows["sse"]["requests_per_delivery"]
    )
    # A stream is one request, however many messages it carries; a request/response job
    # one request per result.
    assert rows["sse"]["requests"] == rows["ws"]["requests"] == 3
    assert rows["job-request"]["requests_per_delivery"] == 1
    # Streams hold their connection the whole run; short polls only while they wait.
    assert rows["sse"]["conns_held"] > 2.5
    assert rows["poll"]["conns_held"] < 1.5
    said = " ".join(point["claims"])
    for claim in ("Short polling is too chatty", "Long polling is less chatty",
                  "SSE is real time", "Pub/sub scales with receivers"):  # fmt: skip
        assert claim in said
    assert "as claimed" in said
    svg = chart.read_text()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert all(name in svg for name in ALL)
    assert result["chart"] == str(chart)


def test_a_sweep_of_two_points_against_a_running_server_notes_where_costs_cross(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """`--url` with `--server-pid` measures a server the lab did not start, CPU included;
    the sweep says where short polling costs more than long polling and where six
    HTTP/1.1 connections per origin run out."""
    server = tidings_server(store="memory://")
    result = lab_json(
        "--url", server.url, "--server-pid", str(server.pid), "--clients", "2,8",
        "--rate", "4", "--seconds", "0.5", "--interval", "0.05",
        "--patterns", "poll,longpoll,sse", "--processes", "1",
        "--chart", str(tmp_path / "sweep.svg"),
    )  # fmt: skip
    assert result["server"]["url"] == server.url
    assert [p["clients"] for p in result["points"]] == [2, 8]
    for point in result["points"]:
        rows = {r["pattern"]: r for r in point["results"]}
        assert list(rows) == ["poll", "longpoll", "sse"]
        for r in rows.values():
            assert r["missed"] == 0 and r["delivered"] == point["clients"] * r["published"]
            assert r["server_cpu_s"] is not None
    notes = " ".join(result["sweep_notes"])
    assert "Short polling makes more requests per delivered message than long polling at" in notes
    # 8 SSE subscribers, taken as the tabs of one browser, overflow its 6 connections; 2 do not.
    (sse_note,) = [n for n in result["sweep_notes"] if n.startswith("SSE:")]
    assert sse_note.endswith("overflow its 6 connections at 8 clients at 4 msg/s."), sse_note
    assert (tmp_path / "sweep.svg").read_text().startswith("<svg")
    # Without --server-pid the CPU of a server the lab did not start is unknown, not guessed.
    quick = lab_json(
        "--url", server.url, "--clients", "1", "--rate", "2", "--seconds", "0.5",
        "--patterns", "sse", "--processes", "1", "--no-chart",
    )  # fmt: skip
    assert quick["points"][0]["results"][0]["server_cpu_s"] is None
    assert quick["server"]["cpu"].startswith("unknown")


def test_the_lab_serves_its_server_from_the_store_it_is_given(redis_url: str) -> None:
    """`--store redis://…`: the lab's own server runs on Redis, and a channel and a job
    pattern deliver everything through it."""
    result = lab_json(
        "--store", redis_url, "--clients", "2", "--rate", "4", "--seconds", "0.5",
        "--job-seconds", "0.05", "--patterns", "ws,job-longpoll", "--processes", "1",
        "--no-chart",
    )  # fmt: skip
    assert result["server"]["store"] == redis_url
    assert "chart" not in result
    rows = {r["pattern"]: r for r in result["points"][0]["results"]}
    assert list(rows) == ["ws", "job-longpoll"]
    assert rows["ws"]["delivered"] == 2 * rows["ws"]["published"] == 4
    assert rows["job-longpoll"]["delivered"] > 0
    for r in rows.values():
        assert r["missed"] == 0 and r["errors"] == [] and r["server_cpu_s"] is not None


def test_a_server_that_requires_auth_is_measured_with_a_token(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """`--token` goes on every request of the clients, the publisher and the worker; the
    command the JSON records leaves it out."""
    store = f"sqlite:///{tmp_path / 'auth.db'}"
    grants = ["--publish", "lab.*", "--subscribe", "lab.*", "--submit", "lab.*", "--work", "lab.*"]
    cli_ok("users", "add", "labber", "--store", store, *grants)
    token = cli_ok("tokens", "create", "labber", "--store", store).strip().split()[-1]
    server = auth_server(tidings_server, store, "database")
    refused = lab("--url", server.url, "--clients", "1", "--seconds", "0.5", "--patterns", "sse",
                  "--no-chart")  # fmt: skip
    assert refused.returncode == 1
    assert "HTTP 401" in refused.stderr and "Traceback" not in refused.stderr
    result = lab_json(
        "--url", server.url, "--token", token, "--clients", "2", "--rate", "4",
        "--seconds", "0.5", "--job-seconds", "0.05", "--patterns", "sse,job-request",
        "--processes", "1", "--no-chart",
    )  # fmt: skip
    for r in result["points"][0]["results"]:
        assert r["delivered"] > 0 and r["missed"] == 0 and r["errors"] == [], r
    assert token not in result["command"]
    assert "--token TOKEN" in result["command"]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--clients", "0"], "--clients: 0 is not between 1 and 5000"),
        (["--clients", "10,ten"], "--clients: 'ten' is not a number"),
        (["--rate", "0"], "--rate: 0 is not between 0.1 and 5000"),
        (["--seconds", "-1"], "--seconds: -1 is not between"),
        (["--interval", "nan"], "--interval: nan is not between"),
        (["--rate", "5000", "--seconds", "600"], "--rate x --seconds"),
        (["--patterns", "poll,smoke-signals"], "'smoke-signals' is not a pattern: pick from all"),
        (["--url", "https://127.0.0.1:1"], "the lab speaks plain HTTP/1.1"),
        (["--url", "http://127.0.0.1:1", "--store", "memory://"], "--url and --store"),
        (["--server-pid", "1"], "--server-pid goes with --url"),
        (["--token", "tdt_x"], "--token (or TIDINGS_TOKEN) goes with --url"),
    ],
)
def test_a_bad_flag_value_is_refused_with_what_to_fix(args: list[str], said: str) -> None:
    done = tidings_cli("lab", *args, "--no-chart")
    assert done.returncode != 0
    assert said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_url_with_no_server_says_so() -> None:
    done = tidings_cli("lab", "--url", f"http://127.0.0.1:{free_port()}", "--no-chart")
    assert done.returncode == 1
    assert "no tidings server ready there" in done.stderr
