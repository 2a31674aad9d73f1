"""Channels of the Redis store: one stream per channel, written by one Lua script.

Every append — a publish, or a job's event written by the jobs part's own script — runs
the same Lua function (`APPEND_LUA`, which both scripts include), which atomically: answers
an idempotency key seen before with the earlier sequence number, increments the channel's
`seq`, sets `created` on the channel's first write, XADDs entry `0-{seq}` (fields d, e, t),
trims the stream exactly (XTRIM MAXLEN, not ~) to the channel's own max_messages or the
default passed in, adds the name to `{p}channels` and remembers the idempotency key for
IDEMPOTENCY_TTL seconds.

For the jobs part (same class hierarchy):

    APPEND_LUA
        The Lua source of `append(...)` (arguments in the comment above it), to include
        in a script that appends a channel message among other writes.
    self.appended(channel, data, event, now, reply) -> Published
        The Published for an append's reply `[seq, prev_seq, keep]` (ints; prev_seq 0
        for a channel's first message; `data` as decoded, not the JSON bytes).
    self.queue_delete(pipe, channel) -> None
        Queues the removal of a channel (stream, meta hash, name), as `delete` does.

Idempotency keys: the key name is `{p}idem:{name}:{created}:{digest}` — the channel's
`created` (as stored in its meta hash) makes the keys of a deleted channel unreachable
for the channel recreated under the same name, so `delete` need not find them (they
expire on their own), and `digest` (BLAKE2b of the caller's key, 32 hex digits, no ':')
makes the name unambiguous although channel names may hold ':'. A duplicate answers the
earlier message as stored; when retention already dropped it, the answer is a Message
with the earlier id and the data and event of the duplicate call, stamped now.

Live delivery across nodes: `follow` is one blocking XREAD over the followed channels'
streams and the wake stream `{p}wake`, on the store's second (blocking) connection pool.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import msgspec

from tidings.protocol.errors import StoreError
from tidings.protocol.messages import Message
from tidings.server.constants import IDEMPOTENCY_TTL
from tidings.server.stores.base import ChannelInfo, Published, ReadResult, Retention
from tidings.server.stores.redis.base import RedisBase, parse_seq

__all__ = ["APPEND_LUA", "RedisChannels", "redis_errors"]

_encode_json = msgspec.json.Encoder().encode
_decode_json = msgspec.json.Decoder().decode

# How many channels one round trip of `sweep` / `list_channels` handles.
_BATCH = 500
# Most entries one `follow` returns per stream.
_FOLLOW_COUNT = 1000

# The append itself, as a Lua function: this part's script below and the jobs part's write
# script (tidings.server.stores.redis.jobs) both include it, so a job's event is appended by the
# same code as a publish (one copy of the id, retention and idempotency rules).
# append(stream key, meta key, channels set key, name, data JSON, event ("" for none),
#        now, default max_messages, idempotency key prefix ("{p}idem:{name}:"),
#        key digest ("" for none), TTL ms)
# Returns {seq, prev_seq, keep} for a new message; for a duplicate
#         {seq, prev_seq, keep, 1, fields of the earlier entry (absent when trimmed)}.
APPEND_LUA = """
local function append(stream, meta, channels, name, data, event, now, default_keep,
                      idem_prefix, digest, ttl)
  redis.call('HSETNX', meta, 'created', now)
  local keep = tonumber(redis.call('HGET', meta, 'max_messages') or default_keep)
  local idem = false
  if digest ~= '' then
    idem = idem_prefix .. redis.call('HGET', meta, 'created') .. ':' .. digest
    local seen = redis.call('GET', idem)
    if seen then
      local seq = tonumber(seen)
      local entry = redis.call('XRANGE', stream, '0-' .. seen, '0-' .. seen)
      if entry[1] then
        return {seq, seq - 1, keep, 1, entry[1][2]}
      end
      return {seq, seq - 1, keep, 1}
    end
  end
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  redis.call('XADD', stream, '0-' .. seq, 'd', data, 'e', event, 't', now)
  redis.call('XTRIM', stream, 'MAXLEN', keep)
  redis.call('ZADD', channels, 0, name)
  if idem then
    redis.call('SET', idem, seq, 'PX', ttl)
  end
  return {seq, seq - 1, keep}
end
"""

# KEYS: stream, meta, channels set.
# ARGV: name, data JSON, event ("" for none), now, default max_messages,
#       idempotency key prefix ("{p}idem:{name}:"), key digest ("" for none), TTL ms.
# Reply: that of `append`.
_APPEND = (
    APPEND_LUA
    + """
return append(KEYS[1], KEYS[2], KEYS[3],
              ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8])
"""
)

# KEYS: stream, meta.  ARGV: after (normalized decimal), limit.
# Reply: {0} when the channel does not exist, else
#        {1, last seq, oldest retained seq (0: none), reset (0/1), entries}.
_READ = """
local m = redis.call('HMGET', KEYS[2], 'seq', 'created')
if not m[2] then
  return {0}
end
local last = tonumber(m[1] or '0')
local after = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local head = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
local first = last + 1
if head[1] then
  first = tonumber(string.sub(head[1][1], 3))
end
local reset = 0
if after ~= 0 and (after < first - 1 or after > last) then
  reset = 1
end
local entries = {}
if limit > 0 then
  local start = '-'
  if after ~= 0 and reset == 0 then
    start = '(0-' .. ARGV[1]
  end
  entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', limit)
end
local oldest = 0
if head[1] then
  oldest = first
end
return {1, last, oldest, reset, entries}
"""

# KEYS: stream, meta.  ARGV: now, default max_age.
# Drops the entries older than now - max_age from the front; replies how many.
_SWEEP = """
local age = redis.call('HGET', KEYS[2], 'max_age') or ARGV[2]
local cutoff = tonumber(ARGV[1]) - tonumber(age)
local start = '-'
local cut = false
while true do
  local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 512)
  if #batch == 0 then
    break
  end
  for _, e in ipairs(batch) do
    local f = e[2]
    local t = false
    for i = 1, #f, 2 do
      if f[i] == 't' then
        t = tonumber(f[i + 1])
      end
    end
    if (not t) or t >= cutoff then
      cut = e[1]
      break
    end
  end
  if cut then
    break
  end
  start = '(' .. batch[#batch][1]
end
if cut then
  return redis.call('XTRIM', KEYS[1], 'MINID', cut)
end
if start == '-' then
  return 0
end
return redis.call('XTRIM', KEYS[1], 'MAXLEN', 0)
"""


def _where(url: str) -> str:
    """The Redis address of a URL, without credentials (for error messages)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


@contextlib.contextmanager
def redis_errors(url: str) -> Iterator[None]:
    """Translate redis-py errors into StoreError with a message saying what to do."""
    from redis import exceptions as rex

    try:
        yield
    except rex.MaxConnectionsError as exc:
        raise StoreError(
            f"every connection to Redis at {_where(url)} is busy ({exc}): retry, or give "
            "the store a larger connection pool"
        ) from exc
    except (rex.ConnectionError, rex.TimeoutError) as exc:
        raise StoreError(
            f"cannot reach Redis at {_where(url)} ({exc}): check that it is running and "
            "that the store URL points at it; the request may be retried"
        ) from exc
    except rex.RedisError as exc:
        raise StoreError(
            f"Redis at {_where(url)} refused a command ({exc}): check its memory limit "
            "and that no other program writes keys under this store's prefix (?prefix=)"
        ) from exc


def _digest(idempotency_key: str) -> str:
    return hashlib.blake2b(idempotency_key.encode(), digest_size=16).hexdigest()


def _entry_seq(entry_id: bytes) -> int:
    """Sequence number of a stream entry id `0-{seq}`."""
    return int(entry_id[2:])


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _message(channel: str, seq: int, fields: dict[bytes, bytes]) -> Message:
    event = fields.get(b"e") or b""
    return Message(
        id=str(seq),
        channel=channel,
        data=_decode_json(fields[b"d"]),
        event=event.decode() if event else None,
        time=float(fields[b"t"]),
    )


class RedisChannels(RedisBase):
    """Every ChannelStore method on Redis Streams, and the relay's `follow`."""

    async def _load_scripts(self) -> None:
        await super()._load_scripts()
        r = self.r
        self._append_script = r.register_script(_APPEND)
        self._read_script = r.register_script(_READ)
        self._sweep_script = r.register_script(_SWEEP)

    def _errors(self) -> contextlib.AbstractContextManager[None]:
        return redis_errors(self.url)

    # -- appends ------------------------------------------------------------------------

    def _append_keys(self, channel: str) -> list[str]:
        return [self.k("ch", channel), self.k("chm", channel), self.k("channels")]

    def _append_args(
        self,
        channel: str,
        data_json: bytes,
        event: str | None,
        now: float,
        idempotency_key: str | None,
    ) -> list[Any]:
        return [
            channel,
            data_json,
            event or "",
            repr(now),
            self.default_retention.max_messages,
            self.k("idem", channel) + ":",
            "" if idempotency_key is None else _digest(idempotency_key),
            int(IDEMPOTENCY_TTL * 1000),
        ]

    def appended(
        self, channel: str, data: Any, event: str | None, now: float, reply: list[int]
    ) -> Published:
        """The Published for an append's reply `[seq, prev_seq, keep]`."""
        seq, prev, keep = (int(x) for x in reply[:3])
        msg = Message(id=str(seq), channel=channel, data=data, event=event or None, time=now)
        return Published(msg, str(prev) if prev else None, keep)

    def queue_delete(self, pipe: Any, channel: str) -> None:
        """Queue the removal of a channel on a pipeline; the first reply (of DEL) counts
        the keys removed."""
        pipe.delete(self.k("ch", channel), self.k("chm", channel))
        pipe.zrem(self.k("channels"), channel)

    async def publish(
        self,
        channel: str,
        data: Any,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> Published:
        r = self.r
        now = time.time()
        keys = self._append_keys(channel)
        args = self._append_args(channel, _encode_json(data), event, now, idempotency_key)
        with self._errors():
            reply = await self._append_script(keys=keys, args=args, client=r)
        if len(reply) == 3:
            return self.appended(channel, data, event, now, reply)
        seq, prev, keep = int(reply[0]), int(reply[1]), int(reply[2])
        if len(reply) > 4:
            msg = _message(channel, seq, _fields(reply[4]))
        else:
            # Retention dropped the earlier message: its id, this call's data.
            msg = Message(id=str(seq), channel=channel, data=data, event=event, time=now)
        return Published(msg, str(prev) if prev else None, keep, duplicate=True)

    # -- reads --------------------------------------------------------------------------

    async def read(self, channel: str, after: str, limit: int) -> ReadResult:
        after_seq = parse_seq(after)
        r = self.r
        keys = [self.k("ch", channel), self.k("chm", channel)]
        with self._errors():
            reply = await self._read_script(
                keys=keys, args=[str(after_seq), max(0, limit)], client=r
            )
        if not reply[0]:
            return ReadResult(messages=[], reset=after_seq != 0, first_id=None, last_id=None)
        _, last, oldest, reset, entries = reply
        messages = [_message(channel, _entry_seq(eid), _fields(flat)) for eid, flat in entries]
        return ReadResult(
            messages=messages,
            reset=bool(reset),
            first_id=str(oldest) if oldest else None,
            last_id=str(last) if last else None,
        )

    async def channel_marks(self, channels: list[str]) -> list[tuple[int, bytes | None]]:
        """(last sequence number, creation mark) of each channel, in one round trip.

        The mark (its `created`, as stored) changes when a channel is deleted and made
        again, even when the new life's ids have passed the old ones.
        """
        with self._errors():
            async with self.r.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.hmget(self.k("chm", channel), "seq", "created")
                rows = await pipe.execute()
        return [(int(seq) if seq is not None else 0, created) for seq, created in rows]

    def _queue_info(self, pipe: Any, channel: str) -> None:
        pipe.hmget(self.k("chm", channel), "seq", "created", "max_messages", "max_age")
        pipe.xlen(self.k("ch", channel))
        pipe.xrange(self.k("ch", channel), "-", "+", count=1)

    def _info(
        self, channel: str, meta: list[Any], length: int, head: list[Any]
    ) -> ChannelInfo | None:
        seq, created, max_messages, max_age = meta
        if created is None:
            return None
        custom = max_messages is not None
        return ChannelInfo(
            name=channel,
            first_id=str(_entry_seq(head[0][0])) if head else None,
            last_id=seq.decode() if seq is not None and int(seq) else None,
            messages=int(length),
            created=float(created),
            retention=Retention(int(max_messages), float(max_age))
            if custom
            else self.default_retention,
            custom_retention=custom,
        )

    async def _infos(self, channels: list[str]) -> list[ChannelInfo]:
        if not channels:
            return []
        r = self.r
        with self._errors():
            async with r.pipeline(transaction=True) as pipe:
                for channel in channels:
                    self._queue_info(pipe, channel)
                replies = await pipe.execute()
        out = []
        for i, channel in enumerate(channels):
            info = self._info(channel, *replies[3 * i : 3 * i + 3])
            if info is not None:
                out.append(info)
        return out

    async def info(self, channel: str) -> ChannelInfo | None:
        found = await self._infos([channel])
        return found[0] if found else None

    async def list_channels(self, prefix: str = "", limit: int = 1000) -> list[ChannelInfo]:
        if limit <= 0:
            return []
        r = self.r
        low = b"[" + prefix.encode() if prefix else b"-"
        # UTF-8 never holds 0xff: every name starting with `prefix` sorts below this.
        high = b"(" + prefix.encode() + b"\xff" if prefix else b"+"
        with self._errors():
            raw = await r.zrangebylex(self.k("channels"), low, high, start=0, num=limit)
        return await self._infos([n.decode() for n in raw])

    # -- changes ------------------------------------------------------------------------

    async def delete(self, channel: str) -> bool:
        r = self.r
        with self._errors():
            async with r.pipeline(transaction=True) as pipe:
                self.queue_delete(pipe, channel)
                # Every node's relay learns of it (tidings.server.relay): a channel made again under
                # this name starts its ids over, so their followers must start afresh.
                pipe.xadd(self.k("wake"), {"deleted": channel}, maxlen=10_000, approximate=True)
                replies = await pipe.execute()
        return bool(replies[0])

    async def set_retention(self, channel: str, retention: Retention | None) -> ChannelInfo:
        r = self.r
        meta = self.k("chm", channel)
        keep = (retention or self.default_retention).max_messages
        with self._errors():
            async with r.pipeline(transaction=True) as pipe:
                pipe.hsetnx(meta, "created", repr(time.time()))
                if retention is None:
                    pipe.hdel(meta, "max_messages", "max_age")
                else:
                    pipe.hset(
                        meta,
                        mapping={
                            "max_messages": retention.max_messages,
                            "max_age": repr(float(retention.max_age)),
                        },
                    )
                pipe.zadd(self.k("channels"), {channel: 0})
                pipe.xtrim(self.k("ch", channel), maxlen=keep, approximate=False)
                self._queue_info(pipe, channel)
                replies = await pipe.execute()
        info = self._info(channel, *replies[-3:])
        if info is None:  # pragma: no cover - the transaction above created it
            raise StoreError(f"channel {channel!r} vanished while setting its retention: retry")
        return info

    async def sweep(self, now: float) -> list[str]:
        trimmed: list[str] = []
        with self._errors():
            # Every channel but the job channels (`job.*`, see Store.sweep): the names
            # before "job." and from "job/" on ('/' follows '.').
            await self._sweep_range(now, b"-", b"(job.", trimmed)
            await self._sweep_range(now, b"[job/", b"+", trimmed)
        return trimmed

    async def _sweep_range(self, now: float, low: bytes, high: bytes, trimmed: list[str]) -> None:
        """Apply retention by age to the channels whose names lie in low..high (lex)."""
        r = self.r
        while True:
            raw = await r.zrangebylex(self.k("channels"), low, high, start=0, num=_BATCH)
            if not raw:
                return
            names = [n.decode() for n in raw]
            async with r.pipeline(transaction=False) as pipe:
                pipe.scripts.add(self._sweep_script)
                for name in names:
                    pipe.evalsha(
                        self._sweep_script.sha,
                        2,
                        self.k("ch", name),
                        self.k("chm", name),
                        repr(now),
                        repr(float(self.default_retention.max_age)),
                    )
                removed = await pipe.execute()
            trimmed.extend(n for n, count in zip(names, removed, strict=True) if count)
            if len(raw) < _BATCH:
                return
            low = b"(" + raw[-1]

    # -- the relay ----------------------------------------------------------------------

    async def wake_position(self) -> bytes:
        """The id of the wake stream's newest entry (b"0-0" when it has none): where a
        `follow` starts so as to see only wake-ups from now on."""
        r = self.r
        with self._errors():
            newest = await r.xrevrange(self.k("wake"), "+", "-", count=1)
        return bytes(newest[0][0]) if newest else b"0-0"

    async def follow(
        self, positions: dict[str, int], wake_from: bytes, block_ms: int
    ) -> tuple[list[tuple[str, list[Message]]], list[tuple[str, float]], list[str], bytes]:
        """One blocking XREAD: messages after `positions[channel]` of each channel, and
        wake-ups after `wake_from`; waits up to `block_ms` (<= 0: not at all) for any.

        Returns (per channel with news: its messages in order), the wake-ups as
        (job type, run_at), the channels deleted (on any node), and the wake stream
        position to pass next time.
        """
        self.r  # noqa: B018 - raises StoreClosed when the store is not open
        by_key: dict[bytes, str] = {}
        streams: dict[str, bytes | str] = {}
        for channel, pos in positions.items():
            key = self.k("ch", channel)
            by_key[key.encode()] = channel
            streams[key] = f"0-{int(pos)}"
        wake_key = self.k("wake")
        wake_key_b = wake_key.encode()
        streams[wake_key] = wake_from
        with self._errors():
            reply = await self._blocking.xread(
                streams, count=_FOLLOW_COUNT, block=block_ms if block_ms > 0 else None
            )
        batches: list[tuple[str, list[Message]]] = []
        wakes: list[tuple[str, float]] = []
        deleted: list[str] = []
        for key, entries in reply or []:
            if key == wake_key_b:
                for eid, fields in entries:
                    if b"deleted" in fields:
                        deleted.append(fields[b"deleted"].decode())
                    else:
                        wakes.append((fields[b"type"].decode(), float(fields[b"run_at"])))
                    wake_from = bytes(eid)
                continue
            name = by_key.get(key)
            if name is None or not entries:
                continue
            batches.append((name, [_message(name, _entry_seq(eid), f) for eid, f in entries]))
        return batches, wakes, deleted, wake_from
