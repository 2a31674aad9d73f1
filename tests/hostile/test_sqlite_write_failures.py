"""A failing SQLite write — here a full disk — is a 503 StoreError for the writes it
refuses; the writer thread lives on, reads keep being served, and once space is free
again writes resume where the sequence left off.

The failure is real: the database lives on a small tmpfs mounted for the test and filled
with a file until the kernel answers ENOSPC, so SQLite itself reports SQLITE_FULL when its
WAL must grow. (Tests run as root, so file permissions would not stop a write, and a
filesystem cannot be remounted read-only while the store holds its files open for writing.)
Mounting needs CAP_SYS_ADMIN, like the network namespaces the doctor tests build: `make
test` runs as root, and without it these tests fail saying so rather than skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tidings.protocol.errors import StoreError
from tidings.server.stores import Retention
from tidings.server.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.timeout(60)

DEFAULT = Retention(max_messages=100, max_age=3600.0)
# A message larger than anything the WAL holds yet: appending it must grow the file.
BIG = "x" * 200_000

ServerFactory = Any  # tests.conftest.ServerFactory


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(
            f"cannot mount a tmpfs ({done.stderr.strip()}): these tests need CAP_SYS_ADMIN; "
            "run make test as root"
        )
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free space)."""
    filler = disk / "filler"
    # Unbuffered: a buffered file would try the refused bytes again when closed, and fail.
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
    return filler


def test_a_full_disk_refuses_writes_with_store_error_and_reads_go_on(small_disk: Path) -> None:
    """Publishing onto a full disk raises StoreError saying the disk is full and that
    nothing was written; reads, info and ping still answer; after space is freed the
    next publish gets the next id, as if the refused one had never been tried."""

    async def main() -> None:
        store = SQLiteStore(str(small_disk / "full.db"), DEFAULT)
        await store.start()
        try:
            for i in range(3):
                await store.channels.publish("c", i)
            filler = fill(small_disk)
            with pytest.raises(StoreError, match=r"nothing was written.*disk .* is full"):
                await store.channels.publish("c", BIG)
            with pytest.raises(StoreError, match="full"):  # the writer thread lives on
                await store.channels.publish("c", BIG)
            res = await store.channels.read("c", "0", 10)
            assert [m.data for m in res.messages] == [0, 1, 2]
            info = await store.channels.info("c")
            assert info is not None and info.last_id == "3"
            await store.ping()

            filler.unlink()
            ack = await store.channels.publish("c", BIG)
            assert ack.message.id == "4" and ack.prev_id == "3"
            res = await store.channels.read("c", "3", 10)
            assert [m.id for m in res.messages] == ["4"]
        finally:
            await store.close()

    asyncio.run(main())


def test_a_server_on_a_full_disk_answers_503_for_writes_and_serves_reads(
    small_disk: Path, tidings_server: ServerFactory
) -> None:
    """Over HTTP: the refused publish is a 503 store_unavailable with the reason, never a
    500; the same server keeps serving reads, and publishes again once space is free."""
    srv = tidings_server(store=f"sqlite:///{small_disk / 'server.db'}")
    messages = f"{srv.url}/v1/channels/c/messages"
    r = httpx.post(messages, json={"data": 1}, timeout=10)
    assert r.status_code == 201, r.text

    filler = fill(small_disk)
    r = httpx.post(messages, json={"data": BIG}, timeout=10)
    assert r.status_code == 503, r.text
    error = r.json()["error"]
    assert error["code"] == "store_unavailable"
    assert "full" in error["message"]
    r = httpx.get(f"{messages}?after=0", timeout=10)
    assert r.status_code == 200, r.text
    assert [m["data"] for m in r.json()["messages"]] == [1]

    filler.unlink()
    r = httpx.post(messages, json={"data": 2}, timeout=10)
    assert r.status_code == 201, r.text
    assert r.json()["id"] == "2"
