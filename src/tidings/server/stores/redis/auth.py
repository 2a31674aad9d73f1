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

import contextlib
import time
from typing import Any

import msgspec
from redis.exceptions import WatchError

from tidings.server.principals import Credential, User
from tidings.server.stores.redis.base import RedisBase
from tidings.server.stores.redis.channels import redis_errors

__all__ = ["CREDENTIAL_GRACE", "RedisAuth"]

# How long Redis keeps an expired credential for the sweep to find (seconds).
CREDENTIAL_GRACE = 3600.0
# Keys asked per SCAN / MGET round trip.
_BATCH = 1000

_encode = msgspec.msgpack.Encoder().encode
_decode_user = msgspec.msgpack.Decoder(User).decode
_decode_credential = msgspec.msgpack.Decoder(Credential).decode

# KEYS: credential key, owner's set.  ARGV: body expected, member.
# Deletes the credential only if it is still the one the caller read.
_DELETE_IF_SAME = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# KEYS: a user's set.  ARGV: the credential key prefix ("{p}cred:").
# Removes the members whose credential is gone; replies how many.
_PRUNE_SET = """
local gone = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. member) == 0 then
    redis.call('SREM', KEYS[1], member)
    gone = gone + 1
  end
end
return gone
"""


def _glob_escape(text: str) -> str:
    """`text` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class RedisAuth(RedisBase):
    """Every AuthStore method on plain Redis keys and sets."""

    async def _load_scripts(self) -> None:
        await super()._load_scripts()
        self._delete_if_same = self.r.register_script(_DELETE_IF_SAME)
        self._prune_set = self.r.register_script(_PRUNE_SET)

    def _auth_errors(self) -> contextlib.AbstractContextManager[None]:
        return redis_errors(self.url)

    # -- users --------------------------------------------------------------------------

    async def put_user(self, user: User) -> None:
        r = self.r
        with self._auth_errors():
            async with r.pipeline(transaction=True) as pipe:
                pipe.set(self.k("user", user.name), _encode(user))
                pipe.sadd(self.k("users"), user.name)
                await pipe.execute()

    async def get_user(self, name: str) -> User | None:
        r = self.r
        with self._auth_errors():
            body = await r.get(self.k("user", name))
        return None if body is None else _decode_user(body)

    async def list_users(self) -> list[User]:
        r = self.r
        with self._auth_errors():
            names = sorted(n.decode() for n in await r.smembers(self.k("users")))
            bodies = await r.mget([self.k("user", n) for n in names]) if names else []
        return [_decode_user(b) for b in bodies if b is not None]

    async def delete_user(self, name: str) -> bool:
        r = self.r
        user_key = self.k("user", name)
        creds = self.k("creds", name)
        with self._auth_errors():
            async with r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(creds)
                        members = [m.decode() for m in await pipe.smembers(creds)]
                        keys = [self.k("cred", m) for m in members]
                        if keys:
                            await pipe.watch(*keys)
                        bodies = await pipe.mget(keys) if keys else []
                        # Only credentials still theirs (a key may have been put again
                        # for someone else).
                        theirs = [
                            k
                            for k, b in zip(keys, bodies, strict=True)
                            if b is not None and _decode_credential(b).user == name
                        ]
                        pipe.multi()
                        pipe.delete(user_key)
                        pipe.srem(self.k("users"), name)
                        if theirs:
                            pipe.delete(*theirs)
                        pipe.delete(creds)
                        replies = await pipe.execute()
                    except WatchError:
                        continue
                    return bool(replies[0])

    # -- credentials --------------------------------------------------------------------

    async def put_credential(self, cred: Credential) -> None:
        r = self.r
        key = self.k("cred", cred.key)
        body = _encode(cred)
        with self._auth_errors():
            async with r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(key)
                        old = await pipe.get(key)
                        previous = None if old is None else _decode_credential(old).user
                        pipe.multi()
                        if cred.expires is None:
                            pipe.set(key, body)
                        else:
                            at = int((cred.expires + CREDENTIAL_GRACE) * 1000)
                            pipe.set(key, body, pxat=at)
                        pipe.sadd(self.k("creds", cred.user), cred.key)
                        if previous is not None and previous != cred.user:
                            pipe.srem(self.k("creds", previous), cred.key)
                        await pipe.execute()
                    except WatchError:
                        continue
                    return

    async def get_credential(self, key: str) -> Credential | None:
        r = self.r
        with self._auth_errors():
            body = await r.get(self.k("cred", key))
        if body is None:
            return None
        cred = _decode_credential(body)
        return cred if cred.live(time.time()) else None

    async def _scan(self, match: str) -> list[bytes]:
        """Every key matching `match` (a SCAN MATCH pattern)."""
        r = self.r
        found: list[bytes] = []
        cursor = 0
        while True:
            cursor, keys = await r.scan(cursor, match=match, count=_BATCH)
            found.extend(keys)
            if cursor == 0:
                return list(dict.fromkeys(found))  # SCAN may return a key twice

    async def _bodies(self, keys: list[bytes] | list[str]) -> list[bytes | None]:
        r = self.r
        out: list[bytes | None] = []
        for i in range(0, len(keys), _BATCH):
            out.extend(await r.mget(keys[i : i + _BATCH]))
        return out

    async def list_credentials(self, user: str | None = None) -> list[Credential]:
        r = self.r
        now = time.time()
        with self._auth_errors():
            if user is None:
                keys: list[Any] = await self._scan(_glob_escape(self.k("cred", "")) + "*")
            else:
                members = await r.smembers(self.k("creds", user))
                keys = [self.k("cred", m.decode()) for m in members]
            bodies = await self._bodies(keys)
        creds = [_decode_credential(b) for b in bodies if b is not None]
        out = [c for c in creds if c.live(now) and (user is None or c.user == user)]
        out.sort(key=lambda c: (c.created, c.key))
        return out

    async def delete_credential(self, key: str) -> bool:
        r = self.r
        cred_key = self.k("cred", key)
        with self._auth_errors():
            while True:
                body = await r.get(cred_key)
                if body is None:
                    return False
                owner = _decode_credential(body).user
                done = await self._delete_if_same(
                    keys=[cred_key, self.k("creds", owner)], args=[body, key], client=r
                )
                if done:
                    return True
                # Replaced meanwhile: look again.

    async def live_credentials(self, keys: list[str], now: float) -> set[str]:
        if not keys:
            return set()
        with self._auth_errors():
            bodies = await self._bodies([self.k("cred", k) for k in keys])
        return {
            k
            for k, b in zip(keys, bodies, strict=True)
            if b is not None and _decode_credential(b).live(now)
        }

    async def sweep_credentials(self, now: float) -> int:
        r = self.r
        cred_prefix = self.k("cred", "").encode()
        sets_prefix = self.k("creds", "").encode()
        swept = 0
        with self._auth_errors():
            # One SCAN finds both `{p}cred:*` and `{p}creds:*`.
            found = await self._scan(_glob_escape(self.prefix) + "cred*")
            cred_keys = [k for k in found if k.startswith(cred_prefix)]
            set_keys = [k for k in found if k.startswith(sets_prefix)]
            bodies = await self._bodies(cred_keys)
            expired = []
            for key, body in zip(cred_keys, bodies, strict=True):
                if body is None:
                    continue
                cred = _decode_credential(body)
                if cred.expires is not None and cred.expires <= now:
                    expired.append((key, body, cred))
            for i in range(0, len(expired), _BATCH):
                async with r.pipeline(transaction=False) as pipe:
                    pipe.scripts.add(self._delete_if_same)
                    for key, body, cred in expired[i : i + _BATCH]:
                        args = [key, self.k("creds", cred.user), body, cred.key]
                        pipe.evalsha(self._delete_if_same.sha, 2, *args)
                    swept += sum(await pipe.execute())
            # Members whose credential Redis expired (or a sweep elsewhere removed).
            for i in range(0, len(set_keys), _BATCH):
                async with r.pipeline(transaction=False) as pipe:
                    pipe.scripts.add(self._prune_set)
                    for key in set_keys[i : i + _BATCH]:
                        pipe.evalsha(self._prune_set.sha, 1, key, cred_prefix)
                    await pipe.execute()
        return swept
