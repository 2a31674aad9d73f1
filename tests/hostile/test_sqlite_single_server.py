"""One SQLite file, one server: a second `tidings serve` on the file refuses to start.

Two servers on one file both started, then each kept its own channel sequences (writes
failed with `503 … UNIQUE constraint failed`) and its own subscribers (each missed the
other's messages). The server's store now holds `<db>.lock`; the users and tokens commands
do not take it and keep working beside a running server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerProcess, free_port
from tests.e2e.helpers import tidings_cli as tidings
from tidings.server.principals import Permissions, User
from tidings.server.stores import Retention, open_store
from tidings.server.stores.sqlite import SQLiteStore, StoreLocked

pytestmark = pytest.mark.timeout(90)

ServerFactory = Any  # tests.conftest.ServerFactory: (store=, args=, env=) -> ServerProcess


def publish(srv: ServerProcess, channel: str, data: Any, token: str | None = None) -> str:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    r = httpx.post(
        f"{srv.url}/v1/channels/{channel}/messages",
        json={"data": data},
        headers=headers,
        timeout=10,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def history(srv: ServerProcess, channel: str) -> list[Any]:
    r = httpx.get(f"{srv.url}/v1/channels/{channel}/messages?after=0", timeout=10)
    assert r.status_code == 200, r.text
    return [m["data"] for m in r.json()["messages"]]


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_a_second_server_on_the_same_sqlite_file_refuses_to_start_naming_the_holder(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """The second `tidings serve` exits non-zero within seconds, before it binds its port,
    with one message naming the first server's pid and pointing to --handlers and Redis;
    the first serves on, its sequence unbroken."""
    store = f"sqlite:///{tmp_path / 'one.db'}"
    first = tidings_server(store=store)
    assert publish(first, "news", "before") == "1"

    port = free_port()
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--store", store],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )
    assert time.monotonic() - started < 20
    assert second.returncode != 0
    message = " ".join(second.stderr.split())
    assert f"in use by process {first.pid}" in message, second.stderr
    assert f"--port {first.port}" in message  # the holder's command line
    assert "--handlers" in message
    assert "redis://" in message
    assert "Traceback" not in second.stderr + second.stdout
    assert not listening(port)

    # The first server is untouched: its next message follows the first one.
    assert publish(first, "news", "after") == "2"
    assert history(first, "news") == ["before", "after"]
    assert httpx.get(f"{first.url}/readyz", timeout=10).status_code == 200


def test_a_server_restarts_on_its_file_after_a_clean_stop_and_after_sigkill(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """The lock goes with the process: released by a clean stop, and by the kernel when the
    server is killed, so a crash never leaves a file nobody may serve."""
    store = f"sqlite:///{tmp_path / 'restart.db'}"
    srv = tidings_server(store=store)
    publish(srv, "c", 1)

    srv.restart(signal.SIGTERM)
    publish(srv, "c", 2)

    srv.kill()  # SIGKILL: no close, no release by the server itself
    srv.start()
    publish(srv, "c", 3)
    assert history(srv, "c") == [1, 2, 3]

    # A second server is still refused by the restarted one.
    done = tidings("serve", "--port", str(free_port()), "--store", store)
    assert done.returncode != 0
    assert f"in use by process {srv.pid}" in " ".join(done.stderr.split())


def test_users_and_tokens_commands_work_beside_a_running_server(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """`tidings users add`, `users list` and `tokens create` do not take the server lock:
    they succeed while the server runs, and the server at once knows the user (login) and
    the token."""
    db = tmp_path / "admin.db"
    store = f"sqlite:///{db}"
    srv = tidings_server(store=store, args=["--require-auth"])
    password = secrets.token_urlsafe(16)

    added = tidings(
        "users", "add", "carol", "--store", store, "--password-stdin", "--publish", "news.*",
        "--subscribe", "news.*", stdin=password + "\n",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = tidings("users", "list", "--store", store)
    assert listed.returncode == 0, listed.stderr
    assert "carol" in listed.stdout
    created = tidings("tokens", "create", "carol", "--store", store, "--name", "ci")
    assert created.returncode == 0, created.stderr
    api_token = created.stdout.strip()

    r = httpx.post(
        f"{srv.url}/v1/auth/login", json={"username": "carol", "password": password}, timeout=10
    )
    assert r.status_code == 200, r.text
    session = str(r.json()["token"])
    assert publish(srv, "news.x", "by session", token=session) == "1"
    assert publish(srv, "news.x", "by token", token=api_token) == "2"

    # The server still holds the file: the commands did not take or drop its lock.
    assert f'"pid": {srv.pid}' in Path(f"{db}.lock").read_text()
    done = tidings("serve", "--port", str(free_port()), "--store", store)
    assert done.returncode != 0
    assert "in use by process" in " ".join(done.stderr.split())


def test_in_one_process_a_second_server_store_is_refused_and_a_shared_one_is_not(
    tmp_path: Path,
) -> None:
    """The lock is per open file, not per process: a second server store in the same
    process is refused as well (two stores would keep two sequences), through a symlink
    too; a store opened as the users commands open it reads and writes beside it; after
    close the file is free again."""
    db = tmp_path / "inproc.db"
    link = tmp_path / "link.db"
    link.symlink_to(db)
    retention = Retention(100, 3600.0)

    async def main() -> None:
        server = open_store(f"sqlite:///{db}", retention)
        await server.start()
        try:
            for path in (db, link):
                with pytest.raises(StoreLocked, match=r"this process \(\d+, another store"):
                    open_store(f"sqlite:///{path}", retention)
                second = SQLiteStore(str(path), retention, exclusive=True)
                with pytest.raises(OSError, match="redis://"):
                    await second.start()
            shared = open_store(f"sqlite:///{db}", retention, exclusive=False)
            await shared.start()
            try:
                await shared.auth.put_user(User("dave", None, Permissions(), time.time()))
            finally:
                await shared.close()
            assert await server.auth.get_user("dave") is not None
            assert (await server.channels.publish("c", 1)).message.id == "1"
        finally:
            await server.close()
        assert Path(f"{db}.lock").read_text() == ""  # released, nobody named
        again = open_store(f"sqlite:///{db}", retention)
        await again.start()
        try:
            assert (await again.channels.publish("c", 2)).message.id == "2"
        finally:
            await again.close()

    asyncio.run(main())
