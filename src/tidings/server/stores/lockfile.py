"""The lock that makes one SQLite file one server's: `<db>.lock`, held with flock.

Two servers on one file would each keep their own channel sequence numbers and their own
subscribers, so their writes collide and each misses the other's messages. The server's
store therefore holds an exclusive `flock` on a file beside the database for as long as it
uses it, and writes into it who holds it (pid, host, command, since when), so that a second
server can say which process it would fight with.

A sidecar file, not the database itself: SQLite takes POSIX record locks on the database,
and those are per process and dropped when any descriptor of the file closes. An `flock`
belongs to the open file description: the kernel releases it when the holder closes it or
dies, so a crashed server never leaves a stale lock, and a second lock from the same
process is refused like any other.

Commands that only manage users and tokens open the store without it: SQLite's own
locking keeps their few writes safe beside the server's.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import time
from typing import Any

from tidings.protocol.errors import StoreError

__all__ = ["ServerLock", "StoreLocked"]

# Longest command line recorded in the lock file (the rest is cut).
COMMAND_MAX = 300


class StoreLocked(StoreError, OSError):
    """Another server holds the SQLite file.

    An OSError as well, like a port already in use: `tidings serve` reports both the same
    way, in one line and with a non-zero exit.
    """

    code = "store_locked"


class ServerLock:
    """An exclusive, non-blocking `flock` on `path`, naming its holder inside.

    Args:
        path: the lock file (created when missing, never deleted: deleting it would let
            two processes lock two different files of the same name).
        database: the database it guards, named in the refusal.
    """

    def __init__(self, path: str, database: str) -> None:
        self.path = path
        self.database = database
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock now or raise StoreLocked naming its holder; a no-op when held."""
        if self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot open the lock file {self.path!r} of the SQLite store: {exc.strerror}; "
                "the server needs write access to the database's folder",
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreLocked(self._refusal(holder)) from None
        except OSError as exc:
            os.close(fd)
            raise OSError(
                exc.errno,
                f"cannot lock {self.path!r} ({exc.strerror}): the SQLite store needs a local "
                "file system that supports flock; use --store redis://… otherwise",
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": shlex.join(sys.orig_argv)[:COMMAND_MAX],
            "since": time.time(),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        """Give the lock back (the file stays, emptied: nobody holds it)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # closing the description releases the flock

    def _refusal(self, holder: dict[str, Any]) -> str:
        who = "another process"
        if isinstance(holder.get("pid"), int):
            who = f"process {holder['pid']}"
            if holder["pid"] == os.getpid() and holder.get("host") == socket.gethostname():
                who = f"this process ({holder['pid']}, another store object)"
            elif holder.get("host") and holder["host"] != socket.gethostname():
                who += f" on host {holder['host']}"
        details = []
        if isinstance(holder.get("since"), int | float):
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"]))
            details.append(f"since {since}")
        if holder.get("command"):
            details.append(f"running: {holder['command']}")
        described = f"{who} ({', '.join(details)})" if details else who
        return (
            f"the SQLite store {self.database!r} is in use by {described}. "
            "One SQLite file belongs to one server process: stop that server first; to run "
            "job handlers, give that one server --handlers MODULE:OBJ; for several server "
            "processes on one store, use --store redis://host:6379/0."
        )


def _read_holder(fd: int) -> dict[str, Any]:
    """What the holder wrote in the lock file; empty when it has not written it yet."""
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}
