"""Live fan-out: the subscribers and parked long polls of each channel, in this process.

The hot path (see docs/architecture.md):

* A published message wakes the channel's long polls at once and joins the channel's
  queue; a fan-out pass, scheduled with `call_soon`, takes everything queued as one
  batch. Messages published back to back thus reach each subscriber in *one* write.
* A batch is encoded once per transport kind; the frames for "everything after message
  i" are built once per (kind, i) and shared by every subscriber at that position.
* A pass serves subscribers in chunks of `FANOUT_CHUNK`, letting the loop run between
  chunks; messages published meanwhile join the batch for the rest of the pass, and a
  follow-up pass brings the first chunks up to date.
* For each subscriber the hub *starts* the server's `send()` coroutine by hand. When the
  connection's write buffer has room, `send()` writes and finishes in that first step —
  no task, no queue, no wake-up: as cheap as a bare loop of `await send()`
  (docs/decisions/0002). A connection that can take the batch's bytes without `send`
  (an SSE stream's HTTP chunk, a WebSocket's whole frames: `write_chunk`) gets them
  written at once instead, while its transport is not paused (docs/decisions/0024).
* When the socket is backed up, `send()` suspends on the server's drain future. The hub
  then hands that half-run coroutine to a drainer task for this subscriber alone and
  queues the subscriber's later frames in a bounded backlog. The fan-out never waits.
* A backlog over its byte limit cuts the subscriber with a reason: it resumes from its
  cursor, so nothing is lost, and server memory stays bounded.

A subscriber is registered before its history is replayed; while it catches up, live
messages are parked in `pending` and sent after the replay, skipping what the replay sent.

Isolation: what fails for one subscriber (its send, its frames) cuts that subscriber
alone, with a reason; the others get every message. A message that cannot be encoded is
replaced by a note saying it was skipped (an SSE comment, a WebSocket error frame) rather
than failing the batch. A fan-out pass is always cleared, even if it fails, so a channel's
live delivery never stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import types
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterable, MutableMapping
from typing import Any, Protocol

from tidings.protocol.codecs import encode_json
from tidings.protocol.cursors import encode_composite_cursor
from tidings.protocol.messages import Message, data_text, sse_frame
from tidings.server.constants import SSE_RETRY_MS
from tidings.server.transports.kind import StreamKind, ws_text_frame

__all__ = ["DirectPoll", "Hub", "Subscriber"]

log = logging.getLogger("tidings.hub")

Send = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]
# A long poll's answer as an ASGI app: (scope, receive, send) -> coroutine.
Answer = Callable[..., Coroutine[Any, Any, None]]
# How many recent messages per channel the hub keeps to answer polls without the store,
# and for how many channels (the least recently published are forgotten first).
RECENT = 64
RECENT_CHANNELS = 10_000
# Live messages parked while a subscriber replays history; past this, it re-reads the store.
PENDING_MAX = 1000
# Subscribers served per step of a fan-out pass before the loop may run other work.
FANOUT_CHUNK = 100

# A comment keeps proxies from timing out; `retry:` tells EventSource how soon to reconnect.
HEARTBEAT = b": ping\nretry: %d\n\n" % SSE_RETRY_MS

# The kinds as module names: compared per subscriber per batch, and a member looked up
# on the enum class costs a descriptor call.
_SSE, _SSE_MULTI, _WS = StreamKind.SSE, StreamKind.SSE_MULTI, StreamKind.WS
_SSE_JSON = StreamKind.SSE_JSON
# The ASGI message key carrying whole WebSocket frames, written as they are by
# tidings.server.http.ws_protocol.
FRAMES = "tidings.frames"
# The frames left to send once a batch went straight to the connection: none (shared).
_WRITTEN: list[dict[str, Any]] = []


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], first: Any) -> Generator[Any, Any, None]:
    """Continue a coroutine that was stepped by hand and suspended yielding `first`.

    This is what `await` does for a coroutine it started itself: pass each yielded future
    up to the running task and each result or exception back down.
    """
    value = first
    while True:
        try:
            sent = yield value
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                value = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                value = coro.send(sent)
            except StopIteration:
                return


def _transport_of(send: Any) -> Any:
    """The connection's transport when the server exposes it (uvicorn does), else None.

    Checked by behaviour, not class: uvloop's transports are not asyncio.BaseTransport.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if callable(getattr(transport, "abort", None)) and callable(
        getattr(transport, "is_closing", None)
    ):
        return transport
    return None


class Subscriber:
    """One live stream: where frames go, how far it got, and its bounded backlog.

    Args:
        hub: the hub it is registered with.
        kind: how the stream frames messages (SSE, multiplexed SSE or WebSocket).
        send: the ASGI `send` of its connection.
        cursors: channel -> id of the last message this subscriber has been sent (None:
            nothing yet).
        buffer_limit: bytes of unsent frames tolerated before the subscriber is cut.
        until: event names after which the stream ends by itself (a job's terminal events).
        session: the login session the stream was opened with (None: anonymous); the
            stream ends when that session is revoked or expires.
    """

    __slots__ = (
        "backlog",
        "backlog_bytes",
        "buffer_limit",
        "catching_up",
        "close_reason",
        "completed",
        "cursors",
        "drainer",
        "hub",
        "kind",
        "overflowed",
        "pending",
        "raw_frames",
        "send",
        "session",
        "task",
        "transport",
        "until",
        "write_chunk",
    )

    def __init__(
        self,
        hub: Hub,
        kind: StreamKind,
        send: Send,
        cursors: dict[str, str | None],
        buffer_limit: int,
        until: frozenset[str] | None = None,
        session: str | None = None,
        write_chunk: Callable[[bytes], bool] | None = None,
    ) -> None:
        self.hub = hub
        self.until = until
        self.session = session
        self.kind = kind
        self.send = send
        self.transport = _transport_of(send)
        self.task = asyncio.current_task()
        self.cursors = cursors
        self.buffer_limit = buffer_limit
        self.catching_up = True
        self.pending: list[Message] = []
        self.overflowed = False
        self.backlog: deque[dict[str, Any]] | None = None  # made when first needed
        self.backlog_bytes = 0
        self.drainer: asyncio.Task[None] | None = None
        self.close_reason: str | None = None
        # True once a final event (`until`) was written: the stream ended complete.
        self.completed = False
        # A WebSocket whose connection takes pre-encoded frames, all of a batch in one
        # write (see _takes_frames); None until its first live batch asks.
        self.raw_frames: bool | None = None
        # A way to write a batch's bytes straight to the connection (False: not now, use
        # `send`): an SSE stream's HTTP chunk, or a WebSocket's whole frames (set with
        # raw_frames); None: `send` only.
        self.write_chunk = write_chunk

    # -- frames -----------------------------------------------------------------------

    def frame(self, msg: Message) -> dict[str, Any]:
        """The ASGI message carrying one message to this subscriber (history replay)."""
        if self.kind is _SSE_MULTI:
            cursor = encode_composite_cursor({**self.cursors, msg.channel: msg.id})
            body = b"id: " + cursor.encode() + b"\n" + _multi_body(msg)
            return {"type": "http.response.body", "body": body, "more_body": True}
        return _as_asgi(self.kind, [_encode(self.kind, msg)])[0]

    # -- delivery ---------------------------------------------------------------------

    def park(self, msgs: list[Message]) -> None:
        """While catching up: keep live messages for after the replay (bounded)."""
        if len(self.pending) + len(msgs) > PENDING_MAX:
            # Everything parked is durable: drop it and let the replay read it again.
            self.pending.clear()
            self.overflowed = True
        else:
            self.pending.extend(msgs)

    def deliver_batch(self, batch: Batch) -> None:
        """Hand the messages of `batch` this subscriber lacks to it in one write, never
        waiting on its socket."""
        if self.close_reason is not None:
            return
        if self.catching_up:
            self.park(batch.msgs)
            return
        channel = batch.channel
        start = batch.start_after(self.cursors.get(channel))
        msgs = batch.msgs
        end = len(msgs)
        if start >= end:
            return
        until = self.until
        if until is not None:
            end = next((i + 1 for i in range(start, end) if msgs[i].event in until), end)
        if self.kind is _SSE_MULTI:
            frames = [self._multi_frame(msgs[start:end], batch)]
        elif self.kind is _WS and self._takes_frames():
            run = batch.ws_frames(start, end)
            direct = self.write_chunk is not None and self.drainer is None
            frames = _WRITTEN if direct and self._write_chunk(run[FRAMES]) else [run]
        elif (
            self.write_chunk is not None
            and self.drainer is None
            and end == len(msgs)
            and self._write_chunk(batch.chunk(self.kind, start))
        ):
            frames = _WRITTEN
        elif end == len(msgs):
            frames = batch.frames(self.kind, start)
        else:
            frames = batch.frames_between(self.kind, start, end)
        self.cursors[channel] = msgs[end - 1].id
        self.hub.delivered += end - start
        for frame in frames:
            self.write(frame)
        if until is not None:
            self.check_until(msgs[end - 1])

    def _write_chunk(self, chunk: bytes) -> bool:
        """Write a batch's chunk straight to the connection; False when it must go
        through `send` (see Subscriber.write_chunk)."""
        try:
            return self.write_chunk(chunk)  # type: ignore[misc]
        except Exception as exc:
            self.close(f"send failed: {exc!r}")
            return True

    def _takes_frames(self) -> bool:
        raw = self.raw_frames
        if raw is None:
            owner = getattr(self.send, "__self__", None)
            takes = getattr(owner, "takes_frames", None)
            raw = self.raw_frames = bool(takes is not None and takes())
            if raw:
                # Its connection may also write them without `send` (ws_protocol).
                self.write_chunk = getattr(owner, "write_frames", None)
        return raw

    def _multi_frame(self, msgs: list[Message], batch: Batch) -> dict[str, Any]:
        """Frames of a multiplexed stream: each carries this stream's composite cursor."""
        parts = []
        for msg in msgs:
            self.cursors[msg.channel] = msg.id
            cursor = encode_composite_cursor(self.cursors)
            parts.append(b"id: " + cursor.encode() + b"\n" + batch.multi_body(msg))
        return {"type": "http.response.body", "body": b"".join(parts), "more_body": True}

    def check_until(self, msg: Message) -> None:
        """End the stream, once what was written has drained, after a final event."""
        if self.until is not None and msg.event in self.until:
            self.completed = True
            self.close(f"{msg.event}: the stream is complete", abort=False, drain=True)

    def write(self, frame: dict[str, Any]) -> None:
        """Write now if the socket takes it, else queue in the bounded backlog."""
        if self.drainer is not None:
            if self.backlog is None:
                self.backlog = deque()
            self.backlog.append(frame)
            self.backlog_bytes += _frame_size(frame)
            if self.backlog_bytes > self.buffer_limit:
                self.close(
                    f"slow consumer: more than {self.buffer_limit} bytes unsent; "
                    "reconnect with your last id to resume"
                )
            return
        coro = self.send(frame)
        try:
            first = coro.send(None)
        except StopIteration:
            return
        except Exception as exc:
            self.close(f"send failed: {exc!r}")
            return
        self.drainer = asyncio.get_running_loop().create_task(self._drain(coro, first))

    async def _drain(self, coro: Coroutine[Any, Any, None], first: Any) -> None:
        try:
            await _resume(coro, first)
            while self.backlog:
                frame = self.backlog.popleft()
                self.backlog_bytes -= _frame_size(frame)
                await self.send(frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.close(f"send failed: {exc!r}")
        finally:
            self.drainer = None

    async def send_now(self, frame: dict[str, Any]) -> None:
        """Send from the subscriber's own task (history replay), counted as a delivery."""
        await self.send(frame)
        self.hub.delivered += 1

    def take_pending(self) -> list[Message]:
        """The parked live messages the replay did not cover (cursors must be set)."""
        pending, self.pending = self.pending, []
        key = self.hub.key
        seen = {ch: key(pos) for ch, pos in self.cursors.items() if pos is not None}
        out = []
        for msg in pending:  # may hold repeats: a batch can be handed over twice
            k = key(msg.id)
            if k > seen.get(msg.channel, -1):
                out.append(msg)
                seen[msg.channel] = k
        return out

    # -- closing ----------------------------------------------------------------------

    def close(self, reason: str, abort: bool = True, drain: bool = False) -> None:
        """End this stream: unregister, drop its backlog, stop its task.

        With `abort` (a stuck consumer) the connection is dropped at once instead of
        waiting for the unsent bytes to drain. With `drain`, frames already handed over
        are still sent (the stream's task waits for them) before it ends.
        """
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self.hub.remove(self)
        if not drain:
            self.backlog = None
            self.backlog_bytes = 0
            if self.drainer is not None:
                self.drainer.cancel()
        if abort:
            log.info("closing %s subscriber of %s: %s", self.kind, list(self.cursors), reason)
            self.hub.cut += 1
            if self.transport is not None:
                self.transport.abort()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()


def _multi_body(msg: Message) -> bytes:
    """A multiplexed stream's frame after its `id:` line: the whole message as JSON."""
    try:
        return sse_frame(None, msg.event, encode_json(msg.to_wire()).decode())
    except Exception as exc:
        return _skipped(msg, exc).encode()


def _encode(kind: StreamKind, msg: Message) -> bytes | str:
    """One message as a stream of `kind` carries it: an SSE frame or a WebSocket text."""
    try:
        if kind is _SSE:
            return sse_frame(msg.id, msg.event, data_text(msg.data))
        if kind is _SSE_JSON:
            return sse_frame(msg.id, msg.event, encode_json(msg.to_wire()).decode())
        return encode_json(msg.to_wire()).decode()
    except Exception as exc:
        note = _skipped(msg, exc, ws=kind is _WS)
        return note if kind is _WS else note.encode()


def _skipped(msg: Message, exc: Exception, ws: bool = False) -> str:
    """What a stream gets instead of a message that cannot be encoded (stored before
    values were checked): a note naming it — an SSE comment, or a WebSocket error frame
    (clients skip both) — so one bad message never stops a channel."""
    log.error("message %s of %s cannot be encoded, skipped: %r", msg.id, msg.channel, exc)
    reason = f"message {msg.id} of {msg.channel} cannot be encoded: skipped"
    if not ws:
        return f": {reason}\n\n"
    note = {
        "type": "error",
        "ref": None,
        "id": msg.id,
        "channel": msg.channel,
        "error": {"code": "unencodable", "message": reason},
    }
    return encode_json(note).decode()


def _as_asgi(kind: StreamKind, encoded: list[bytes | str]) -> list[dict[str, Any]]:
    """ASGI messages for encoded messages: SSE frames share one write, WS texts cannot."""
    if kind is not _WS:
        body = b"".join(encoded)  # type: ignore[arg-type]
        return [{"type": "http.response.body", "body": body, "more_body": True}]
    return [{"type": "websocket.send", "text": text} for text in encoded]


class Batch:
    """Messages of one channel fanned out together; each is encoded once per kind, and
    the frames for "everything from message i on" once per (kind, i).

    Args:
        channel: the channel.
        msgs: its messages, in id order.
        key: the store's order of ids.
    """

    __slots__ = (
        "_chunks",
        "_encoded",
        "_frames",
        "_multi",
        "_starts",
        "_ws_raw",
        "_ws_runs",
        "channel",
        "key",
        "keys",
        "msgs",
    )

    def __init__(self, channel: str, msgs: list[Message], key: Callable[[str], int]) -> None:
        self.channel = channel
        self.key = key
        self.msgs: list[Message] = []
        self.keys: list[int] = []
        self._encoded: dict[StreamKind, list[bytes | str]] = {}
        self._frames: dict[tuple[StreamKind, int], list[dict[str, Any]]] = {}
        self._chunks: dict[tuple[StreamKind, int], bytes] = {}
        self._starts: dict[str | None, int] = {}
        self._multi: dict[int, bytes] = {}
        # WebSocket frames, built once per message; their runs once per (start, end).
        self._ws_raw: list[bytes] = []
        self._ws_runs: dict[tuple[int, int], dict[str, Any]] = {}
        self.extend(msgs)

    def extend(self, msgs: list[Message]) -> None:
        """Add messages published since (cached frames and positions are redone)."""
        self.msgs.extend(msgs)
        self.keys.extend(self.key(m.id) for m in msgs)
        self._frames.clear()
        self._chunks.clear()
        self._starts.clear()

    def start_after(self, cursor: str | None) -> int:
        """Index of the first message after `cursor` (None: all of them)."""
        start = self._starts.get(cursor)
        if start is None:
            start = 0 if cursor is None else bisect_right(self.keys, self.key(cursor))
            self._starts[cursor] = start
        return start

    def _encoded_for(self, kind: StreamKind) -> list[bytes | str]:
        done = self._encoded.setdefault(kind, [])
        done.extend(_encode(kind, msg) for msg in self.msgs[len(done) :])
        return done

    def frames(self, kind: StreamKind, start: int) -> list[dict[str, Any]]:
        """ASGI messages for messages[start:] (cached: most subscribers share a start)."""
        frames = self._frames.get((kind, start))
        if frames is None:
            frames = self._frames[(kind, start)] = self.frames_between(kind, start, len(self.msgs))
        return frames

    def chunk(self, kind: StreamKind, start: int) -> bytes:
        """An SSE stream's messages[start:] as one HTTP/1.1 chunk (cached as `frames`)."""
        chunk = self._chunks.get((kind, start))
        if chunk is None:
            body = self.frames(kind, start)[0]["body"]
            chunk = self._chunks[(kind, start)] = b"%x\r\n%b\r\n" % (len(body), body)
        return chunk

    def frames_between(self, kind: StreamKind, start: int, end: int) -> list[dict[str, Any]]:
        """ASGI messages for messages[start:end]."""
        return _as_asgi(kind, self._encoded_for(kind)[start:end])

    def ws_frames(self, start: int, end: int) -> dict[str, Any]:
        """messages[start:end] as whole WebSocket frames in one ASGI message, for a
        connection that writes them as they are (one write for the lot)."""
        run = self._ws_runs.get((start, end))
        if run is None:
            raw = self._ws_raw
            if len(raw) < end:
                texts = self._encoded_for(_WS)
                raw.extend(ws_text_frame(str(t)) for t in texts[len(raw) :])
            run = {"type": "websocket.send", FRAMES: b"".join(raw[start:end])}
            self._ws_runs[(start, end)] = run
        return run

    def multi_body(self, msg: Message) -> bytes:
        """A multiplexed stream's frame body for `msg`, encoded once."""
        body = self._multi.get(id(msg))
        if body is None:
            body = self._multi[id(msg)] = _multi_body(msg)
        return body


class _Tail:
    """The recent messages of one channel kept in memory, and the id just before them.

    `before` is the id of the newest message dropped from `msgs` (None: the channel had
    none before `msgs[0]`), so an empty tail still knows the channel's newest id.
    """

    __slots__ = ("before", "msgs")

    def __init__(self, before: str | None) -> None:
        self.msgs: deque[Message] = deque()
        self.before = before

    def newest(self) -> str | None:
        """The id of the newest message this tail knows of."""
        return self.msgs[-1].id if self.msgs else self.before


class _Pass:
    """One fan-out of a channel's batch over a snapshot of its subscribers, in chunks."""

    __slots__ = ("batch", "first_len", "index", "subs")

    def __init__(self, batch: Batch, subs: list[Subscriber]) -> None:
        self.batch = batch
        self.subs = subs
        self.index = 0
        self.first_len = len(batch.msgs)


async def _no_receive() -> dict[str, Any]:
    """The `receive` of an answer the hub writes: a response never reads."""
    return {"type": "http.disconnect"}


class WholeWrite(Protocol):
    """How a parked poll's answer is written whole on its connection (see DirectPoll)."""

    def write(self, answer: Answer) -> bool: ...

    def finish(self) -> None: ...


class DirectPoll:
    """A parked long poll that the hub answers itself when a publish can.

    The hub writes the answer from the publisher's step through the request's own ASGI
    `send`, started by hand as for streams: no wake-up of the poll's task comes before
    its bytes are on the wire. Polls parked at the same cursor with the same limit and
    codec (`key`) share one encoded answer: one Starlette Response sent on many
    connections, which holds because every send copies the header list before changing
    it (Starlette's MutableHeaders(scope=...), uvicorn, the HTTP/2 protocol). The poll's
    task then finds `answered` set and
    sends nothing; `pending` is the task that finishes a write the socket could not take
    at once, which it awaits.

    Args:
        after: the poll's cursor.
        limit: most messages in the answer.
        key: what else makes two polls' answers differ (the codec).
        build: the answer for the messages after `after`, as an ASGI app.
        scope: the request's ASGI scope.
        send: the request's ASGI `send`.
        whole: writes an answer on the request's connection in one go (False when it
            cannot: then the answer goes through `send`), and completes the request after
            (`finish`, once every poll of the publish has been written).
    """

    __slots__ = (
        "after",
        "answered",
        "build",
        "key",
        "limit",
        "pending",
        "scope",
        "send",
        "whole",
    )

    def __init__(
        self,
        after: str,
        limit: int,
        key: str,
        build: Callable[[list[Message]], Answer],
        scope: MutableMapping[str, Any],
        send: Send,
        whole: WholeWrite | None = None,
    ) -> None:
        self.after = after
        self.limit = limit
        self.key = key
        self.build = build
        self.scope = scope
        self.send = send
        self.whole = whole
        self.answered = False
        self.pending: asyncio.Task[None] | None = None

    def write(self, answer: Answer) -> bool:
        """Send `answer` now, or finish in a task if the socket is backed up; False when
        the send failed (the connection broke: nothing more can go on it). An answer
        written whole needs `finish` after."""
        self.answered = True
        whole, self.whole = self.whole, None
        try:
            if whole is not None and whole.write(answer):
                self.whole = whole  # for finish()
                return True
            coro = answer(self.scope, _no_receive, self.send)
            first = coro.send(None)
        except StopIteration:
            return True
        except Exception as exc:
            log.debug("a long poll's answer failed: %r", exc)
            return False
        self.pending = asyncio.get_running_loop().create_task(_finish(coro, first))
        return True

    def finish(self) -> None:
        """Complete the request of an answer `write` wrote whole (else nothing)."""
        whole, self.whole = self.whole, None
        if whole is not None:
            whole.finish()


async def _finish(coro: Coroutine[Any, Any, None], first: Any) -> None:
    with contextlib.suppress(Exception):  # as in DirectPoll.write: a broken connection
        await _resume(coro, first)


def _frame_size(frame: dict[str, Any]) -> int:
    body = frame.get("body") or frame.get("text") or frame.get(FRAMES) or frame.get("bytes") or b""
    return len(body)


class Hub:
    """Subscribers and long-poll waiters per channel, and a short tail of recent messages.

    Args:
        key: the store's order of message ids (`ChannelStore.cursor_key`).
    """

    def __init__(self, key: Callable[[str], int], remember: bool = True) -> None:
        self.key = key
        # Keep a tail of recent messages per channel to answer reads from memory. Only
        # when this hub sees every publish: not on a store shared by several nodes.
        self.remember = remember
        # The GIL switch intervals (while a fan-out runs, otherwise) the hub sets when it
        # serves a process (`tidings serve`): a fan-out keeps the loop busy, and the SQLite
        # writer thread must get the GIL between its statements (docs/decisions/0007); the
        # rest of the time a longer interval spares the loop the hand-overs (0024). None:
        # the process's interval is left alone.
        self.switch: tuple[float, float] | None = None
        self._fanning = False
        self._subs: dict[str, set[Subscriber]] = {}
        # Streams by the login session that opened them, and the futures parked long polls
        # of a session wait on beside their work (see close_session).
        self._sessions: dict[str, set[Subscriber]] = {}
        self._session_polls: dict[str, set[asyncio.Future[None]]] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        # The waiters among them that the hub may answer itself (see DirectPoll).
        self._direct: dict[asyncio.Future[None], DirectPoll] = {}
        # channel -> its recent messages, least recently published channel first.
        self._recent: dict[str, _Tail] = {}
        # Messages waiting for their channel's next fan-out pass, and passes under way.
        self._queue: dict[str, list[Message]] = {}
        self._passes: dict[str, _Pass] = {}
        self.delivered = 0
        self.published = 0
        self.cut = 0
        self.answered_directly = 0
        self.closing = False

    # -- registration -----------------------------------------------------------------

    def add(self, sub: Subscriber) -> None:
        """Register a subscriber on each of its channels."""
        for ch in sub.cursors:
            self._subs.setdefault(ch, set()).add(sub)
        if sub.session is not None:
            self._sessions.setdefault(sub.session, set()).add(sub)

    def remove(self, sub: Subscriber) -> None:
        """Unregister a subscriber (idempotent)."""
        for ch in sub.cursors:
            subs = self._subs.get(ch)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[ch]
        if sub.session is not None:
            same = self._sessions.get(sub.session)
            if same is not None:
                same.discard(sub)
                if not same:
                    del self._sessions[sub.session]

    def sessions(self) -> list[str]:
        """The login sessions that have open streams or parked long polls."""
        return list(self._sessions.keys() | self._session_polls.keys())

    def session_poll(self, session: str) -> asyncio.Future[None]:
        """A future resolved when `session` is closed; pass it to drop_session_poll after."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._session_polls.setdefault(session, set()).add(fut)
        return fut

    def drop_session_poll(self, session: str, fut: asyncio.Future[None]) -> None:
        polls = self._session_polls.get(session)
        if polls is not None:
            polls.discard(fut)
            if not polls:
                del self._session_polls[session]

    def close_session(self, session: str, reason: str) -> int:
        """End every stream and parked long poll of `session` (revoked or expired)."""
        subs = list(self._sessions.get(session, ()))
        for sub in subs:
            sub.close(reason, abort=False)
        polls = self._session_polls.pop(session, set())
        for fut in polls:
            if not fut.done():
                fut.set_result(None)
        return len(subs) + len(polls)

    def subscribers(self, channel: str | None = None) -> dict[str, int]:
        """Live subscribers by transport, for one channel or all."""
        counts: dict[str, int] = {_SSE: 0, _WS: 0, "longpoll": 0}
        chans: Iterable[str] = self._subs if channel is None else (channel,)
        seen: set[int] = set()
        for ch in chans:
            for sub in self._subs.get(ch, ()):
                if id(sub) in seen:
                    continue
                seen.add(id(sub))
                counts[_WS if sub.kind is _WS else _SSE] += 1
        wchans: Iterable[str] = self._waiters if channel is None else (channel,)
        counts["longpoll"] = sum(len(self._waiters.get(ch, ())) for ch in wchans)
        return counts

    # -- publish ----------------------------------------------------------------------

    def publish(self, msg: Message, prev_id: str | None, keep: int = RECENT) -> None:
        """Take one durable message: wake the channel's long polls now, and queue it for
        the channel's streams.

        `keep` is the channel's retention by count: the remembered tail never holds a
        message the store has already dropped. Streams get it from the next fan-out pass,
        so messages published back to back reach each subscriber in one write.
        """
        self.published += 1
        self._remember(msg, prev_id, min(keep, RECENT))
        waiters = self._waiters.pop(msg.channel, None)
        if waiters:
            self._wake(msg.channel, waiters)
        if msg.channel not in self._subs:
            return
        if self.switch is not None and not self._fanning:
            self._fanning = True
            sys.setswitchinterval(self.switch[0])
        queued = self._queue.get(msg.channel)
        if queued is not None:
            queued.append(msg)
            return
        self._queue[msg.channel] = [msg]
        if msg.channel not in self._passes:
            asyncio.get_running_loop().call_soon(self._fan_out, msg.channel)

    def _wake(self, channel: str, waiters: set[asyncio.Future[None]]) -> None:
        """Wake a channel's long polls; write the answers of those parked for it here.

        Direct answers come first, in one run, before any request is completed and any
        poll's task is woken: the last one's latency is the writes', not the tasks'.
        """
        direct = self._direct
        # One answer per (cursor, limit, codec); None when the tail cannot tell what
        # follows the cursor, and the poll's task reads it from the store.
        answers: dict[tuple[str, int, str], Answer | None] = {}
        written: list[DirectPoll] = []
        try:
            for fut in waiters:
                poll = direct.pop(fut, None)
                if poll is None or fut.done():
                    continue
                shared = (poll.after, poll.limit, poll.key)
                if shared in answers:
                    answer = answers[shared]
                else:
                    answer = answers[shared] = self._direct_answer(channel, poll)
                if answer is not None and poll.write(answer):
                    self.answered_directly += 1
                    written.append(poll)
        finally:
            # Every answered request completes and every poll wakes, whatever failed
            # above: the publish goes on to the streams.
            for poll in written:
                try:
                    poll.finish()
                except Exception:
                    log.exception("completing a long poll answered on %s failed", channel)
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _direct_answer(self, channel: str, poll: DirectPoll) -> Answer | None:
        """The answer polls like `poll` share; None leaves them to their tasks (the tail
        cannot tell what follows their cursor, or the answer could not be built)."""
        msgs = self.recent_after(channel, poll.after, poll.limit)
        if not msgs:
            return None
        try:
            return poll.build(msgs)
        except Exception:
            log.exception("a long poll's answer on %s could not be built", channel)
            return None

    def _fan_out(self, channel: str) -> None:
        """Run (a chunk of) a fan-out pass; messages queued meanwhile join the batch.

        Never leaves a failed pass behind: with one in `_passes`, no publish would ever
        schedule the channel's fan-out again.
        """
        try:
            self._fan_out_chunk(channel)
        except Exception:
            log.exception("fan-out of %s failed: its streams are cut to resume", channel)
            self._passes.pop(channel, None)
            # Which of its messages reached whom is unknown: every stream of the channel
            # resumes from its own cursor (messages are durable), so nothing is lost.
            for sub in list(self._subs.get(channel, ())):
                sub.close("fan-out failed: reconnect with your last id to resume")
            if channel in self._queue:
                asyncio.get_running_loop().call_soon(self._fan_out, channel)
        if self._fanning and not self._passes and not self._queue and self.switch is not None:
            self._fanning = False
            sys.setswitchinterval(self.switch[1])

    def _fan_out_chunk(self, channel: str) -> None:
        newer = self._queue.pop(channel, None)
        p = self._passes.get(channel)
        if p is None:
            subs = self._subs.get(channel)
            if not newer or not subs:
                return
            p = self._passes[channel] = _Pass(Batch(channel, newer, self.key), list(subs))
        elif newer:
            p.batch.extend(newer)
        end = min(p.index + FANOUT_CHUNK, len(p.subs))
        for sub in p.subs[p.index : end]:
            try:
                sub.deliver_batch(p.batch)
            except Exception as exc:
                # This subscriber alone: the others of the chunk still get the batch.
                log.exception("delivery to a %s subscriber of %s failed", sub.kind, channel)
                sub.close(f"delivery failed ({type(exc).__name__}): reconnect to resume")
        p.index = end
        loop = asyncio.get_running_loop()
        if end < len(p.subs):
            # Let the loop breathe (publishes, new streams) before the next chunk.
            loop.call_soon(self._fan_out, channel)
            return
        del self._passes[channel]
        if len(p.batch.msgs) > p.first_len:
            # Messages that joined mid-pass have not reached the first chunks yet.
            late = p.batch.msgs[p.first_len :]
            self._queue[channel] = late + self._queue.get(channel, [])
        if channel in self._queue:
            loop.call_soon(self._fan_out, channel)

    def _remember(self, msg: Message, prev_id: str | None, keep: int) -> None:
        if not self.remember:
            return
        recent = self._recent
        tail = recent.pop(msg.channel, None)  # re-inserted last: most recently published
        # tail.newest(), written out: this runs on every publish.
        if tail is None or (tail.msgs[-1].id if tail.msgs else tail.before) != prev_id:
            # First message seen here, or a gap (another writer): start the tail afresh.
            tail = _Tail(prev_id)
            if len(recent) >= RECENT_CHANNELS:
                del recent[next(iter(recent))]
        recent[msg.channel] = tail
        msgs = tail.msgs
        msgs.append(msg)
        while len(msgs) > keep:
            tail.before = msgs.popleft().id

    def recent_after(self, channel: str, after: str, limit: int) -> list[Message] | None:
        """Messages after `after` from the tail kept in memory; None when it cannot tell."""
        tail = self._recent.get(channel)
        if tail is None or after == "0":
            return None
        key = self.key
        try:
            pos = key(after)
        except ValueError:
            return None
        start = tail.before
        newest = tail.newest()
        if newest is None:
            return None
        if (start is not None and pos < key(start)) or pos > key(newest):
            return None
        out = [m for m in tail.msgs if key(m.id) > pos]
        return out[:limit]

    def watched(self) -> set[str]:
        """Channels with live streams or parked long polls here (what a relay follows)."""
        return self._subs.keys() | self._waiters.keys()

    def forget(self, channel: str) -> None:
        """Drop the remembered tail of a channel (deleted, or trimmed by retention)."""
        self._recent.pop(channel, None)

    def last_id(self, channel: str) -> tuple[bool, str | None]:
        """(known, id of the channel's newest message) from what this hub has seen."""
        tail = self._recent.get(channel)
        if tail is None:
            return False, None
        return True, tail.newest()

    def note_last(self, channel: str, last_id: str | None) -> None:
        """Remember the store's newest id of a channel, so later reads can skip the store."""
        if not self.remember:
            return
        if channel not in self._recent:
            if len(self._recent) >= RECENT_CHANNELS:
                del self._recent[next(iter(self._recent))]
            self._recent[channel] = _Tail(last_id)

    # -- long polls -------------------------------------------------------------------

    def waiter(self, channel: str) -> asyncio.Future[None]:
        """A future resolved by the next publish on `channel` (or by shutdown)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(channel, set()).add(fut)
        return fut

    def answer_directly(self, fut: asyncio.Future[None], poll: DirectPoll) -> None:
        """Let the publish that resolves `fut` write `poll`'s answer itself. Only from
        the moment the poll's task does nothing but wait for `fut` until it wakes: it must
        then send nothing once `poll.answered` is set."""
        if not fut.done():
            self._direct[fut] = poll

    def drop_waiter(self, channel: str, fut: asyncio.Future[None]) -> None:
        """Forget a waiter that timed out."""
        self._direct.pop(fut, None)
        waiters = self._waiters.get(channel)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                del self._waiters[channel]

    # -- heartbeats and shutdown ------------------------------------------------------

    def heartbeat(self) -> None:
        """Write a keep-alive to every idle stream (skipped for backed-up ones)."""
        sse = {"type": "http.response.body", "body": HEARTBEAT, "more_body": True}
        for sub in {s for subs in self._subs.values() for s in subs}:
            if sub.catching_up or sub.drainer is not None or sub.kind is _WS:
                continue
            sub.write(sse)

    def close_channel(self, channel: str, reason: str) -> None:
        """End every stream and answer every long poll of a channel (it was deleted)."""
        for sub in list(self._subs.get(channel, ())):
            sub.close(reason, abort=False)
        for fut in self._waiters.pop(channel, ()):
            self._direct.pop(fut, None)  # its task reads the channel's end and answers
            if not fut.done():
                fut.set_result(None)
        self._queue.pop(channel, None)
        self.forget(channel)

    def close_all(self, reason: str) -> None:
        """Shutdown: end every stream and answer every parked long poll."""
        self.closing = True
        for sub in list({s for subs in self._subs.values() for s in subs}):
            sub.close(reason, abort=False)
        for waiters in self._waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        self._waiters.clear()
        self._direct.clear()
