"""`redis://host:port/db` — the shared store: many tidings nodes act as one.

Channels are Redis Streams, jobs are msgpack bodies with sorted-set indexes, users and
credentials are plain keys, the workers seen lately two sorted sets and a hash, schedules
a hash and two sorted sets, a bridge's forward lease and cursors a string and a hash;
every node sharing the Redis sees the same state. `core` holds what the parts share
(connections, key names, Lua, error translation), `channels`, `jobs`, `auth`, `workers`,
`schedules` and `forwards` are one part each, and their Lua scripts are files of
`lua/`; `RedisStore` builds them.

Live delivery across nodes does not go through the store's write path: every node runs
one relay (tidings.server.relay) that follows, with one blocking XREAD, the streams of the
channels its own subscribers and long polls watch (`store.channels.follow`), and feeds
them to its hub.
"""

from __future__ import annotations

from tidings.server.stores.base import Retention, Store
from tidings.server.stores.redis.auth import RedisAuth
from tidings.server.stores.redis.channels import RedisChannels
from tidings.server.stores.redis.core import RedisCore
from tidings.server.stores.redis.forwards import RedisForwards
from tidings.server.stores.redis.jobs import RedisJobs
from tidings.server.stores.redis.schedules import RedisSchedules
from tidings.server.stores.redis.workers import RedisWorkers

__all__ = ["RedisStore"]


class RedisStore(Store):
    """Channels, jobs, principals, workers and schedules in one Redis (or a
    Sentinel-managed primary).

    Args:
        url: `redis://[user:password@]host:port/db[?prefix=tidings:]` (or `rediss://`).
        default_retention: retention of channels without their own.
    """

    # Live messages reach the hub through the relay (tidings.server.relay), not the
    # publish path.
    shared = True

    channels: RedisChannels
    jobs: RedisJobs
    auth: RedisAuth
    workers: RedisWorkers
    schedules: RedisSchedules
    forwards: RedisForwards

    def __init__(self, url: str, default_retention: Retention) -> None:
        self.core = RedisCore(url, default_retention)
        self.channels = RedisChannels(self.core)
        self.jobs = RedisJobs(self.core, self.channels)
        self.auth = RedisAuth(self.core)
        self.workers = RedisWorkers(self.core)
        self.schedules = RedisSchedules(self.core)
        self.forwards = RedisForwards(self.core)

    async def start(self) -> None:
        await self.core.open()
        self.channels.register_scripts()
        self.jobs.register_scripts()
        self.auth.register_scripts()
        self.workers.register_scripts()
        self.schedules.register_scripts()
        self.forwards.register_scripts()

    async def close(self) -> None:
        await self.core.close()

    async def ping(self) -> None:
        await self.core.ping()
