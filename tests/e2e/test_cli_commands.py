"""The client commands as a shell user and a script meet them: what `tidings publish`
sends, errors that say what to do in one paragraph, tables that a pipe receives whole,
`--json` on the user and token listings, and an example in every command's help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerFactory, ServerProcess, free_port
from tests.e2e.auth.helpers import auth_server
from tests.e2e.helpers import cli_ok, tidings_cli

pytestmark = pytest.mark.timeout(60)


def piped(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m tidings ARGS` with stdout a pipe and no COLUMNS: as `tidings … | cat`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TIDINGS_") and k not in ("COLUMNS", "LINES")
    }
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        input=stdin,
        capture_output=True,  # stdout is a pipe, as in `tidings … | cat`
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


def stored(srv: ServerProcess, channel: str) -> list[Any]:
    """The data of every message the channel keeps, as the HTTP API returns it."""
    page = httpx.get(f"{srv.url}/v1/channels/{channel}/messages?after=0", timeout=10).json()
    return [m["data"] for m in page["messages"]]


# publish ----------------------------------------------------------------------------------


def test_publish_sends_json_as_its_value_and_anything_else_as_text(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    for data in ('{"a": 1}', "[1, 2]", "42", "true", "null", '"quoted"', "hello", "two words"):
        cli_ok("publish", "news", data, "--url", srv.url)
    assert stored(srv, "news") == [{"a": 1}, [1, 2], 42, True, None, "quoted", "hello", "two words"]


def test_publish_text_keeps_json_looking_data_as_text_and_json_refuses_text(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    cli_ok("publish", "news", '{"a": 1}', "--text", "--url", srv.url)
    cli_ok("publish", "news", "42", "--text", "--url", srv.url)
    cli_ok("publish", "news", "[3]", "--json", "--url", srv.url)
    cli_ok("publish", "news", "-", "--url", srv.url, stdin='{"from": "stdin"}\n')
    # NaN is not JSON (no JSON parser elsewhere reads it): text.
    cli_ok("publish", "news", "NaN", "--url", srv.url)
    refused = tidings_cli("publish", "news", "hello", "--json", "--url", srv.url)
    assert refused.returncode == 2
    assert refused.stderr.startswith("tidings publish: --json given but DATA is not JSON")
    both = tidings_cli("publish", "news", "1", "--json", "--text", "--url", srv.url)
    assert both.returncode == 2
    assert "--json and --text" in both.stderr
    assert stored(srv, "news") == ['{"a": 1}', "42", [3], {"from": "stdin"}, "NaN"]


def test_subscribe_prints_json_lines_from_a_channel_not_yet_created_too(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    cli_ok("publish", "news", '{"n": 1}', "--url", srv.url)
    cli_ok("publish", "news", "two", "--url", srv.url)
    lines = cli_ok(
        "subscribe", "news", "--after", "0", "--count", "2", "--via", "poll", "--url", srv.url
    ).splitlines()
    assert [json.loads(line)["data"] for line in lines] == [{"n": 1}, "two"]
    # A channel nobody has published to yet is not an error: the subscription waits.
    waiting = subprocess.Popen(
        [sys.executable, "-m", "tidings", "subscribe", "later", "--count", "1", "--url", srv.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            cli_ok("publish", "later", "now", "--url", srv.url)
            try:
                out, err = waiting.communicate(timeout=1)
            except subprocess.TimeoutExpired:
                continue
            assert waiting.returncode == 0, err
            assert json.loads(out.splitlines()[0])["data"] == "now"
            break
        else:
            pytest.fail("subscribe never printed the message published after it started")
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait(10)


def test_a_reader_that_stops_early_ends_the_command_quietly(tidings_server: ServerFactory) -> None:
    """`tidings subscribe … | head -1`: no BrokenPipeError traceback, SIGPIPE's status."""
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        for n in range(150):  # well over a pipe's buffer
            r = http.post("/v1/channels/big/messages", json={"data": {"n": n, "pad": "x" * 2000}})
            assert r.status_code == 201, r.text
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tidings", "subscribe", "big", "--after", "0", "--via", "poll",
         "--count", "150", "--url", srv.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stderr is not None
    assert json.loads(proc.stdout.readline())["data"]["n"] == 0
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(30) == 141, stderr
    assert stderr == ""


# errors -----------------------------------------------------------------------------------


def test_no_server_is_one_line_naming_the_url_and_how_to_start_one() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (
        ("publish", "news", "hi"),
        ("subscribe", "news"),  # the subscription retries by itself: checked once first
        ("jobs", "list"),
        ("jobs", "submit", "echo"),
        ("channels", "list"),
    ):
        done = piped(*args, "--url", url)
        assert done.returncode == 1, done
        assert done.stdout == ""
        command = " ".join(args[:2]) if args[0] in ("jobs", "channels") else args[0]
        assert done.stderr == (
            f"tidings {command}: no tidings server at {url}: start one with `tidings serve` "
            "or pass --url / TIDINGS_URL\n"
        )


def test_a_url_that_is_not_http_is_a_usage_error() -> None:
    done = tidings_cli("jobs", "list", "--url", "ftp://127.0.0.1:1")
    assert done.returncode == 2
    assert done.stderr.startswith("tidings jobs list: --url / TIDINGS_URL: url must start with")


def test_an_error_is_one_paragraph_even_when_longer_than_the_terminal(
    tidings_server: ServerFactory,
) -> None:
    """A narrow COLUMNS must not break a message (or a command quoted in it) into lines."""
    srv = tidings_server()
    env = {**os.environ, "COLUMNS": "40"}
    env.pop("TIDINGS_URL", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tidings",
            "jobs",
            "get",
            "no-such-job-" + "x" * 60,
            "--url",
            srv.url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("tidings jobs get: ")
    assert "(HTTP 404 " in done.stderr


def test_401_and_403_say_how_to_pass_a_token_and_how_to_get_a_permission(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    store = f"sqlite:///{tmp_path / 'auth.db'}"
    cli_ok("users", "add", "alice", "--store", store, "--publish", "news.*")
    secret = cli_ok("tokens", "create", "alice", "--store", store).strip()
    srv = auth_server(tidings_server, store, "database")

    anonymous = tidings_cli("publish", "news.a", "hi", "--url", srv.url)
    assert anonymous.returncode == 1
    assert anonymous.stderr.count("\n") == 1
    assert "(HTTP 401 " in anonymous.stderr
    assert ". Pass a token with --token or TIDINGS_TOKEN" in anonymous.stderr
    assert "`tidings tokens create USER --store STORE`" in anonymous.stderr

    wrong = tidings_cli("publish", "news.a", "hi", "--url", srv.url, "--token", "not-a-token")
    assert wrong.returncode == 1
    assert "(HTTP 401 " in wrong.stderr
    assert "The token was refused" in wrong.stderr

    denied = tidings_cli("publish", "other", "hi", "--url", srv.url, "--token", secret)
    assert denied.returncode == 1
    assert "(HTTP 403 " in denied.stderr
    assert "An admin grants the permission with `tidings users grant USER --store STORE" in (
        denied.stderr
    )

    assert cli_ok("publish", "news.a", "hi", "--url", srv.url, "--token", secret).strip()


# users and tokens -------------------------------------------------------------------------


def test_users_and_tokens_list_as_json(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'users.db'}"
    cli_ok("users", "add", "app", "--store", store, "--publish", "news.*", "--submit", "report")
    cli_ok(
        "users", "add", "ann", "--store", store, "--password-stdin", "--admin",
        stdin="a long passphrase\n",
    )  # fmt: skip
    secret = cli_ok("tokens", "create", "app", "--store", store, "--name", "ci").strip()

    users = json.loads(piped("users", "list", "--store", store, "--json").stdout)
    by_name = {u["name"]: u for u in users}
    assert set(by_name) == {"app", "ann"}
    assert by_name["app"]["publish"] == ["news.*"]
    assert by_name["app"]["submit"] == ["report"]
    assert by_name["app"]["password"] is False
    assert by_name["ann"]["admin"] is True
    assert by_name["ann"]["password"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", by_name["app"]["created"])

    tokens = json.loads(piped("tokens", "list", "--store", store, "--json").stdout)
    assert [(t["kind"], t["user"], t["name"], t["expires"]) for t in tokens] == [
        ("token", "app", "ci", None)
    ]
    assert len(tokens[0]["key"]) == 12
    assert secret not in json.dumps(tokens)
    assert (
        json.loads(piped("tokens", "list", "--store", store, "--user", "ann", "--json").stdout)
        == []
    )


def test_admin_errors_name_the_command_and_the_fix(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'users.db'}"
    missing = tidings_cli("tokens", "create", "nobody", "--store", store)
    assert missing.returncode == 1
    assert missing.stderr == (
        "tidings tokens create: no user 'nobody': add it first with "
        "`tidings users add nobody --store …`\n"
    )
    memory = tidings_cli("users", "list", "--store", "memory://")
    assert memory.returncode == 2
    assert memory.stderr.startswith("tidings users list: memory:// keeps nothing")


# help -------------------------------------------------------------------------------------

OWN_COMMANDS = [
    ("publish",),
    ("subscribe",),
    *(
        ("jobs", c)
        for c in ("submit", "get", "wait", "cancel", "retry", "list", "dead", "queues", "limit")
    ),
    *(("channels", c) for c in ("list", "get", "retention", "delete")),
    *(("schedules", c) for c in ("add", "list", "remove")),
    *(("users", c) for c in ("add", "grant", "remove", "list")),
    *(("tokens", c) for c in ("create", "list", "revoke")),
    ("workers",),
    ("lab",),
    ("bridges",),
    ("bridges", "outbox-ddl"),
]


def _options(help_text: str) -> dict[str, str]:
    """Each option of a help page with its whole description (joined across lines)."""
    section = help_text.split("\nOptions:\n", 1)[1].split("\n\n", 1)[0]
    entries: dict[str, str] = {}
    name = ""
    for line in section.splitlines():
        m = re.match(r"  (-[-\w]+(?:, -[-\w]+)?)\s*(.*)", line)
        if m:
            name = m.group(1)
            entries[name] = m.group(2)
        elif name:
            entries[name] += " " + line.strip()
    return entries


@pytest.mark.parametrize("command", OWN_COMMANDS, ids=" ".join)
def test_every_command_has_an_example_and_every_option_its_default(
    command: tuple[str, ...],
) -> None:
    done = piped(*command, "--help")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "\n  Examples:\n    tidings " + " ".join(command) in text, text
    options = _options(text)
    assert options, text
    for name, description in options.items():
        if name == "--help":
            continue
        assert re.search(r"default|required", description, re.IGNORECASE), (name, description)


def test_channels_is_a_command_group_of_tidings() -> None:
    text = piped("--help").stdout
    assert re.search(r"^\s+channels\s+Channels", text, re.MULTILINE), text


@pytest.mark.parametrize("via", ["sse", "ws", "longpoll", "poll"])
def test_subscribe_prints_the_real_time_on_every_transport(
    tidings_server: ServerFactory, via: str
) -> None:
    """Every transport carries the message's time (SSE since the SDK asks for
    format=json), and the line prints it, never 1970."""
    srv = tidings_server()
    cli_ok("publish", "timed", "x", "--url", srv.url)
    line = json.loads(
        cli_ok("subscribe", "timed", "--after", "0", "--count", "1", "--via", via, "--url", srv.url)
    )
    assert line["data"] == "x"
    assert line["time"].startswith(time.strftime("%Y-", time.gmtime()))
