"""schemathesis over /openapi.json of a real server: no answer the document does not name.

Reproduced: run against the document as it was, schemathesis found statuses no operation
listed (400, 403, 409, 422 on most of them) and constraints it did not state (`limit`,
`wait`, a job's `type`), so valid-looking requests were refused and refusals were
undocumented. The run below is bounded (a fixed seed, a few examples per operation, short
stream reads) and must end with zero failures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerFactory

ROOT = Path(__file__).resolve().parents[2]

# Every check (schemathesis enables all by default) runs on every operation, except where
# it cannot apply:
CONFIG = """\
request-timeout = 10

# WebSocket paths: schemathesis speaks HTTP only, and a GET without the upgrade answers
# 426 by design (test_options_allow covers it; the sockets have their own tests).
[[operations]]
include-path-regex = "/ws$"
enabled = false

# An event stream never ends: read one event, or stop after half a second of silence.
[[operations]]
include-path-regex = "/events$"
request-timeout = 0.5
max-stream-events = 1

# The lab runs `tidings lab` for seconds a call, one at a time (409 for the others): its
# own test (tests/e2e/test_admin_lab.py) covers its bounds and answers.
[[operations]]
include-path = "/v1/admin/lab"
enabled = false

# JSON-RPC 2.0 answers a malformed call (even a missing body) in a 200 body with its own
# error codes (-32700, -32600): rejection of bad data is in the body, not the status.
[[operations]]
include-path = "/v1/rpc"
checks.negative_data_rejection.enabled = false

# A worker's batched report applies or refuses each outcome on its own (a result that
# cannot be stored is refused in its slot of a 200 answer, the other outcomes still
# apply): rejection of one outcome's bad data is in the body, not the status.
[[operations]]
include-path-regex = "^/v1/workers/(lease|report)$"
checks.negative_data_rejection.enabled = false

# A schedule's cron expression is checked field by field (ranges, names, a date that
# exists) by croniter, and its time zone against the server's IANA database: the schema
# states their shape only, so a schema-valid value may be refused (422 saying what to fix).
[[operations]]
include-path = "/v1/schedules/{name}"
include-method = "PUT"
checks.positive_data_acceptance.enabled = false

# A submit's `after` names jobs that must exist (and be the caller's): a schema-valid id
# of no job is 422 with what to fix, which no schema can state.
[[operations]]
include-path-regex = "^/v1/jobs(/batch)?$"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = [
    "2XX", "3XX", "401", "403", "404", "409", "422", "429", "5XX",
]
"""


@pytest.mark.timeout(240)
def test_schemathesis_finds_no_failure_in_a_bounded_run_against_the_openapi_document(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    # A short long-poll cap: generated `wait=` values end in a second, not thirty.
    srv = tidings_server(args=["--long-poll-cap", "1"])
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file", str(config),
        "--no-color",
        "run", f"{srv.url}/openapi.json",
        "--seed", "13",
        "--max-examples", "10",
        "--no-shrink",
        "--workers", "1",
        "--suppress-health-check", "all",
        "--report-dir", str(tmp_path / "report"),
    ]  # fmt: skip
    done = subprocess.run(
        command,
        check=False,
        cwd=tmp_path,
        env={
            "PYTHONPATH": str(ROOT),
            "PATH": str(Path(sys.executable).parent),
            "HOME": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=220,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-20_000:] + "\n--- server log ---\n" + srv.log()
    ran = re.search(r"(\d+) generated, (\d+) passed", output)
    assert ran is not None and ran.group(1) == ran.group(2), output[-3000:]
