"""The channel service: publish, read, wait — validation, store, then live fan-out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tidings.protocol.errors import BadRequest, Forbidden, InvalidChannel, NotFound
from tidings.protocol.jobs import JOB_CHANNEL_PREFIX
from tidings.protocol.messages import PublishAck, valid_channel
from tidings.server import constants as C
from tidings.server.hub import DirectPoll, Hub
from tidings.server.principals import Principal
from tidings.server.stores.base import ChannelInfo, ReadResult, Retention, Store

__all__ = ["ChannelService", "check_channel", "check_event"]

MAX_EVENT_LEN = 200


def check_channel(name: str) -> str:
    """Return `name` if it is a legal channel name, else raise InvalidChannel."""
    if not valid_channel(name):
        raise InvalidChannel(
            f"invalid channel name {name[:220]!r}: use 1-200 characters of A-Z a-z 0-9 . _ : -"
        )
    return name


def check_event(event: Any) -> str | None:
    """Validate an event name: a short string without line breaks, or None."""
    if event is None:
        return None
    if not isinstance(event, str) or not event or len(event) > MAX_EVENT_LEN:
        raise BadRequest(f'"event" must be a string of 1-{MAX_EVENT_LEN} characters')
    if "\n" in event or "\r" in event:
        raise BadRequest('"event" must not contain line breaks (it becomes an SSE field)')
    return event


class ChannelService:
    """What handlers call; the store below, the hub beside.

    Args:
        store: durable channels.
        hub: live fan-out of this process.
        long_poll_cap: the longest wait honoured, in seconds.
    """

    def __init__(self, store: Store, hub: Hub, long_poll_cap: float) -> None:
        self.store = store
        self.hub = hub
        self.long_poll_cap = long_poll_cap
        # Shared store: live messages come from the relay, which must be told what to
        # follow (set by the app; see tidings.server.relay).
        self.relay_watch: Callable[[str], Awaitable[None]] | None = None
        self.relay_forget: Callable[[str], None] | None = None
        # One store lookup per channel however many streams ask at once.
        self._last_lookups: dict[str, asyncio.Task[str | None]] = {}

    async def publish(
        self, channel: str, data: Any, event: str | None = None, idempotency_key: str | None = None
    ) -> PublishAck:
        """Store one message durably, then fan it out; returns its id once durable."""
        ack, _ = await self.publish_keyed(channel, data, event, idempotency_key)
        return ack

    async def publish_keyed(
        self, channel: str, data: Any, event: str | None = None, idempotency_key: str | None = None
    ) -> tuple[PublishAck, bool]:
        """`publish`, also saying whether the idempotency key matched an earlier publish
        (True: nothing new was written; the ack is the earlier message's)."""
        check_channel(channel)
        if channel.startswith(JOB_CHANNEL_PREFIX):
            raise Forbidden(
                f"{channel!r}: channels job.* are written by the job system; use /v1/jobs"
            )
        check_event(event)
        if idempotency_key is not None and not 0 < len(idempotency_key) <= 200:
            raise BadRequest("Idempotency-Key must be 1-200 characters")
        res = await self.store.channels.publish(channel, data, event, idempotency_key)
        msg = res.message
        if not res.duplicate and not self.store.shared:
            # No await between the commit's return and the fan-out: live order = id order.
            self.hub.publish(msg, res.prev_id, res.keep)
        return PublishAck(msg.id, channel, msg.time), res.duplicate

    async def read(self, channel: str, after: str, limit: int, fresh: bool = False) -> ReadResult:
        """Messages after a cursor: from the hub's recent tail when it can tell, else the store.

        `fresh`: from the store alone, for a caller that has read a write (a job's end)
        whose message the hub may not have been handed yet.
        """
        check_channel(channel)
        cached = None if fresh else self.hub.recent_after(channel, after, limit)
        if cached is not None:
            last = cached[-1].id if cached else after
            return ReadResult(cached, reset=False, first_id=None, last_id=last)
        return await self.store.channels.read(channel, after, limit)

    async def watch(self, channel: str) -> None:
        """On a shared store, have the relay follow `channel` from now on; call after
        registering the subscriber or waiter and before reading history."""
        if self.relay_watch is not None:
            await self.relay_watch(channel)

    async def check_subscribe(self, principal: Principal, channel: str) -> None:
        """Forbidden unless `principal` may read `channel`.

        A job's channel `job.{id}` follows the job's rule only — its submitter, those
        allowed to work its type, admins (Principal.may_follow_job) — whatever subscribe
        patterns say: a grant of `*` must not read every job's results.
        """
        if channel.startswith(JOB_CHANNEL_PREFIX):
            if principal.admin:
                return
            job = await self.store.jobs.get_job(channel[len(JOB_CHANNEL_PREFIX) :])
            if job is not None and principal.may_follow_job(job.submitted_by, job.type):
                return
        elif principal.may("subscribe", channel):
            return
        raise Forbidden(
            f"{principal.name} may not subscribe to {channel!r}: ask for a subscribe grant"
        )

    async def last_id(self, channel: str) -> str:
        """The channel's newest id ("0" when it has none): the cursor meaning "from now"."""
        known, last = self.hub.last_id(channel)
        if known:
            return last or "0"
        lookup = self._last_lookups.get(channel)
        if lookup is None:
            # A task of its own, awaited through a shield: a caller that is cancelled (its
            # client hung up) must not cancel the lookup the other callers wait for.
            lookup = asyncio.ensure_future(self._lookup_last(channel))
            self._last_lookups[channel] = lookup
            # All its callers may have gone: its failure is theirs, not the loop's to log.
            lookup.add_done_callback(lambda t: t.cancelled() or t.exception())
        return (await asyncio.shield(lookup)) or "0"

    async def _lookup_last(self, channel: str) -> str | None:
        try:
            last = (await self.store.channels.read(channel, "0", 0)).last_id
            self.hub.note_last(channel, last)
            return last
        finally:
            del self._last_lookups[channel]

    async def wait(
        self,
        channel: str,
        after: str,
        limit: int,
        seconds: float,
        direct: DirectPoll | None = None,
    ) -> ReadResult:
        """Long poll: answer as soon as something follows `after`, or empty after `seconds`.

        With `direct`, a publish may write the answer itself while this waits (see
        DirectPoll): then `direct.answered` is set and the caller must send nothing.
        """
        deadline = time.monotonic() + max(0.0, min(seconds, self.long_poll_cap))
        while True:
            fut = self.hub.waiter(channel)
            try:
                await self.watch(channel)
                res = await self.read(channel, after, limit)
                remaining = deadline - time.monotonic()
                if res.messages or res.reset or remaining <= 0 or self.hub.closing:
                    return res
                if direct is not None:
                    # From here until this task wakes, it only waits: the publish may answer.
                    self.hub.answer_directly(fut, direct)
                await asyncio.wait((fut,), timeout=remaining)
                if direct is not None and direct.answered:
                    if direct.pending is not None:
                        await direct.pending
                    return res
                if not fut.done():
                    return res
            finally:
                self.hub.drop_waiter(channel, fut)

    async def info(self, channel: str) -> ChannelInfo:
        """A channel's stats; NotFound when it does not exist."""
        check_channel(channel)
        info = await self.store.channels.info(channel)
        if info is None:
            raise NotFound(f"channel {channel!r} does not exist: publish to it to create it")
        return info

    async def delete(self, channel: str) -> None:
        """Delete a channel, its history, and end its live streams."""
        check_channel(channel)
        if not await self.store.channels.delete(channel):
            raise NotFound(f"channel {channel!r} does not exist")
        self.hub.close_channel(channel, "channel deleted")
        if self.relay_forget is not None:
            self.relay_forget(channel)  # a stream opened next follows the new channel

    async def set_retention(self, channel: str, retention: Retention | None) -> ChannelInfo:
        """Give a channel its own retention, or None for the server default."""
        check_channel(channel)
        if retention is not None and not (
            1 <= retention.max_messages <= C.MAX_RETAINED
            and 0 < retention.max_age <= C.MAX_RETENTION_AGE  # also refuses NaN
        ):
            raise BadRequest(
                f"retention needs 1 <= max_messages <= {C.MAX_RETAINED} and "
                f"0 < max_age <= {C.MAX_RETENTION_AGE:.0f} seconds"
            )
        info = await self.store.channels.set_retention(channel, retention)
        self.hub.forget(channel)
        return info

    async def sweep(self) -> None:
        """Apply retention by age; drop what the hub remembers of trimmed channels."""
        for channel in await self.store.channels.sweep(time.time()):
            self.hub.forget(channel)
