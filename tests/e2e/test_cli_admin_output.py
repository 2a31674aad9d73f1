"""`tidings tokens list` and `tidings doctor` print as the other listings do: times in a
table are RFC 3339 to the second (UTC), in JSON RFC 3339 in full; a table read through a
pipe is whole, however narrow the terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

TABLE_TIME = re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\b")
JSON_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)$")


def _tidings(*args: str, columns: str = "200") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "COLUMNS": columns, "NO_COLOR": "1"},
        check=False,
    )


def test_tokens_list_shows_times_as_the_other_tables_do(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'tidings.db'}"
    assert _tidings("users", "add", "app", "--store", store).returncode == 0
    made = _tidings("tokens", "create", "app", "--store", store, "--expires", "3600")
    assert made.returncode == 0, made.stderr
    listed = _tidings("tokens", "list", "--store", store)
    assert listed.returncode == 0, listed.stderr
    [row] = [line for line in listed.stdout.splitlines() if " app " in line]
    assert len(TABLE_TIME.findall(row)) == 2, row  # created and expires
    as_json = _tidings("tokens", "list", "--store", store, "--json")
    [token] = json.loads(as_json.stdout)
    assert JSON_TIME.match(token["created"]), token
    assert JSON_TIME.match(token["expires"]), token
    assert token["created"][:19] + "Z" in row


def test_a_doctor_table_through_a_pipe_is_whole_on_a_narrow_terminal() -> None:
    target = "redis://127.0.0.1:1/0"  # loopback, port 1: nobody listens
    done = _tidings("doctor", target, "--tries", "1", "--timeout", "1", columns="40")
    assert done.returncode == 1, done.stderr  # not reachable
    rows = [line for line in done.stdout.splitlines() if line.startswith(f"│ {target} ")]
    assert len(rows) == 1, done.stdout
    assert re.search(r"127\.0\.0\.1\s.*\blocal\b.*\blo\b.*\bno\b", rows[0]), rows[0]
    assert "warning " + target + ": not reachable" in done.stdout


def test_a_doctor_target_that_is_not_one_is_one_line_and_exit_2() -> None:
    done = _tidings("doctor", "db.internal", columns="40")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith("tidings doctor: target 'db.internal': write HOST:PORT")
    assert len(done.stderr.strip().splitlines()) == 1
