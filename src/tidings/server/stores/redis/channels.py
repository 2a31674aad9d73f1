"""Channels of the Redis store: one stream per channel, written by one Lua function.

Every append — a publish, or a job's event written by the jobs part's script — runs the
same Lua function (lua/append.lua, which both scripts start with), which atomically:
answers an idempotency key seen before with the earlier sequence number, increments the
channel's `seq`, sets `created` on the channel's first write, XADDs entry `0-{seq}`
(fields d, e, t), trims the stream exactly (XTRIM MAXLEN, not ~) to the channel's own
max_messages or the default passed in, adds the name to `{p}channels` and remembers the
idempotency key for IDEMPOTENCY_TTL seconds.

What the jobs part (tidings.server.stores.redis.jobs) takes from this one, in its
constructor: `appended`, the Published of an append's reply, and `queue_delete`, the
removal of a channel on a pipeline.

Idempotency keys: the key name is `{p}idem:{name}:{created}:{digest}` — the channel's
`created` (as stored in its meta hash) makes the keys of a deleted channel unreachable
for the channel recreated under the same name, so `delete` need not find them (they
expire on their own), and `digest` (BLAKE2b of the caller's key, 32 hex digits, no ':')
makes the name unambiguous although channel names may hold ':'. A duplicate answers the
earlier message as stored; when retention already dropped it, the answer is a Message
with the earlier id and the data and event of the duplicate call, stamped now.

Live delivery across nodes: `follow` is one blocking XREAD over the followed channels'
streams and the wake stream `{p}wake`, on the store's second (blocking) connection pool;
with `channel_marks` and `wake_position` it is what the relay (tidings.server.relay)
reads.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from redis.commands.core import AsyncScript

from tidings.protocol.errors import StoreError
from tidings.protocol.messages import Message
from tidings.server.constants import IDEMPOTENCY_TTL
from tidings.server.stores.base import (
    ChannelInfo,
    ChannelStore,
    Published,
    ReadResult,
    Retention,
)
from tidings.server.stores.common import decode_json, encode_json, parse_seq
from tidings.server.stores.redis.core import RedisCore, lua

__all__ = ["RedisChannels"]

# How many channels one round trip of `sweep` / `list_channels` handles.
_BATCH = 500
# Most entries one `follow` returns per stream.
_FOLLOW_COUNT = 1000

_PUBLISH = lua("append.lua", "publish.lua")
_READ = lua("read.lua")
_SWEEP = lua("sweep.lua")


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
        data=decode_json(fields[b"d"]),
        event=event.decode() if event else None,
        time=float(fields[b"t"]),
    )


class RedisChannels(ChannelStore):
    """Every ChannelStore method on Redis Streams, and what the relay reads (`follow`,
    `channel_marks`, `wake_position`)."""

    _publish_script: AsyncScript
    _read_script: AsyncScript
    _sweep_script: AsyncScript

    def __init__(self, core: RedisCore) -> None:
        super().__init__(core.default_retention)
        self._core = core
        self._key = core.key
        self._errors = core.errors

    def register_scripts(self) -> None:
        """Register this part's Lua scripts (once the core is open)."""
        self._publish_script = self._core.script(_PUBLISH)
        self._read_script = self._core.script(_READ)
        self._sweep_script = self._core.script(_SWEEP)

    def cursor_key(self, message_id: str) -> int:
        return parse_seq(message_id)

    # -- appends ------------------------------------------------------------------------

    def _append_keys(self, channel: str) -> list[str]:
        return [self._key("ch", channel), self._key("chm", channel), self._key("channels")]

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
            self._key("idem", channel) + ":",
            "" if idempotency_key is None else _digest(idempotency_key),
            int(IDEMPOTENCY_TTL * 1000),
        ]

    def appended(
        self, channel: str, data: Any, event: str | None, now: float, reply: list[int]
    ) -> Published:
        """The Published for an append's reply `[seq, prev_seq, keep]` (ints; prev_seq 0
        for a channel's first message; `data` as decoded, not the JSON bytes)."""
        seq, prev, keep = (int(number) for number in reply[:3])
        msg = Message(id=str(seq), channel=channel, data=data, event=event or None, time=now)
        return Published(msg, str(prev) if prev else None, keep)

    def queue_delete(self, pipe: Any, channel: str) -> None:
        """Queue the removal of a channel (stream, meta hash, name) on a pipeline; the
        first reply (of DEL) counts the keys removed."""
        pipe.delete(self._key("ch", channel), self._key("chm", channel))
        pipe.zrem(self._key("channels"), channel)

    async def publish(
        self,
        channel: str,
        data: Any,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> Published:
        client = self._core.client
        now = time.time()
        keys = self._append_keys(channel)
        args = self._append_args(channel, encode_json(data), event, now, idempotency_key)
        with self._errors:
            reply = await self._publish_script(keys=keys, args=args, client=client)
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
        client = self._core.client
        keys = [self._key("ch", channel), self._key("chm", channel)]
        with self._errors:
            reply = await self._read_script(
                keys=keys, args=[str(after_seq), max(0, limit)], client=client
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
        with self._errors:
            async with self._core.client.pipeline(transaction=False) as pipe:
                for channel in channels:
                    pipe.hmget(self._key("chm", channel), "seq", "created")
                rows = await pipe.execute()
        return [(int(seq) if seq is not None else 0, created) for seq, created in rows]

    def _queue_info(self, pipe: Any, channel: str) -> None:
        pipe.hmget(self._key("chm", channel), "seq", "created", "max_messages", "max_age")
        pipe.xlen(self._key("ch", channel))
        pipe.xrange(self._key("ch", channel), "-", "+", count=1)

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
        with self._errors:
            async with self._core.client.pipeline(transaction=True) as pipe:
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

    async def list_channels(
        self, prefix: str = "", limit: int = 1000, after: str = ""
    ) -> list[ChannelInfo]:
        # One ZRANGEBYLEX of the name index `{p}channels` from the later of `prefix` and
        # `after`; a name whose channel was deleted between the two reads is passed over,
        # and the page filled from the names after it.
        out: list[ChannelInfo] = []
        if limit <= 0:
            return out
        client = self._core.client
        if after >= prefix:
            low = b"(" + after.encode() if after else b"-"
        else:
            low = b"[" + prefix.encode()
        # UTF-8 never holds 0xff: every name starting with `prefix` sorts below this.
        high = b"(" + prefix.encode() + b"\xff" if prefix else b"+"
        while len(out) < limit:
            want = limit - len(out)
            with self._errors:
                raw = await client.zrangebylex(self._key("channels"), low, high, start=0, num=want)
            out.extend(await self._infos([name.decode() for name in raw]))
            if len(raw) < want:
                break
            low = b"(" + raw[-1]
        return out

    # -- changes ------------------------------------------------------------------------

    async def delete(self, channel: str) -> bool:
        with self._errors:
            async with self._core.client.pipeline(transaction=True) as pipe:
                self.queue_delete(pipe, channel)
                # Every node's relay learns of it (tidings.server.relay): a channel made
                # again under this name starts its ids over, so its followers start afresh.
                pipe.xadd(self._key("wake"), {"deleted": channel}, maxlen=10_000, approximate=True)
                replies = await pipe.execute()
        return bool(replies[0])

    async def set_retention(self, channel: str, retention: Retention | None) -> ChannelInfo:
        meta = self._key("chm", channel)
        keep = (retention or self.default_retention).max_messages
        with self._errors:
            async with self._core.client.pipeline(transaction=True) as pipe:
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
                pipe.zadd(self._key("channels"), {channel: 0})
                pipe.xtrim(self._key("ch", channel), maxlen=keep, approximate=False)
                self._queue_info(pipe, channel)
                replies = await pipe.execute()
        info = self._info(channel, *replies[-3:])
        if info is None:  # pragma: no cover - the transaction above created it
            raise StoreError(f"channel {channel!r} vanished while setting its retention: retry")
        return info

    async def sweep(self, now: float) -> list[str]:
        trimmed: list[str] = []
        with self._errors:
            # Every channel but the job channels (`job.*`, see Store.sweep): the names
            # before "job." and from "job/" on ('/' follows '.').
            await self._sweep_range(now, b"-", b"(job.", trimmed)
            await self._sweep_range(now, b"[job/", b"+", trimmed)
        return trimmed

    async def _sweep_range(self, now: float, low: bytes, high: bytes, trimmed: list[str]) -> None:
        """Apply retention by age to the channels whose names lie in low..high (lex)."""
        client = self._core.client
        while True:
            raw = await client.zrangebylex(self._key("channels"), low, high, start=0, num=_BATCH)
            if not raw:
                return
            names = [name.decode() for name in raw]
            async with client.pipeline(transaction=False) as pipe:
                pipe.scripts.add(self._sweep_script)
                for name in names:
                    pipe.evalsha(
                        self._sweep_script.sha,
                        2,
                        self._key("ch", name),
                        self._key("chm", name),
                        repr(now),
                        repr(float(self.default_retention.max_age)),
                    )
                removed = await pipe.execute()
            trimmed.extend(name for name, count in zip(names, removed, strict=True) if count)
            if len(raw) < _BATCH:
                return
            low = b"(" + raw[-1]

    # -- the relay ----------------------------------------------------------------------

    async def wake_position(self) -> bytes:
        """The id of the wake stream's newest entry (b"0-0" when it has none): where a
        `follow` starts so as to see only wake-ups from now on."""
        client = self._core.client
        with self._errors:
            newest = await client.xrevrange(self._key("wake"), "+", "-", count=1)
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
        blocking = self._core.blocking
        by_key: dict[bytes, str] = {}
        streams: dict[str, bytes | str] = {}
        for channel, pos in positions.items():
            key = self._key("ch", channel)
            by_key[key.encode()] = channel
            streams[key] = f"0-{int(pos)}"
        wake_key = self._key("wake")
        wake_key_bytes = wake_key.encode()
        streams[wake_key] = wake_from
        with self._errors:
            reply = await blocking.xread(
                streams, count=_FOLLOW_COUNT, block=block_ms if block_ms > 0 else None
            )
        batches: list[tuple[str, list[Message]]] = []
        wakes: list[tuple[str, float]] = []
        deleted: list[str] = []
        for key, entries in reply or []:
            if key == wake_key_bytes:
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
            batches.append(
                (name, [_message(name, _entry_seq(eid), fields) for eid, fields in entries])
            )
        return batches, wakes, deleted, wake_from
