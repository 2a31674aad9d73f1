"""Users and credentials of the Redis store.

    {p}user:{name}   msgpack User            {p}users         set of user names
    {p}cred:{key}    msgpack Credential      {p}creds:{user}  set of a user's credential keys

A credential with an expiry gets PEXPIREAT at its expiry plus CREDENTIAL_GRACE: Redis
collects what no sweep removed, while `sweep_credentials(now)` still finds (and counts)
the credentials that expired before the `now` it is given. Expiry is always judged from
the stored `expires`, never from the TTL, so a credential is dead the moment it expires.

The whole-store scans (`list_credentials()` of every user, `sweep_credentials`) SCAN the
keys `{p}cred*`: their cost grows with the size of the Redis database, not only with the
number of credentials (the key layout has no index of credential owners).
"""

from __future__ import annotations

import time
from typing import Any

from redis.commands.core import AsyncScript
from redis.exceptions import WatchError

from tidings.server.principals import Credential, User
from tidings.server.stores.base import AuthStore
from tidings.server.stores.common import decode_credential, decode_user, encode_msgpack
from tidings.server.stores.redis.core import RedisCore, lua

__all__ = ["CREDENTIAL_GRACE", "RedisAuth"]

# How long Redis keeps an expired credential for the sweep to find (seconds).
CREDENTIAL_GRACE = 3600.0
# Keys asked per SCAN / MGET round trip.
_BATCH = 1000

_DELETE_IF_SAME = lua("delete_if_same.lua")
_PRUNE_SET = lua("prune_set.lua")


def _glob_escape(text: str) -> str:
    """`text` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


class RedisAuth(AuthStore):
    """Every AuthStore method on plain Redis keys and sets."""

    _delete_if_same: AsyncScript
    _prune_set: AsyncScript

    def __init__(self, core: RedisCore) -> None:
        self._core = core
        self._key = core.key
        self._errors = core.errors

    def register_scripts(self) -> None:
        """Register this part's Lua scripts (once the core is open)."""
        self._delete_if_same = self._core.script(_DELETE_IF_SAME)
        self._prune_set = self._core.script(_PRUNE_SET)

    # -- users --------------------------------------------------------------------------

    async def put_user(self, user: User) -> None:
        client = self._core.client
        with self._errors:
            async with client.pipeline(transaction=True) as pipe:
                pipe.set(self._key("user", user.name), encode_msgpack(user))
                pipe.sadd(self._key("users"), user.name)
                await pipe.execute()

    async def get_user(self, name: str) -> User | None:
        client = self._core.client
        with self._errors:
            body = await client.get(self._key("user", name))
        return None if body is None else decode_user(body)

    async def list_users(self) -> list[User]:
        client = self._core.client
        with self._errors:
            names = sorted(name.decode() for name in await client.smembers(self._key("users")))
            bodies = await client.mget([self._key("user", name) for name in names]) if names else []
        return [decode_user(body) for body in bodies if body is not None]

    async def delete_user(self, name: str) -> bool:
        client = self._core.client
        user_key = self._key("user", name)
        creds = self._key("creds", name)
        with self._errors:
            async with client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(creds)
                        members = [member.decode() for member in await pipe.smembers(creds)]
                        keys = [self._key("cred", member) for member in members]
                        if keys:
                            await pipe.watch(*keys)
                        bodies = await pipe.mget(keys) if keys else []
                        # Only credentials still theirs (a key may have been put again
                        # for someone else).
                        theirs = [
                            key
                            for key, body in zip(keys, bodies, strict=True)
                            if body is not None and decode_credential(body).user == name
                        ]
                        pipe.multi()
                        pipe.delete(user_key)
                        pipe.srem(self._key("users"), name)
                        if theirs:
                            pipe.delete(*theirs)
                        pipe.delete(creds)
                        replies = await pipe.execute()
                    except WatchError:
                        continue
                    return bool(replies[0])

    # -- credentials --------------------------------------------------------------------

    async def put_credential(self, cred: Credential) -> None:
        client = self._core.client
        key = self._key("cred", cred.key)
        body = encode_msgpack(cred)
        with self._errors:
            async with client.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        old = await pipe.get(key)
                        previous = None if old is None else decode_credential(old).user
                        pipe.multi()
                        if cred.expires is None:
                            pipe.set(key, body)
                        else:
                            at = int((cred.expires + CREDENTIAL_GRACE) * 1000)
                            pipe.set(key, body, pxat=at)
                        pipe.sadd(self._key("creds", cred.user), cred.key)
                        if previous is not None and previous != cred.user:
                            pipe.srem(self._key("creds", previous), cred.key)
                        await pipe.execute()
                    except WatchError:
                        continue
                    return

    async def get_credential(self, key: str) -> Credential | None:
        client = self._core.client
        with self._errors:
            body = await client.get(self._key("cred", key))
        if body is None:
            return None
        cred = decode_credential(body)
        return cred if cred.live(time.time()) else None

    async def _scan(self, match: str) -> list[bytes]:
        """Every key matching `match` (a SCAN MATCH pattern)."""
        client = self._core.client
        found: list[bytes] = []
        cursor = 0
        while True:
            cursor, keys = await client.scan(cursor, match=match, count=_BATCH)
            found.extend(keys)
            if cursor == 0:
                return list(dict.fromkeys(found))  # SCAN may return a key twice

    async def _bodies(self, keys: list[bytes] | list[str]) -> list[bytes | None]:
        client = self._core.client
        out: list[bytes | None] = []
        for i in range(0, len(keys), _BATCH):
            out.extend(await client.mget(keys[i : i + _BATCH]))
        return out

    async def list_credentials(self, user: str | None = None) -> list[Credential]:
        client = self._core.client
        now = time.time()
        with self._errors:
            if user is None:
                keys: list[Any] = await self._scan(_glob_escape(self._key("cred", "")) + "*")
            else:
                members = await client.smembers(self._key("creds", user))
                keys = [self._key("cred", member.decode()) for member in members]
            bodies = await self._bodies(keys)
        creds = [decode_credential(body) for body in bodies if body is not None]
        out = [cred for cred in creds if cred.live(now) and (user is None or cred.user == user)]
        out.sort(key=lambda cred: (cred.created, cred.key))
        return out

    async def delete_credential(self, key: str) -> bool:
        client = self._core.client
        cred_key = self._key("cred", key)
        with self._errors:
            while True:
                body = await client.get(cred_key)
                if body is None:
                    return False
                owner = decode_credential(body).user
                done = await self._delete_if_same(
                    keys=[cred_key, self._key("creds", owner)], args=[body, key], client=client
                )
                if done:
                    return True
                # Replaced meanwhile: look again.

    async def live_credentials(self, keys: list[str], now: float) -> set[str]:
        if not keys:
            return set()
        with self._errors:
            bodies = await self._bodies([self._key("cred", key) for key in keys])
        return {
            key
            for key, body in zip(keys, bodies, strict=True)
            if body is not None and decode_credential(body).live(now)
        }

    async def sweep_credentials(self, now: float) -> int:
        client = self._core.client
        cred_prefix = self._key("cred", "").encode()
        sets_prefix = self._key("creds", "").encode()
        swept = 0
        with self._errors:
            # One SCAN finds both `{p}cred:*` and `{p}creds:*`.
            found = await self._scan(_glob_escape(self._core.prefix) + "cred*")
            cred_keys = [key for key in found if key.startswith(cred_prefix)]
            set_keys = [key for key in found if key.startswith(sets_prefix)]
            bodies = await self._bodies(cred_keys)
            expired = []
            for key, body in zip(cred_keys, bodies, strict=True):
                if body is None:
                    continue
                cred = decode_credential(body)
                if cred.expires is not None and cred.expires <= now:
                    expired.append((key, body, cred))
            for i in range(0, len(expired), _BATCH):
                async with client.pipeline(transaction=False) as pipe:
                    pipe.scripts.add(self._delete_if_same)
                    for key, body, cred in expired[i : i + _BATCH]:
                        args = [key, self._key("creds", cred.user), body, cred.key]
                        pipe.evalsha(self._delete_if_same.sha, 2, *args)
                    swept += sum(await pipe.execute())
            # Members whose credential Redis expired (or a sweep elsewhere removed).
            for i in range(0, len(set_keys), _BATCH):
                async with client.pipeline(transaction=False) as pipe:
                    pipe.scripts.add(self._prune_set)
                    for key in set_keys[i : i + _BATCH]:
                        pipe.evalsha(self._prune_set.sha, 1, key, cred_prefix)
                    await pipe.execute()
        return swept
