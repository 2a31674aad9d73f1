"""`tidings schedules add|list|remove` against a real server."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ServerFactory
from tests.e2e.helpers import cli_ok, tidings_cli

pytestmark = pytest.mark.timeout(60)


def test_schedules_are_added_listed_and_removed_from_the_command_line(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    url = ("--url", srv.url)
    added = json.loads(
        cli_ok(
            "schedules", "add", "nightly", "--type", "report", "--cron", "0 3 * * *",
            "--timezone", "Europe/Paris", "--payload", '{"full": true}', *url,
        )
    )  # fmt: skip
    assert (added["name"], added["cron"], added["timezone"]) == (
        "nightly",
        "0 3 * * *",
        "Europe/Paris",
    )
    assert added["payload"] == {"full": True}
    cli_ok("schedules", "add", "beat", "--type", "ping", "--every", "60", *url)
    table = cli_ok("schedules", "list", *url)
    assert "nightly" in table
    assert "cron 0 3 * * * (Europe/Paris)" in table
    assert "every 60s" in table
    listed = json.loads(cli_ok("schedules", "list", "--json", *url))
    assert [s["name"] for s in listed] == ["beat", "nightly"]
    assert "removed schedule beat" in cli_ok("schedules", "remove", "beat", *url)
    assert [s["name"] for s in json.loads(cli_ok("schedules", "list", "--json", *url))] == [
        "nightly"
    ]


def test_a_bad_schedule_is_refused_saying_what_to_fix(tidings_server: ServerFactory) -> None:
    srv = tidings_server()
    url = ("--url", srv.url)
    both = tidings_cli("schedules", "add", "x", "--type", "t", *url)
    assert both.returncode == 2
    assert "exactly one of --cron" in both.stderr
    bad = tidings_cli("schedules", "add", "x", "--type", "t", "--cron", "* * *", *url)
    assert bad.returncode == 1
    assert "five fields" in " ".join(bad.stderr.split())
    zone = tidings_cli(
        "schedules", "add", "x", "--type", "t", "--cron", "* * * * *", "--timezone", "Moon/Base",
        *url,
    )  # fmt: skip
    assert zone.returncode == 1
    assert "IANA" in " ".join(zone.stderr.split())
    gone = tidings_cli("schedules", "remove", "nope", *url)
    assert gone.returncode == 1
    assert "no schedule" in " ".join(gone.stderr.split())
