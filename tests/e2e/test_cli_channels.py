"""`tidings channels list|get|retention|delete` against a real server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess
from tests.e2e.helpers import cli_ok, tidings_cli
from tests.e2e.test_cli_commands import piped

pytestmark = pytest.mark.timeout(60)

RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
LONG_NAME = "orders.europe.west.warehouse-amsterdam-schiphol-logistics-park.outbound"


@pytest.fixture
def srv(tidings_server: ServerFactory) -> ServerProcess:
    return tidings_server(args=["--max-messages", "100", "--max-age", "86400"])


def publish(srv: ServerProcess, channel: str, *data: str) -> list[str]:
    return [cli_ok("publish", channel, d, "--url", srv.url).strip() for d in data]


def test_channels_list_is_a_whole_table_in_a_pipe_and_json_for_scripts(srv: ServerProcess) -> None:
    ids = publish(srv, LONG_NAME, "a", "b", "c")
    publish(srv, "news", "x")
    table = piped("channels", "list", "--url", srv.url)
    assert table.returncode == 0, table.stderr
    assert "…" not in table.stdout
    (row,) = (line for line in table.stdout.splitlines() if LONG_NAME in line)
    assert ids[0] in row
    assert ids[-1] in row
    assert re.search(r"│\s*3\s*│", row)
    assert "100 messages, 1d" in row
    header = table.stdout.splitlines()[1]
    assert [h for h in re.split(r"[\s┃│]+", header) if h] == [
        "name", "messages", "first", "last", "created", "retention",
    ]  # fmt: skip

    listed = json.loads(piped("channels", "list", "--json", "--url", srv.url).stdout)
    assert [c["name"] for c in listed] == ["news", LONG_NAME]
    mine = listed[1]
    assert (mine["first_id"], mine["last_id"], mine["messages"]) == (ids[0], ids[-1], 3)
    assert RFC3339.fullmatch(mine["created"]), mine
    assert mine["retention"] == {"max_messages": 100, "max_age": 86400, "custom": False}
    prefixed = piped("channels", "list", "--prefix", "orders.", "--json", "--url", srv.url)
    assert [c["name"] for c in json.loads(prefixed.stdout)] == [LONG_NAME]
    limited = piped("channels", "list", "--limit", "1", "--json", "--url", srv.url)
    assert [c["name"] for c in json.loads(limited.stdout)] == ["news"]


def test_channels_get_prints_the_channel_as_json(srv: ServerProcess) -> None:
    ids = publish(srv, "news", "one", "two")
    info = json.loads(piped("channels", "get", "news", "--url", srv.url).stdout)
    assert info["name"] == "news"
    assert (info["first_id"], info["last_id"], info["messages"]) == (ids[0], ids[1], 2)
    assert RFC3339.fullmatch(info["created"])
    assert isinstance(info["subscribers"], dict)
    missing = tidings_cli("channels", "get", "nothing-here", "--url", srv.url)
    assert missing.returncode == 1
    assert missing.stderr.startswith("tidings channels get: ")
    assert "(HTTP 404 " in missing.stderr


def test_channels_retention_sets_either_limit_keeps_the_other_and_returns_to_default(
    srv: ServerProcess,
) -> None:
    publish(srv, "news", *(str(n) for n in range(5)))
    said = cli_ok("channels", "retention", "news", "--max-messages", "3", "--url", srv.url)
    assert said.strip() == "news: keeps 3 messages, 1d (own)"
    said = cli_ok("channels", "retention", "news", "--max-age", "3600", "--url", srv.url)
    assert said.strip() == "news: keeps 3 messages, 1h (own)"
    info = httpx.get(f"{srv.url}/v1/channels/news", timeout=10).json()
    assert info["retention"] == {"max_messages": 3, "max_age": 3600, "custom": True}
    assert info["messages"] == 3
    said = cli_ok("channels", "retention", "news", "--default", "--url", srv.url)
    assert said.strip() == "news: keeps 100 messages, 1d"

    nothing = tidings_cli("channels", "retention", "news", "--url", srv.url)
    assert nothing.returncode == 2
    assert "give --max-messages, --max-age, or --default" in nothing.stderr
    both = tidings_cli("channels", "retention", "news", "--default", "--max-age", "5")
    assert both.returncode == 2
    out_of_range = tidings_cli(
        "channels", "retention", "news", "--max-messages", "10", "--max-age", "1e12",
        "--url", srv.url,
    )  # fmt: skip
    assert out_of_range.returncode == 1
    assert out_of_range.stderr.startswith("tidings channels retention: ")
    assert "HTTP 4" in out_of_range.stderr


def test_channels_delete_asks_unless_yes_and_refuses_without_a_terminal(
    srv: ServerProcess,
) -> None:
    publish(srv, "news", "x")
    refused = piped("channels", "delete", "news", "--url", srv.url, stdin="y\n")
    assert refused.returncode == 2
    assert "pass --yes" in refused.stderr
    assert httpx.get(f"{srv.url}/v1/channels/news", timeout=10).status_code == 200
    assert cli_ok("channels", "delete", "news", "--yes", "--url", srv.url).strip() == "deleted news"
    assert httpx.get(f"{srv.url}/v1/channels/news", timeout=10).status_code == 404
    again = tidings_cli("channels", "delete", "news", "-y", "--url", srv.url)
    assert again.returncode == 1
    assert "(HTTP 404 " in again.stderr


def test_channels_delete_on_a_terminal_deletes_only_on_yes(srv: ServerProcess) -> None:
    publish(srv, "news", "x")

    def answer(reply: str) -> subprocess.CompletedProcess[str]:
        primary, secondary = os.openpty()
        try:
            os.write(primary, reply.encode())
            return subprocess.run(
                [sys.executable, "-m", "tidings", "channels", "delete", "news", "--url", srv.url],
                stdin=secondary,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        finally:
            os.close(secondary)
            os.close(primary)

    kept = answer("n\n")
    assert kept.returncode == 1
    assert "Delete channel 'news' and all its messages?" in kept.stdout
    assert kept.stderr == "tidings channels delete: not deleted\n"
    assert httpx.get(f"{srv.url}/v1/channels/news", timeout=10).status_code == 200
    deleted = answer("y\n")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout.rstrip().endswith("deleted news")
    assert httpx.get(f"{srv.url}/v1/channels/news", timeout=10).status_code == 404
