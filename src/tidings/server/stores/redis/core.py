"""What the parts of the Redis store share: the connections, key names, Lua and errors.

Key layout (prefix `tidings:` by default, `?prefix=` in the URL to change it):

    {p}ch:{name}          stream of a channel; entry id `0-{seq}`, fields d (JSON data),
                          e (event, "" for none), t (publish time, seconds)
    {p}chm:{name}         hash: seq (last sequence number), created, max_messages,
                          max_age (the last two only for a channel with its own retention)
    {p}channels           sorted set of channel names (all scores 0: ordered by name)
    {p}idem:{name}:{created}:{digest}
                          "seq" of the message an Idempotency-Key made (with expiry);
                          `created` keeps a recreated channel from matching old keys, the
                          BLAKE2b digest of the key keeps names with ':' from colliding
    {p}job:{id}           msgpack body of a job
    {p}jobidem:{key}      id of the job an Idempotency-Key made
    {p}jobuniq:{type}|{key}
                          id of the queued or running job holding a unique key
    {p}qlimits            hash: job type -> its limits ("concurrency|group concurrency|
                          rate limit|rate per")
    {p}qrate              hash: job type -> its rate's GCRA tat
    {p}grun:{type}        hash: group -> its running jobs of the type (gone at 0)
    {p}gq:{type}          hash: group -> its queued jobs of the type (gone at 0)
    {p}gqz:{type}\x00{group}
                          sorted set: the group's queued job ids of the type by run_at
    {p}gheads:{type}      sorted set: the type's groups with queued jobs, by the run_at
                          of their earliest
    {p}queued:{type}      sorted set: queued job ids by run_at
    {p}qprio:{type}       sorted set: the queued jobs with a non-zero priority, by -priority
    {p}running            sorted set: running job ids by lease_expires_at
    {p}finished           sorted set: finished job ids by finished_at
    {p}jobs               sorted set: every job id by created_at
    {p}jobtypes           set of job types ever submitted
    {p}jobcounts          hash "{type}\\x00{status}" -> count
    {p}served             sorted set: job types by when a worker last asked to lease them
    {p}wake               stream: a job became queued (fields `type`, `run_at`), a
                          limited type's job stopped running or its limits changed (the
                          same fields), or a channel was deleted (field `deleted`); the
                          relay of every node follows it to wake its parked lease requests
                          and end the streams of a deleted channel
    {p}workers            sorted set: worker ids by when each was last seen (a lease
                          request or a heartbeat), at most MAX_WORKERS of them
    {p}workerfirst        sorted set: worker ids by when each was first seen
    {p}workerinfo         hash: worker id -> msgpack (name, types, concurrency, user)
    {p}sched              hash: schedule name -> msgpack Schedule
    {p}scheddue           sorted set: schedule names by next_run_at
    {p}schednames         sorted set: schedule names (all scores 0: ordered by name)
    {p}schedowner         hash: schedule name -> owner (those that have one)
    {p}fwdlease:{bridge}  the node holding a bridge's forward lease (expiring with it)
    {p}fwdcur:{bridge}    hash: channel -> id of the last message the bridge forwarded
    {p}user:{name}        msgpack User;   {p}users: set of user names
    {p}cred:{key}         msgpack Credential (expiring with the credential)
    {p}creds:{user}       set of the credential keys of a user

The Lua scripts are files of the `lua/` directory next to this module, read once when the
store's modules are imported (`lua`) and registered with redis-py when the store starts.
"""

from __future__ import annotations

import socket
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs, urlsplit

from redis import asyncio as aioredis
from redis import exceptions as redis_exceptions
from redis.commands.core import AsyncScript

from tidings.protocol.errors import StoreClosed, StoreError
from tidings.server.stores.base import Retention
from tidings.server.stores.common import store_errors
from tidings.server.stores.redis.pool import BoundedPool

__all__ = ["RedisCore", "lua"]

# Connections per node to Redis (requests beyond wait up to POOL_TIMEOUT seconds for one).
MAX_CONNECTIONS = 64
POOL_TIMEOUT = 10.0
# Seconds to open a connection to Redis.
CONNECT_TIMEOUT = 5.0
# A connection whose sent data Redis's host has not acknowledged for this long is dead
# (TCP_USER_TIMEOUT, Linux), as is an idle one that stops answering keepalive probes.
DEAD_PEER_MS = 10_000
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 10, 5, 3


def lua(*names: str) -> str:
    """The source of the named files of `lua/`, joined in order: a script that calls
    `append` is composed as `lua("append.lua", "publish.lua")`."""
    folder = files("tidings.server.stores.redis").joinpath("lua")
    return "\n".join(folder.joinpath(name).read_text(encoding="utf-8") for name in names)


def _pool_options() -> dict[str, Any]:
    """Connection options beyond redis-py's defaults.

    redis-py 8 turns "maintenance notifications" on by default, and with them its pool
    stops checking a connection for a close by the server before lending it: after an
    idle timeout, a proxy drop or a Redis restart, each pooled connection would fail one
    request. Turned off, the pool checks (redis-py before 8 has no such option).
    """
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def _request_pool_options() -> dict[str, Any]:
    """The request pool's socket options: no per-command timeout, dead peers found by TCP.

    redis-py 8 gives every command a socket timeout by default, which on Python 3.11
    wraps each send in `asyncio.wait_for` (a task and a loop turn per command) and each
    read in a timer: a large share of a Redis-backed request's CPU (docs/decisions/0015).
    A command is not abandoned after a fixed time here (a slow Redis — a long script, a
    fork for a snapshot — is waited for, and the caller's own timeout decides); a
    connection to a host that is gone is dropped by the kernel: unacknowledged data for
    DEAD_PEER_MS, or keepalive probes unanswered.
    """
    keepalive: dict[int, int] = {}
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", KEEPALIVE_PROBES),
        ("TCP_USER_TIMEOUT", DEAD_PEER_MS),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            keepalive[option] = value
    return {
        "socket_timeout": None,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive,
        **_pool_options(),
    }


def _where(url: str) -> str:
    """The Redis address of a URL, without credentials (for error messages)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _store_error(url: str, exc: BaseException) -> StoreError:
    """The StoreError of a redis-py error, with a message saying what to do."""
    if isinstance(exc, redis_exceptions.MaxConnectionsError):
        return StoreError(
            f"every connection to Redis at {_where(url)} is busy ({exc}): retry, or give "
            "the store a larger connection pool"
        )
    if isinstance(exc, redis_exceptions.ConnectionError | redis_exceptions.TimeoutError):
        return StoreError(
            f"cannot reach Redis at {_where(url)} ({exc}): check that it is running and "
            "that the store URL points at it; the request may be retried"
        )
    return StoreError(
        f"Redis at {_where(url)} refused a command ({exc}): check its memory limit "
        "and that no other program writes keys under this store's prefix (?prefix=)"
    )


class RedisCore:
    """The connections to one Redis, its key names and error translation, shared by the
    parts of a RedisStore.

    Args:
        url: `redis://[user:password@]host:port/db[?prefix=tidings:]` (or `rediss://`).
        default_retention: retention of channels without their own.
    """

    def __init__(self, url: str, default_retention: Retention) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = query.pop("prefix", ["tidings:"])[0]
        self.url = parts._replace(query="").geturl()
        self.default_retention = default_retention
        # Entered around every command: redis-py errors become StoreError.
        self.errors = store_errors(
            redis_exceptions.RedisError, lambda exc: _store_error(self.url, exc)
        )
        self._client: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None
        self._closed = False

    async def open(self) -> None:
        """Open both connection pools and check that Redis answers."""
        # A pool that makes a burst of requests wait for a connection, rather than fail
        # past its limit ("Too many connections").
        self._client = aioredis.Redis.from_pool(
            BoundedPool.from_url(
                self.url,
                max_connections=MAX_CONNECTIONS,
                timeout=POOL_TIMEOUT,
                **_request_pool_options(),
            )
        )
        # XREAD BLOCK holds its connection: the relay's reads get a client of their own.
        self._blocking = aioredis.from_url(self.url, decode_responses=False, **_pool_options())
        try:
            await self._client.ping()
        except Exception as exc:
            raise StoreError(f"cannot reach Redis at {_where(self.url)}: {exc}") from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for client in (self._client, self._blocking):
            if client is not None:
                await client.aclose()

    async def ping(self) -> None:
        try:
            await self.client.ping()
        except Exception as exc:
            raise StoreError(f"Redis does not answer: {exc}") from exc

    @property
    def client(self) -> Any:
        """The client of the request pool; StoreClosed before open() and after close()."""
        if self._client is None or self._closed:
            raise StoreClosed("store is not open: call `await store.start()` first")
        return self._client

    @property
    def blocking(self) -> Any:
        """The client for blocking reads (the relay's XREAD); StoreClosed when not open."""
        if self._blocking is None or self._closed:
            raise StoreClosed("store is not open: call `await store.start()` first")
        return self._blocking

    def script(self, source: str) -> AsyncScript:
        """Register a Lua script with the request pool's client (call once, after open)."""
        return self.client.register_script(source)  # type: ignore[no-any-return]

    def key(self, *parts: str) -> str:
        """A key name: the prefix, then the parts joined by ':'."""
        return self.prefix + ":".join(parts)
