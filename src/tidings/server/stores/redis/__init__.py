"""`redis://host:port/db` — the shared store: many tidings nodes act as one.

Channels are Redis Streams, jobs are msgpack bodies with sorted-set indexes, users and
credentials are plain keys; every node sharing the Redis sees the same state. The parts
live in one module each (channels, jobs, principals) over a common base (connection,
key names, codecs); `RedisStore` puts them together.

Live delivery across nodes does not go through the store's write path: every node runs
one relay (tidings.server.relay) that follows, with one blocking XREAD, the streams of the
channels its own subscribers and long polls watch, and feeds them to its hub.
"""

from __future__ import annotations

from tidings.server.stores.redis.auth import RedisAuth
from tidings.server.stores.redis.base import RedisBase
from tidings.server.stores.redis.channels import RedisChannels
from tidings.server.stores.redis.jobs import RedisJobs

__all__ = ["RedisStore"]


class RedisStore(RedisChannels, RedisJobs, RedisAuth, RedisBase):
    """Channels, jobs and principals in one Redis (or a Sentinel-managed primary)."""
