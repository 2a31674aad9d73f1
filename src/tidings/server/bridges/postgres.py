"""The PostgreSQL outbox bridge, on asyncpg (`tidings[postgres]`).

    postgresql://app@127.0.0.1:5432/app?table=tidings_outbox&channel={channel}

The application inserts a row into the outbox table inside its own transaction, so an
event exists exactly when its data change committed (`outbox_ddl` is the table; `tidings
bridges outbox-ddl` prints it). tidings claims rows in id order with `SELECT … FOR UPDATE
SKIP LOCKED` in a transaction, publishes each, and deletes them in that same
transaction — after the publishes committed. A crash between a publish and the delete's
commit leaves the row to be claimed again; its id (with its insert time) is its
idempotency key, so the message is not published twice.

Several tidings nodes may share one outbox. By default (`order=strict`) a claimer first
takes a transaction-scoped advisory lock on the table, so one node drains at a time and
each channel's messages keep the table's order; `order=none` lets the nodes claim
disjoint batches at once (SKIP LOCKED alone): more throughput, no order across batches.

A trigger on the table NOTIFYs a channel named after it on every insert statement; the
bridge LISTENs and claims at once, and polls every `poll` seconds (default 2) in case a
notification was missed (a reconnect, a pooler that drops LISTEN). A row whose channel,
event or data cannot be published is recorded on the errors channel (`bridge.errors`) and
deleted. The lag shown is the table's row count (counted after a claim, at most every
few seconds while a backlog drains).

With `job=TYPE` each row's `data` is submitted as a job of that type instead (its
`channel` and `event` columns are not read), keyed by the row's id and insert time, and
the row deleted once the job is committed: the job exists exactly when the application's
transaction committed. No reply is sent (a table has no one to answer): the application
follows the job through tidings' job API if it needs the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import zlib
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from tidings.server.bridges.base import (
    COMMON_PARAMS,
    Bridge,
    BridgeConfigError,
    BridgeSpec,
    Outcome,
    Template,
    common_spec,
    float_param,
    int_param,
    split_url,
)
from tidings.server.bridges.outbound import FORWARD_PARAMS
from tidings.server.channels import ChannelService

if TYPE_CHECKING:
    import asyncpg

    from tidings.server.jobs import JobService

__all__ = ["BRIDGE", "DEFAULT_TABLE", "OutboxBridge", "outbox_ddl", "parse", "row_bus_id"]

DEFAULT_TABLE = "tidings_outbox"
FIELDS = frozenset({"channel", "event", "id"})
PARAMS = COMMON_PARAMS | {"table", "batch", "poll", "order"}
# A table name: an SQL identifier, optionally schema-qualified, never quoted by the user.
_TABLE = re.compile(r"^(?:[a-z_][a-z0-9_]{0,62}\.)?[a-z_][a-z0-9_]{0,62}$")
CONNECT_TIMEOUT = 10.0
# The lag (rows waiting) is counted at most every LAG_INTERVAL seconds while a backlog
# drains, and up to LAG_COUNT_CAP rows.
LAG_INTERVAL = 5.0
LAG_COUNT_CAP = 1_000_000


def check_table(table: str) -> str:
    """`table` when it is a lower-case SQL name (`outbox`, `app.outbox`), else an error."""
    if not _TABLE.match(table):
        raise BridgeConfigError(
            f"table={table!r}: use a lower-case SQL name of a-z 0-9 _ (up to 63), optionally "
            "schema.name"
        )
    return table


def row_bus_id(table: str, row_id: int, created_at: datetime) -> str:
    """An outbox row's bus id (its idempotency key's source): its table, id and insert
    time, so that ids a table reuses (after a TRUNCATE … RESTART IDENTITY) are new keys."""
    return f"{table}:{row_id}:{created_at.isoformat()}"


def _notify_channel(table: str) -> str:
    """The LISTEN/NOTIFY channel of an outbox table: its name, `.` made `_`."""
    return table.replace(".", "_")


def outbox_ddl(table: str = DEFAULT_TABLE) -> str:
    """The outbox table, and the trigger that wakes tidings on every insert statement."""
    check_table(table)
    notify = _notify_channel(table)
    func = f"{table}_notify"
    return f"""\
-- The outbox tidings publishes from: insert a row in the transaction that changes your data.
CREATE TABLE IF NOT EXISTS {table} (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel    text NOT NULL,            -- the tidings channel (the bridge's channel= template)
    event      text,                     -- the event name, or NULL
    data       jsonb NOT NULL,           -- the message's data
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- Wakes the bridge at commit (one notification per statement, not per row).
CREATE OR REPLACE FUNCTION {func}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{notify}', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS {notify}_notify ON {table};
CREATE TRIGGER {notify}_notify AFTER INSERT ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION {func}();
"""


def parse(url: str, max_bytes: int, max_depth: int) -> BridgeSpec:
    """A `postgresql://` or `postgres://` bridge URL, checked."""
    connect_url, params = split_url(url, PARAMS)
    forwarding = split_url(url, FORWARD_PARAMS)[1]
    if forwarding:
        raise BridgeConfigError(
            f"{next(iter(forwarding))}= forwards channels to a bus: the postgres bridge only "
            "drains an outbox; forward from an amqp:// or nats:// bridge"
        )
    table = check_table(params.get("table") or DEFAULT_TABLE)
    spec = common_spec(
        "postgres",
        url,
        connect_url,
        params,
        FIELDS,
        default_name=f"outbox.{table}"[:64],
        default_channel="{channel}",
        max_bytes=max_bytes,
        max_depth=max_depth,
    )
    if spec.event is None and spec.job is None:
        # By default a row's own event column names its event.
        spec = replace(spec, event=Template("{event}", FIELDS, "event"))
    spec.extra["table"] = table
    spec.extra["batch"] = int_param(params, "batch", 100, 1, 10_000)
    spec.extra["poll"] = float_param(params, "poll", 2.0, 0.05, 3600.0)
    order = params.get("order") or "strict"
    if order not in ("strict", "none"):
        raise BridgeConfigError(
            f"order={order!r}: use strict (one node claims at a time: table order kept) or "
            "none (nodes claim batches at once)"
        )
    spec.extra["order"] = order
    return spec


class OutboxBridge(Bridge):
    """Drains one outbox table: claim, publish (or submit), delete, in one transaction
    per batch."""

    kind: ClassVar[str] = "postgres"

    def __init__(
        self, spec: BridgeSpec, channels: ChannelService, jobs: JobService | None = None
    ) -> None:
        super().__init__(spec, channels, jobs)
        self.table: str = spec.extra["table"]
        self.batch: int = spec.extra["batch"]
        self.poll: float = spec.extra["poll"]
        self.strict = spec.extra["order"] == "strict"
        # The advisory lock's key: the table's name, hashed to 31 bits (the same on
        # every node).
        self.lock_key = zlib.crc32(f"tidings.outbox:{self.table}".encode()) & 0x7FFFFFFF
        self._wake = asyncio.Event()
        t = self.table
        self._claim = (
            f"SELECT id, channel, event, data::text AS data, created_at FROM {t} "
            "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
        )
        self._delete = f"DELETE FROM {t} WHERE id = ANY($1::bigint[])"
        self._count = f"SELECT count(*) FROM (SELECT 1 FROM {t} LIMIT $1) AS waiting"
        self._counted = 0.0

    async def session(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.spec.connect_url, timeout=CONNECT_TIMEOUT)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        try:
            await conn.add_listener(_notify_channel(self.table), self._notified)
            # The table must exist: a clear error (and retries) rather than a crash loop
            # with SQL in it.
            if await conn.fetchval("SELECT to_regclass($1)", self.table) is None:
                raise BridgeConfigError(
                    f"table {self.table} does not exist in {self.spec.shown_url}: create it "
                    "with the DDL `tidings bridges outbox-ddl` prints"
                )
            self.connected()
            while not self.stopping:
                if lost.is_set() or conn.is_closed():
                    raise ConnectionError("the connection to PostgreSQL was lost")
                self._wake.clear()
                claimed = await self._drain_once(conn)
                if claimed == self.batch:
                    continue  # more may be waiting: no sleep
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2.0)

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _drain_once(self, conn: asyncpg.Connection) -> int:
        """Claim one batch, publish it, delete it: one transaction. Returns the rows
        claimed (0 when another node holds the claim, under order=strict)."""
        async with conn.transaction():
            if self.strict and not await conn.fetchval(
                "SELECT pg_try_advisory_xact_lock($1)", self.lock_key
            ):
                return 0
            rows = await conn.fetch(self._claim, self.batch)
            done: list[int] = []
            for row in rows:
                await self._publish_row(row)
                done.append(row["id"])
            if done:
                await conn.execute(self._delete, done)
        # Committed: the rows are gone from the outbox for good.
        self.stats.acknowledged += len(done)
        now = time.monotonic()
        if len(rows) < self.batch or now - self._counted > LAG_INTERVAL:
            # Counted when the table was just drained (cheap) or every few seconds, and
            # only so far: counting a long backlog scans it.
            self._counted = now
            self.stats.lag = await conn.fetchval(self._count, LAG_COUNT_CAP)
        return len(rows)

    async def _publish_row(self, row: Any) -> None:
        values = {
            "channel": row["channel"] or "",
            "event": row["event"] or "",
            "id": str(row["id"]),
        }
        bus_id = row_bus_id(self.table, row["id"], row["created_at"])
        data: str = row["data"]
        delivery = await self.deliver(values, data.encode(), bus_id)
        if delivery.outcome is Outcome.DEAD:
            await self.record_dead(values, data, bus_id, delivery.reason)


BRIDGE = OutboxBridge
