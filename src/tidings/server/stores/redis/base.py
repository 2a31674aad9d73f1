"""What every part of the Redis store shares: the client, key names, codecs, scripts.

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
    {p}queued:{type}      sorted set: queued job ids by run_at
    {p}qprio:{type}       sorted set: the queued jobs with a non-zero priority, by -priority
    {p}running            sorted set: running job ids by lease_expires_at
    {p}finished           sorted set: finished job ids by finished_at
    {p}jobs               sorted set: every job id by created_at
    {p}jobtypes           set of job types ever submitted
    {p}jobcounts          hash "{type}\\x00{status}" -> count
    {p}wake               stream: a job became queued (field `type`, `run_at`); the relay
                          of every node follows it to wake its parked lease requests
    {p}user:{name}        msgpack User;   {p}users: set of user names
    {p}cred:{key}         msgpack Credential (expiring with the credential)
    {p}creds:{user}       set of the credential keys of a user
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from tidings.protocol.errors import InvalidCursor, StoreClosed, StoreError
from tidings.server.stores.base import AuthStore, ChannelStore, JobStore, Retention, Store
from tidings.server.stores.redis.pool import BoundedPool

__all__ = ["RedisBase", "parse_seq"]

# Connections per node to Redis (requests beyond wait up to POOL_TIMEOUT seconds for one).
MAX_CONNECTIONS = 64
POOL_TIMEOUT = 10.0
# Seconds to open a connection to Redis.
CONNECT_TIMEOUT = 5.0
# A connection whose sent data Redis's host has not acknowledged for this long is dead
# (TCP_USER_TIMEOUT, Linux), as is an idle one that stops answering keepalive probes.
DEAD_PEER_MS = 10_000
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 10, 5, 3

_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode


def parse_seq(message_id: str) -> int:
    """Sequence number of a message id (decimal digits), as on the embedded stores."""
    if not (message_id.isascii() and message_id.isdigit()) or len(message_id) > 18:
        raise InvalidCursor(
            f"cursor {message_id!r} is not a message id of this server: use an id it gave you, or 0"
        )
    return int(message_id)


def _pool_options() -> dict[str, Any]:
    """Connection options beyond redis-py's defaults.

    redis-py 8 turns "maintenance notifications" on by default, and with them its pool
    stops checking a connection for a close by the server before lending it: after an
    idle timeout, a proxy drop or a Redis restart, each pooled connection then failed one
    request. Turned off, the pool checks again (older redis-py has no such option).
    """
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def _request_pool_options() -> dict[str, Any]:
    """The request pool's socket options: no per-command timeout, dead peers found by TCP.

    redis-py 8 gives every command a 5 s socket timeout by default, which on Python 3.11
    wraps each send in `asyncio.wait_for` (a task and a loop turn per command) and each
    read in a timer: 8 % of the server's CPU per Redis-backed request (decision 0015). A
    command is not abandoned after a fixed time here (a slow Redis — a long script, a fork
    for a snapshot — is waited for, as redis-py before 8 did, and the caller's own timeout
    decides); a connection to a host that is gone is dropped by the kernel: unacknowledged
    data for DEAD_PEER_MS, or keepalive probes unanswered.
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


class RedisBase(Store, ChannelStore, JobStore, AuthStore):
    """Connection and key names; the parts (channels, jobs, auth) build on this.

    Args:
        url: `redis://[user:password@]host:port/db[?prefix=tidings:]` (or `rediss://`).
        default_retention: retention of channels without their own.
    """

    # Live messages reach the hub through the relay (tidings.server.relay), not the publish path.
    shared = True

    def __init__(self, url: str, default_retention: Retention) -> None:
        super().__init__(default_retention)
        self.channels = self.jobs = self.auth = self  # one object holds all three parts
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = query.pop("prefix", ["tidings:"])[0]
        self.url = parts._replace(query="").geturl()
        self._redis: Any = None
        self._blocking: Any = None
        self._closed = False

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        from redis import asyncio as aioredis

        # A pool that makes a burst of requests wait for a connection, rather than fail
        # past its limit ("Too many connections").
        self._redis = aioredis.Redis.from_pool(
            BoundedPool.from_url(
                self.url,
                max_connections=MAX_CONNECTIONS,
                timeout=POOL_TIMEOUT,
                **_request_pool_options(),
            )
        )
        # XREAD BLOCK holds its connection: the relay gets a client of its own.
        self._blocking = aioredis.from_url(self.url, decode_responses=False, **_pool_options())
        try:
            await self._redis.ping()
        except Exception as exc:
            raise StoreError(f"cannot reach Redis at {self.url}: {exc}") from exc
        await self._load_scripts()

    async def _load_scripts(self) -> None:
        """Register Lua scripts (overridden by the parts that have some)."""

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for client in (self._redis, self._blocking):
            if client is not None:
                await client.aclose()

    async def ping(self) -> None:
        try:
            await self.r.ping()
        except Exception as exc:
            raise StoreError(f"Redis does not answer: {exc}") from exc

    @property
    def r(self) -> Any:
        """The Redis client; StoreClosed before start() and after close()."""
        if self._redis is None or self._closed:
            raise StoreClosed("store is not open: call `await store.start()` first")
        return self._redis

    def cursor_key(self, message_id: str) -> int:
        return parse_seq(message_id)

    # -- key names ----------------------------------------------------------------------

    def k(self, *parts: str) -> str:
        """A key name: the prefix, then the parts joined by ':'."""
        return self.prefix + ":".join(parts)
