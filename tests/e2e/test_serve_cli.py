"""`tidings serve` refuses unsafe or malformed configurations before it binds anything,
says what is wrong in one paragraph (store URLs, a busy or forbidden port), and its help
and `tidings worker`'s teach every option's default and environment variable."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ServerFactory, free_port
from tidings.sdk.worker import ASYNC_CONCURRENCY, SYNC_CONCURRENCY
from tidings.server.runner import BACKLOG, MAX_LISTENERS, listeners
from tidings.server.settings import Settings

pytestmark = pytest.mark.timeout(30)


def _clean_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without TIDINGS_* variables (they would change the outcome),
    plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return {**base, "COLUMNS": "200", "NO_COLOR": "1", **(env or {})}


def _tidings(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env=_clean_env(env),
        cwd=cwd,
        check=False,
    )


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return _tidings("serve", "--store", "memory://", *args, env=env)


def test_a_non_loopback_address_without_auth_is_refused_with_a_way_out():
    done = _serve("--host", "0.0.0.0", "--port", "1")
    assert done.returncode != 0
    message = " ".join(done.stderr.split())
    assert "refusing to serve anonymous clients on 0.0.0.0" in message
    assert "--allow-anonymous" in message


def test_a_malformed_boolean_variable_is_refused():
    done = _serve("--port", "1", env={"TIDINGS_ALLOW_ANONYMOUS": "maybe"})
    assert done.returncode == 2
    assert "TIDINGS_ALLOW_ANONYMOUS" in done.stderr


def test_an_unknown_store_url_is_refused():
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--store", "postgres://x", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown store URL" in " ".join(done.stderr.split())


def test_settings_read_booleans_and_numbers_from_the_environment():
    s = Settings.from_env({"TIDINGS_ALLOW_ANONYMOUS": "TRUE", "TIDINGS_PORT": "9001"})
    assert s.allow_anonymous is True
    assert s.port == 9001
    assert Settings.from_env({"TIDINGS_ALLOW_ANONYMOUS": "off"}).allow_anonymous is False
    assert Settings(host="::1").loopback
    assert not Settings(host="10.0.0.1").loopback


# -- help ----------------------------------------------------------------------------------


def _option_entries(help_text: str) -> dict[str, str]:
    """Each option of a help page: its first flag -> its whole entry on one line (click
    wraps an entry's text onto indented lines; a long flag pushes the text to the next)."""
    section = help_text.split("\nOptions:\n", 1)[1]
    entries: dict[str, str] = {}
    current = ""
    for line in section.splitlines():
        match = re.match(r"^  (--[a-z0-9-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current and line.startswith("   "):
            entries[current] += " " + line.strip()
    return {flag: " ".join(text.split()) for flag, text in entries.items()}


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_every_option_shows_its_default_and_its_variable(command: str) -> None:
    done = _tidings(command, "--help")
    assert done.returncode == 0, done.stderr
    entries = _option_entries(done.stdout)
    entries.pop("--help")
    assert len(entries) >= (40 if command == "serve" else 5), entries
    # `tidings worker --name`: a bare TIDINGS_NAME would say nothing of what it names.
    # `tidings serve --bridge URL`, repeatable: one bridge per option, all in TIDINGS_BRIDGES.
    variables = (
        {"--name": "TIDINGS_WORKER_NAME"}
        if command == "worker"
        else {"--bridge": "TIDINGS_BRIDGES"}
    )
    for flag, entry in entries.items():
        name = flag.removeprefix("--").replace("-", "_").upper()
        assert f"[env {variables.get(flag, f'TIDINGS_{name}')}]" in entry, entry
        default = re.search(r"\[default: ([^\]]+)\]", entry)
        assert default, entry
        assert default.group(1) not in ("None", "", '""'), entry
    if command == "serve":
        assert "[default: 8000] [env TIDINGS_PORT]" in entries["--port"]
        assert "[default: sqlite:///tidings.db]" in entries["--store"]
        assert "[default: off] [env TIDINGS_ACCESS_LOG]" in entries["--access-log"]
        assert "[default: 1] [env TIDINGS_WORKERS]" in entries["--workers"]
        assert "[default: text] [env TIDINGS_LOG_FORMAT]" in entries["--log-format"]
    else:
        assert "[default: http://127.0.0.1:8000] [env TIDINGS_URL]" in entries["--url"]


def test_worker_concurrency_help_states_the_defaults_by_handler_kind() -> None:
    entry = _option_entries(_tidings("worker", "--help").stdout)["--concurrency"]
    assert (
        f"[default: the Worker's own: Worker(concurrency=N) if set, else {ASYNC_CONCURRENCY} "
        f"when every handler is async def, {SYNC_CONCURRENCY} when any is a plain function"
    ) in entry, entry


def test_every_setting_but_the_secrets_is_a_serve_option() -> None:
    entries = _option_entries(_tidings("serve", "--help").stdout)
    env_only = {"jwt_secret", "app_jwt_key", "sqlite_synchronous"}  # secrets; a tuning knob
    singular = {"bridges": "--bridge"}  # repeated once per bridge
    for field in dataclasses.fields(Settings):
        if field.name not in env_only:
            flag = singular.get(field.name, "--" + field.name.replace("_", "-"))
            assert flag in entries, field.name


@pytest.mark.parametrize(
    ("command", "example"),
    [
        ("serve", "tidings serve --host 0.0.0.0 --require-auth --store redis://127.0.0.1:6379/0"),
        ("worker", "TIDINGS_CONCURRENCY=16 TIDINGS_LOG_FORMAT=json tidings worker"),
    ],
)
def test_help_ends_with_examples_kept_on_their_lines(command: str, example: str) -> None:
    out = _tidings(command, "--help").stdout
    assert "\n  Examples:\n" in out
    assert any(line.strip().startswith(example) for line in out.splitlines()), out


def test_an_option_on_the_command_line_wins_over_its_variable() -> None:
    # TIDINGS_REQUIRE_AUTH=true would be enough on 0.0.0.0; --no-require-auth turns it off.
    done = _serve("--host", "0.0.0.0", "--no-require-auth", env={"TIDINGS_REQUIRE_AUTH": "true"})
    assert done.returncode == 2
    assert "refusing to serve anonymous clients on 0.0.0.0" in done.stderr


# -- unknown variables -----------------------------------------------------------------------


def test_serve_names_an_unknown_variable_and_the_one_it_resembles() -> None:
    done = _serve("--host", "0.0.0.0", env={"TIDINGS_PROT": "9000", "TIDINGS_URL": "x"})
    assert done.returncode == 2  # stopped by the anonymous-on-0.0.0.0 check, after warning
    lines = [line for line in done.stderr.splitlines() if "TIDINGS_PROT" in line]
    assert len(lines) == 1, done.stderr
    assert "WARNING" in lines[0]
    assert "unknown environment variable TIDINGS_PROT is ignored" in lines[0]
    assert "(did you mean TIDINGS_PORT?)" in lines[0]
    assert "TIDINGS_URL" not in done.stderr  # read by the client commands: known


def test_worker_names_an_unknown_variable_too() -> None:
    done = _tidings("worker", "no_such_module:worker", env={"TIDINGS_CONCURENCY": "3"})
    assert done.returncode == 2
    assert "TIDINGS_CONCURENCY is ignored (did you mean TIDINGS_CONCURRENCY?)" in done.stderr
    assert "no_such_module" in done.stderr


# -- store URLs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:///missing-dir/x.db", ["missing-dir does not exist", "mkdir -p"]),
        ("sqlite:/x.db", ["needs three slashes", "sqlite:///x.db", "sqlite:////x.db"]),
        ("sqlite:x.db", ["needs three slashes", "sqlite:///x.db", "sqlite:////x.db"]),
        ("sqlite://x.db", ["names a host", "sqlite:///x.db"]),
        ("postgres://db/x", ["unknown store URL", "sqlite:///", "memory://", "redis://"]),
        ("x.db", ["has no scheme", "sqlite:///x.db"]),
    ],
)
def test_a_bad_store_url_is_one_paragraph_with_the_right_form(
    url: str, says: list[str], tmp_path: Path
) -> None:
    done = _tidings("serve", "--store", url, "--port", str(free_port()), cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"tidings serve: store URL {url!r}") or "unknown" in lines[0]
    for words in says:
        assert words in lines[0]
    assert list(tmp_path.iterdir()) == []  # no ./x.db made on the way


def test_an_unreachable_redis_is_named_without_its_password() -> None:
    nobody = free_port()  # nothing listens on it
    url = f"redis://:hunter2-secret@127.0.0.1:{nobody}/0"
    done = _tidings("serve", "--store", url, "--port", str(free_port()))
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"127.0.0.1:{nobody}" in output, output
    assert "hunter2" not in output


# -- the port ----------------------------------------------------------------------------------


def test_a_busy_port_is_one_line_and_nothing_says_ready() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = _serve("--port", str(port), env={"TIDINGS_LOG_LEVEL": "debug"})
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "ready" not in output
    assert "Traceback" not in output
    assert done.stderr.strip() == (
        f"tidings serve: port {port} on 127.0.0.1 is in use: stop the other process or "
        "pass --port / TIDINGS_PORT"
    )


def _listening_sockets(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port`, from the kernel's table."""
    wanted = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    # Columns: sl, local address, remote address, state (0A = LISTEN), ...
    return sum(1 for row in rows if row.split()[1] == wanted and row.split()[3] == "0A")


def test_a_capped_accept_queue_is_a_group_of_listeners_that_all_serve(
    tidings_server: ServerFactory,
) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    srv = tidings_server()
    expected = listeners(somaxconn)
    assert expected == (1 if somaxconn >= BACKLOG else min(8, -(-BACKLOG // somaxconn)))
    assert _listening_sockets(srv.port) == expected
    # Connections opened at once land on every member of the group: each is served.
    conns = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(64)]
    try:
        for conn in conns:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        for conn in conns:
            head = conn.recv(64)
            assert head.startswith(b"HTTP/1.1 200"), head
    finally:
        for conn in conns:
            conn.close()
    # The group shares its port with nobody: a second server on it is refused.
    done = _serve("--port", str(srv.port))
    assert done.returncode == 1, done.stderr
    assert f"port {srv.port} on 127.0.0.1 is in use" in done.stderr


def test_a_port_held_by_a_reuseport_socket_is_refused() -> None:
    # Another process's SO_REUSEPORT socket would take part of the connections if the
    # server joined it: the server's plain bind first refuses the port.
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = _serve("--port", str(port))
    assert done.returncode == 1, done.stderr
    assert f"port {port} on 127.0.0.1 is in use" in done.stderr


def test_the_listener_count_follows_somaxconn() -> None:
    assert listeners(4096) == -(-BACKLOG // 4096)
    assert listeners(BACKLOG) == 1
    assert listeners(BACKLOG * 2) == 1
    assert listeners(128) == MAX_LISTENERS  # a tiny cap: the most sockets, no more
    assert listeners(0) == 1


def _without_bind_capability() -> list[str]:
    """A prefix that runs a command unable to bind ports below 1024 (as root: setpriv gives
    up the capability). Skipped only where the kernel lets anyone bind port 1
    (`ip_unprivileged_port_start` 0 or 1): no port is privileged, so nothing to test."""
    # Below this port binding needs CAP_NET_BIND_SERVICE, for root as for anyone.
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if start.exists() and int(start.read_text()) <= 1:
        pytest.skip("every port may be bound here without privilege")
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv is missing: install the Debian package util-linux")
    return [setpriv, "--bounding-set", "-net_bind_service", "--inh-caps", "-net_bind_service"]


def test_a_port_that_may_not_be_bound_is_one_line_with_the_fix() -> None:
    prefix = _without_bind_capability()
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "tidings", "serve", "--store", "memory://", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=20,
        env=_clean_env(),
        check=False,
    )
    assert done.returncode == 1
    assert "ready" not in done.stdout + done.stderr
    assert done.stderr.strip() == (
        "tidings serve: port 1 on 127.0.0.1 is not permitted: ports below 1024 need root or "
        "CAP_NET_BIND_SERVICE; pass --port / TIDINGS_PORT (1024 or above)"
    )


def test_an_address_of_another_machine_is_refused_with_the_fix() -> None:
    # 192.0.2.0/24 is reserved for documentation: never an address of this machine.
    done = _serve("--host", "192.0.2.1", "--allow-anonymous", "--port", str(free_port()))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "cannot listen on 192.0.2.1: it is not an address of this machine" in done.stderr
    assert "--host / TIDINGS_HOST" in done.stderr


def test_forwarded_allow_ips_of_every_peer_beyond_loopback_is_warned_about() -> None:
    # 192.0.2.1 is no address of this machine: the server warns at start, then cannot
    # listen, and nothing is left to stop.
    for trusted in ("*", "0.0.0.0/0"):
        done = _serve(
            "--host", "192.0.2.1", "--allow-anonymous", "--port", str(free_port()),
            "--forwarded-allow-ips", trusted,
        )  # fmt: skip
        assert done.returncode == 1, done.stderr
        warning = [line for line in done.stderr.splitlines() if "WARNING" in line]
        assert len(warning) == 1, done.stderr
        assert f"--forwarded-allow-ips {trusted} on 192.0.2.1" in warning[0]
        assert "any client can choose the address the login limiter" in warning[0]


def test_forwarded_allow_ips_naming_proxies_or_on_loopback_is_not_warned_about() -> None:
    with socket.socket() as busy:  # a port in use: the server stops before it serves
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        on_loopback = _serve("--port", port, "--forwarded-allow-ips", "*")
        named = _serve(
            "--host", "192.0.2.1", "--allow-anonymous", "--port", port,
            "--forwarded-allow-ips", "127.0.0.1,10.0.0.0/8",
        )  # fmt: skip
    assert on_loopback.returncode == 1, on_loopback.stderr
    assert "is in use" in on_loopback.stderr
    assert named.returncode == 1, named.stderr
    assert "cannot listen on 192.0.2.1" in named.stderr
    assert "forwarded-allow-ips" not in on_loopback.stderr + named.stderr
