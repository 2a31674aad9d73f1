"""The store interface: what the services need from any storage engine.

A `Store` is what a store URL opens: its life cycle (start, close, ping) and six parts,
each its own object with its own small interface — `channels` (ChannelStore: durable
ordered logs with retention and idempotency keys), `jobs` (JobStore), `auth`
(AuthStore), `workers` (WorkerStore: the workers seen lately), `schedules`
(ScheduleStore: jobs submitted at times a cron expression or an interval names) and
`forwards` (ForwardStore: which node forwards a bridge's channels to its bus, and how
far each channel has been forwarded). A store
knows nothing of HTTP or subscribers; the hub does fan-out. Message ids are opaque strings
to everyone but the store, which also defines their order (`cursor_key`).

Every engine is a package built the same way (memory/, sqlite/, redis/): `core` holds
what its parts share, `channels`, `jobs`, `auth` and `schedules` implement one part each, and the
package's Store builds them; helpers every engine shares are in `stores/common.py`.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import msgspec

from tidings.protocol.errors import Conflict, NotFound, TidingsError
from tidings.protocol.jobs import Job, QueueLimits
from tidings.protocol.messages import RESET_AHEAD, RESET_BEHIND, Message
from tidings.protocol.schedules import Schedule
from tidings.server.principals import Credential, User
from tidings.server.stores.limits import LimitCounters

__all__ = [
    "AuthStore",
    "ChannelInfo",
    "ChannelStore",
    "ForwardStore",
    "JobChange",
    "JobCursor",
    "JobPage",
    "JobStep",
    "JobStore",
    "Published",
    "ReadResult",
    "Retention",
    "ScheduleStore",
    "StepResult",
    "Store",
    "Transition",
    "UniqueHeld",
    "WorkerSeen",
    "WorkerStore",
    "apply_steps",
    "check_unique",
    "claims_unique",
    "forward_cursors_full",
    "is_reset",
    "job_event_data",
    "releases_unique",
    "reset_reason",
    "settle_mark_due",
    "settle_stamp",
    "unique_held",
]


class Retention(msgspec.Struct, frozen=True):
    """How much history a channel keeps: at most `max_messages`, none older than `max_age` s."""

    max_messages: int
    max_age: float


class ChannelInfo(msgspec.Struct, frozen=True):
    """A channel's stored state."""

    name: str
    first_id: str | None
    last_id: str | None
    messages: int
    created: float
    retention: Retention
    # True when the retention above is the channel's own, not the server default.
    custom_retention: bool = False


class Published(msgspec.Struct, frozen=True):
    """The outcome of one publish.

    `prev_id` is the channel's last id before this message (None for a channel's first
    message); `duplicate` is True when an idempotency key matched an earlier publish, in
    which case `message` is that earlier message and nothing new was written. `keep` is
    the channel's retention by count, so caches of recent messages can honour it.
    """

    message: Message
    prev_id: str | None
    keep: int
    duplicate: bool = False


class ReadResult(msgspec.Struct, frozen=True):
    """Messages after a cursor, and whether history between the cursor and them is gone."""

    messages: list[Message]
    reset: bool
    first_id: str | None
    last_id: str | None


def is_reset(after: int, first: int, last: int) -> bool:
    """Whether a cursor (`after`, 0 = from the oldest) misses history.

    `first` is the oldest retained sequence number (last + 1 when the channel is empty)
    and `last` the newest ever assigned (0 when none). A cursor older than first - 1 lost
    messages to retention; a cursor past `last` belongs to another life of the channel
    (deleted and recreated) — both are gaps the subscriber must be told about.
    """
    if after == 0:
        return False
    return after < first - 1 or after > last


def reset_reason(after: int, last: int) -> str:
    """Why a cursor `is_reset` misses history: it is ahead of the newest sequence number
    ever assigned (`last`, 0 when none: the channel was deleted or recreated), or older
    than the retained history."""
    return RESET_AHEAD if after > last else RESET_BEHIND


class ChannelStore(abc.ABC):
    """Durable channels. Every method is safe to call concurrently from one event loop."""

    def __init__(self, default_retention: Retention) -> None:
        self.default_retention = default_retention

    @abc.abstractmethod
    def cursor_key(self, message_id: str) -> int:
        """Order of a message id within its channel; ValueError when malformed."""

    @abc.abstractmethod
    async def publish(
        self,
        channel: str,
        data: Any,
        event: str | None = None,
        idempotency_key: str | None = None,
    ) -> Published:
        """Append one message; returns only once it is durable."""

    @abc.abstractmethod
    async def read(self, channel: str, after: str, limit: int) -> ReadResult:
        """Up to `limit` messages after cursor `after` ("0" = from the oldest retained)."""

    @abc.abstractmethod
    async def info(self, channel: str) -> ChannelInfo | None:
        """A channel's state, or None when it does not exist."""

    @abc.abstractmethod
    async def list_channels(
        self, prefix: str = "", limit: int = 1000, after: str = ""
    ) -> list[ChannelInfo]:
        """Up to `limit` channels whose names start with `prefix` and sort after `after`
        (a name: the last of the page before), by name."""

    @abc.abstractmethod
    async def delete(self, channel: str) -> bool:
        """Delete a channel and its history; False when it did not exist."""

    @abc.abstractmethod
    async def set_retention(self, channel: str, retention: Retention | None) -> ChannelInfo:
        """Give a channel its own retention (None: back to the server default)."""

    @abc.abstractmethod
    async def sweep(self, now: float) -> list[str]:
        """Drop messages older than their channel's max age and expired idempotency keys.

        Job channels (`job.*`) are left out: they live and go with their job (sweep_jobs),
        and there is one per job — scanning them every few seconds would make this cost
        grow with the jobs kept, not with the channels people publish to.

        Returns the names of the channels that lost messages.
        """


# -- jobs ---------------------------------------------------------------------------------

# A transition computes a job's next state inside the store's atomic section: it gets the
# job as stored and the store's clock, and returns the new job and the name of the event
# to publish on the job's channel (None: publish nothing). It raises a TidingsError
# (Conflict, NotFound) to refuse, leaving everything unchanged. It must be pure and quick.
Transition = Callable[[Job, float], tuple[Job, str | None]]


# One step of `transition_jobs`: (job id, transition, durable).
JobStep = tuple[str, Transition, bool]


class JobChange(msgspec.Struct, frozen=True):
    """A job after a transition, and the message published on its channel (if any).
    `dependents` is True when the change ended the job (succeeded, failed or cancelled)
    and jobs were submitted `after` it: the service settles them (`JobStore.dependents`).
    `marked` is the stamp of the settle mark the change wrote (`JobStore.settle_marks`),
    None when it wrote none: whoever settles what the mark names clears it then."""

    job: Job
    published: Published | None
    dependents: bool = False
    marked: float | None = None


class JobCursor(msgspec.Struct, frozen=True):
    """Where a page of jobs ends: jobs older than this (`created_at`, then `id`) follow.
    On the wire it is the text `"<created_at>~<id>"` (`to_text` / `from_text`)."""

    created_at: float
    id: str

    def to_text(self) -> str:
        """The cursor as a `next` says it."""
        return f"{self.created_at!r}~{self.id}"

    @classmethod
    def from_text(cls, text: str) -> JobCursor:
        """The cursor a `next` said; ValueError when `text` is not one."""
        created, sep, job_id = text.partition("~")
        try:
            at = float(created) if sep and job_id and len(text) <= 200 else math.nan
        except ValueError:
            at = math.nan
        if not math.isfinite(at):
            raise ValueError(f"{text[:64]!r} is not a job list cursor: send back a `next`")
        return cls(at, job_id)

    @classmethod
    def of(cls, job: Job) -> JobCursor:
        """The cursor right after `job`: the jobs older than it follow."""
        return cls(job.created_at, job.id)

    def key(self) -> tuple[float, str]:
        """What jobs are ordered by: a job precedes the cursor when its own is smaller."""
        return (self.created_at, self.id)


class JobPage(msgspec.Struct, frozen=True):
    """A page of `list_jobs`, and where the next one starts (None: there is none)."""

    jobs: list[Job]
    next: JobCursor | None


class JobStore(abc.ABC):
    """Jobs, with atomic transitions that also append to the job's channel.

    The state machine lives in tidings.server.transitions; stores only guarantee that a
    transition and its channel message are applied together, once, or not at all.
    """

    @abc.abstractmethod
    async def submit_job(self, job: Job, event: str) -> tuple[JobChange, bool]:
        """Insert a job (publishing `event`); with an idempotency key already used, return
        the existing job and False instead; and so with a `unique_key` that a waiting,
        queued or running job of the same type holds (checked in the same atomic step as the insert:
        of concurrent submits of one type and key, one inserts)."""

    @abc.abstractmethod
    async def submit_jobs(self, jobs: list[Job], events: list[str]) -> list[JobChange]:
        """Insert new jobs (publishing each its event), all in one atomic unit: all are
        stored or none is. Conflict (`unique_held`), storing none, when one would take a
        `unique_key` that a job holds (one of the batch included); the jobs carry no
        idempotency keys."""

    @abc.abstractmethod
    async def get_job(self, job_id: str) -> Job | None:
        """One job, or None."""

    @abc.abstractmethod
    async def get_jobs(self, job_ids: list[str]) -> dict[str, Job]:
        """The jobs of `job_ids` that exist, by id (one read)."""

    @abc.abstractmethod
    async def dependents(self, job_id: str) -> list[str]:
        """The ids of the jobs submitted `after` job `job_id` (whatever their status; some
        may be gone). The index behind it is written in the submit's atomic step, and
        only for a parent that exists then (a child whose parent is gone is marked to be
        settled instead: see `settle_marks`), so that a job that ends after a child's
        submit committed answers it; it goes when the parent is swept."""

    @abc.abstractmethod
    async def settle_marks(self, limit: int) -> list[tuple[str, float]]:
        """Up to `limit` settle marks, (job id, stamp), the oldest stamp first.

        A store writes a mark, stamped with the job's `updated_at` (`settle_stamp`), in the
        same atomic step as a change that:

        * ends a job that has dependents (the change says `dependents`): they are to be
          settled;
        * makes a job `waiting` (a submit, a retry) while one of its parents has already
          ended or is gone: the job itself is to be settled (no parent's end will come to
          settle it).

        A mark stays until `clear_settle_marks` clears it, after the settling it asks for:
        what a node stopped between a change and its follow-up leaves undone is found
        here, however many jobs wait."""

    @abc.abstractmethod
    async def clear_settle_marks(self, marks: list[tuple[str, float]]) -> None:
        """Remove each mark (job id, stamp) whose stamp is still the one given (a mark
        written again since stays). Need not be durable: a mark lost to a crash is only
        settled again."""

    @abc.abstractmethod
    async def list_jobs(
        self,
        status: str | None,
        type_: str | None,
        limit: int,
        before: JobCursor | None = None,
    ) -> JobPage:
        """Jobs, newest first (by `created_at`, then `id`), filtered by status and type,
        older than `before` when given. A store may look at a bounded number of jobs per
        call and answer fewer than `limit` with a `next` cursor to go on from; `next` is
        None only when no older job matches."""

    @abc.abstractmethod
    async def queue_counts(self) -> dict[str, dict[str, int]]:
        """Number of jobs per type and status."""

    @abc.abstractmethod
    async def transition_job(self, job_id: str, fn: Transition, durable: bool = True) -> JobChange:
        """Apply `fn` to one job atomically; NotFound when there is no such job.

        A change that makes a job with a `unique_key` hold it again (a retry) while
        another waiting, queued or running job of its type holds that key is refused with
        Conflict (`unique_held`), and so is such a step of `transition_jobs`.

        `durable=False` (heartbeats, give-backs) lets a store skip the flush to stable
        storage for this change alone: losing it to a power cut only replays work, which
        at-least-once delivery allows. Leases and expiries are always such changes.
        """

    @abc.abstractmethod
    async def transition_jobs(self, steps: list[JobStep]) -> list[JobChange | TidingsError]:
        """Apply each `(job_id, fn, durable)` in order, all in one atomic unit of the store
        (one transaction), each seeing the jobs as the steps before it left them.

        A refused step — `fn` raised a TidingsError, or there is no such job (NotFound) —
        changes nothing and its error takes its place in the answer; the other steps still
        apply. The unit skips the flush to stable storage only when no step is durable.
        """

    @abc.abstractmethod
    async def lease_jobs(
        self, types: list[str] | None, max_jobs: int, now: float, fn: Transition
    ) -> list[JobChange]:
        """Apply `fn` to up to `max_jobs` queued jobs of `types` whose `run_at` has come,
        highest priority first, then oldest `run_at` — atomically, each job to one caller.

        A job of a type with limits (`set_queue_limits`) is leased only while its type's
        concurrency, its group's and its rate let it go (stores.limits.Allowance), checked
        in the same atomic step, so leases never exceed them, across nodes; the others
        stay queued. A store looks at a bounded number of due jobs per type for jobs of
        groups not at their limit."""

    @abc.abstractmethod
    async def set_queue_limits(self, type_: str, limits: QueueLimits | None) -> None:
        """Set the limits of a job type (None: lift them), seen by every node sharing the
        store; its rate state is kept."""

    @abc.abstractmethod
    async def queue_limits(self) -> dict[str, QueueLimits]:
        """The limits of every job type that has some."""

    @abc.abstractmethod
    async def limit_counters(
        self, limits: dict[str, QueueLimits], now: float
    ) -> dict[str, LimitCounters]:
        """The counters of each type of `limits` (as `queue_limits` answered), for telling
        what its jobs wait on (stores.limits.LimitCounters)."""

    @abc.abstractmethod
    async def expire_jobs(self, now: float, fn: Transition) -> list[JobChange]:
        """Apply `fn` to every running job whose lease ended before `now`, atomically."""

    @abc.abstractmethod
    async def next_run_at(self) -> float | None:
        """The earliest `run_at` of a queued job, or None."""

    @abc.abstractmethod
    async def sweep_jobs(self, finished_before: float) -> list[str]:
        """Delete jobs that ended before the given time, with their channels; their ids."""

    @abc.abstractmethod
    async def mark_served(self, types: list[str], now: float) -> None:
        """Record that a worker asked for jobs of `types` at `now` (a mark never moves back;
        marks a day old may be forgotten, and past `common.SERVED_MARKS` types the oldest
        are). Seen by every node sharing the store."""

    @abc.abstractmethod
    async def served_at(self, types: list[str]) -> float | None:
        """The latest mark of any of `types`, or None when none has one."""


def settle_stamp(job: Job) -> float:
    """The stamp of a settle mark a change of `job` writes (`JobStore.settle_marks`)."""
    return job.updated_at


def settle_mark_due(old: Job | None, new: Job, ended: dict[str, bool]) -> bool:
    """Whether a change from `old` (None: a submit) to `new` marks `new` itself to be
    settled: it becomes waiting while one of its parents has ended or is gone (`ended`:
    for each parent that exists, as the store holds it in the change's atomic step,
    whether it has ended)."""
    if new.status != "waiting" or (old is not None and old.status == "waiting"):
        return False
    return any(ended.get(parent, True) for parent in new.after)


# What a step of `transition_jobs` computed: (job before, job after, event), or its refusal.
StepResult = tuple[Job, Job, str | None] | TidingsError


def apply_steps(
    steps: list[JobStep],
    jobs: dict[str, Job],
    now: float,
    check: Callable[[Job, Job], None] | None = None,
) -> list[StepResult]:
    """Compute each step's transition in order, for any store's `transition_jobs`.

    `jobs` holds the jobs as stored (by id) and is updated in place, so each step sees the
    steps before it. A refused step — its transition raised a TidingsError, or there is no
    such job (NotFound), or `check(job, new)` raised one (a store's own rule, such as a
    unique key held) — takes its place in the answer as that error and changes nothing.
    """
    out: list[StepResult] = []
    for job_id, fn, _durable in steps:
        try:
            job = jobs.get(job_id)
            if job is None:
                raise NotFound(f"no job {job_id!r}")
            new, event = fn(job, now)
            if check is not None:
                check(job, new)
        except TidingsError as exc:
            out.append(exc)
            continue
        jobs[job_id] = new
        out.append((job, new, event))
    return out


def claims_unique(old: Job | None, new: Job) -> bool:
    """True when `new` takes its `unique_key`: it has one and becomes waiting, queued or
    running (`Job.holds_unique`) from no job (a submit) or from a state that did not hold
    it (a retry)."""
    return new.holds_unique and (old is None or not old.holds_unique)


def releases_unique(old: Job | None, new: Job) -> bool:
    """True when `new` lets go of the `unique_key` `old` held."""
    return old is not None and old.holds_unique and not new.holds_unique


def check_unique(
    claimed: dict[tuple[str, str], str],
    old: Job | None,
    new: Job,
    holder_of: Callable[[Job], str | None],
) -> None:
    """UniqueHeld, before anything is written, when `new` would take a unique key another
    job holds: one an earlier step of the same batch took (`claimed`, updated here) or
    the store's holder (`holder_of(new)`: the id of the waiting, queued or running job with the
    key, or None)."""
    if not claims_unique(old, new):
        return
    held = (new.type, new.unique_key or "")
    holder = claimed.get(held) or holder_of(new)
    if holder is not None and holder != new.id:
        raise unique_held(new, holder)
    claimed[held] = new.id


class UniqueHeld(Conflict):
    """A change refused because it would make a job hold its unique key while job
    `holder` does (the message names that job: the caller hides it from whoever may not
    follow it)."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


def unique_held(job: Job, holder: str) -> UniqueHeld:
    """The refusal of a change that would make `job` hold its unique key while job
    `holder` does."""
    return UniqueHeld(
        f"job {holder} of type {job.type!r} holds unique key {job.unique_key!r} while it is "
        f"waiting, queued or running: job {job.id} can be retried once that one has ended",
        holder,
    )


def job_event_data(job: Job) -> dict[str, Any]:
    """The data of a job-channel message: the public job without its payload, `errors`
    and the traceback (`Job.event_wire`)."""
    data: dict[str, Any] = msgspec.to_builtins(job.event_wire())
    return data


# -- principals ---------------------------------------------------------------------------


class AuthStore(abc.ABC):
    """Users and credentials (sessions, API tokens, revoked JWT ids).

    Credentials are keyed by the SHA-256 of their secret: the store never sees a secret.
    Every node sharing a store sees the same users and sessions.
    """

    @abc.abstractmethod
    async def put_user(self, user: User) -> None:
        """Create or replace a user (durable before it returns)."""

    @abc.abstractmethod
    async def get_user(self, name: str) -> User | None:
        """One user, or None."""

    @abc.abstractmethod
    async def list_users(self) -> list[User]:
        """All users, by name."""

    @abc.abstractmethod
    async def delete_user(self, name: str) -> bool:
        """Remove a user and every credential of theirs; False when there was none."""

    @abc.abstractmethod
    async def put_credential(self, cred: Credential) -> None:
        """Store a credential (durable before it returns); replaces one with the same key."""

    @abc.abstractmethod
    async def get_credential(self, key: str) -> Credential | None:
        """The credential with this key if it exists and has not expired."""

    @abc.abstractmethod
    async def list_credentials(self, user: str | None = None) -> list[Credential]:
        """Live credentials (of one user, or all), oldest first."""

    @abc.abstractmethod
    async def delete_credential(self, key: str) -> bool:
        """Remove one credential; False when there was none."""

    @abc.abstractmethod
    async def live_credentials(self, keys: list[str], now: float) -> set[str]:
        """Those of `keys` naming a credential that exists and is live at `now` (one query:
        the session sweep asks this for every session with open streams each second)."""

    @abc.abstractmethod
    async def sweep_credentials(self, now: float) -> int:
        """Delete credentials that expired before `now`; how many."""


class WorkerSeen(msgspec.Struct, frozen=True):
    """A worker process as its lease requests and heartbeats describe it.

    `id` is the worker's own (random, one per process run); `name` is for people
    (`host:pid` by default); `types` None means every type; `user` the principal it
    authenticates as (None: anonymous)."""

    id: str
    name: str
    types: list[str] | None
    concurrency: int | None
    user: str | None
    first_seen: float
    last_seen: float


class WorkerStore(abc.ABC):
    """The workers seen lately, seen by every node sharing the store."""

    @abc.abstractmethod
    async def record_worker(self, worker: WorkerSeen) -> None:
        """Insert or refresh a worker by `id`: a refresh keeps the first record's
        `first_seen`; `last_seen` never moves back. A record by another `user` than the
        one of an id seen within WORKER_WINDOW is ignored (ids are not secret: jobs show
        them). The store keeps a bounded number of workers, forgetting the least
        recently seen first."""

    @abc.abstractmethod
    async def list_workers(self, since: float) -> list[WorkerSeen]:
        """Workers last seen at or after `since`, most recently seen first; records
        seen before `since` may be forgotten."""


class ScheduleStore(abc.ABC):
    """Schedules by name, and which are due, seen by every node sharing the store.

    A firing is submit-then-advance: a node submits the slot's job (its id names the
    slot, so a repeat is idempotent), then `advance_schedule` moves the schedule to its
    next slot only if it is still exactly as the node read it — of several nodes firing
    one slot, one advances it; a crash between the two fires the same slot again.
    A store keeps at most `cap` schedules.
    """

    cap: int

    @abc.abstractmethod
    async def put_schedule(
        self, schedule: Schedule, read: Schedule | None, owner_cap: int | None = None
    ) -> bool:
        """Store `schedule` under its name (durable before it returns) only if the stored
        one is still exactly `read` (None: only if there is none), as a compare-and-set:
        of two requests that read the same state, one writes; True when written, False
        when the stored schedule is not `read` (nothing written). Conflict when it is new
        and `cap` schedules exist, or when `owner_cap` is given, `schedule.owner` is not
        None and the schedule is new to that owner (new, or another's) who already has
        `owner_cap` of them."""

    @abc.abstractmethod
    async def get_schedule(self, name: str) -> Schedule | None:
        """One schedule, or None."""

    @abc.abstractmethod
    async def list_schedules(self, after: str = "", limit: int = 1000) -> list[Schedule]:
        """Up to `limit` schedules whose names sort after `after`, by name."""

    @abc.abstractmethod
    async def delete_schedule(self, name: str) -> bool:
        """Remove a schedule; False when there was none."""

    @abc.abstractmethod
    async def due_schedules(self, now: float, limit: int) -> list[Schedule]:
        """Up to `limit` schedules whose `next_run_at` is at or before `now`, earliest first."""

    @abc.abstractmethod
    async def next_schedule_at(self) -> float | None:
        """The earliest `next_run_at` of any schedule, or None when there is none."""

    @abc.abstractmethod
    async def advance_schedule(self, read: Schedule, new: Schedule) -> bool:
        """Replace the stored schedule of `read.name` by `new` only if it is still exactly
        `read` (not advanced, replaced or deleted since it was read); True when replaced."""


class ForwardStore(abc.ABC):
    """The outbound side of bridges (channel -> bus): for each bridge, the one node that
    forwards its channels (a lease with a time to live, renewed by its holder), and how
    far each channel has been forwarded (a cursor: the id of the last message the bus
    confirmed). Cursor writes are fenced by the lease: a node that lost the lease cannot
    move a cursor. Seen by every node sharing the store; at most `cap` cursors a bridge.
    """

    cap: int

    @abc.abstractmethod
    async def hold_lease(self, bridge: str, holder: str, ttl: float) -> bool:
        """Take bridge `bridge`'s lease for `ttl` seconds when nobody holds it (or its
        holder let it expire), or renew it when `holder` holds it; True when `holder`
        holds it now, False when another does (nothing written)."""

    @abc.abstractmethod
    async def release_lease(self, bridge: str, holder: str) -> None:
        """Let go of the lease if `holder` holds it (another may take it at once)."""

    @abc.abstractmethod
    async def get_cursors(self, bridge: str) -> dict[str, str]:
        """Every cursor of `bridge`: channel -> id of the last message forwarded."""

    @abc.abstractmethod
    async def set_cursor(self, bridge: str, holder: str, channel: str, message_id: str) -> bool:
        """Set `channel`'s cursor to `message_id` only while `holder` holds the bridge's
        lease (unexpired); True when written, False when the lease is another's or
        nobody's (nothing written). Conflict when the channel has no cursor yet and the
        bridge has `cap` of them."""

    @abc.abstractmethod
    async def drop_cursors(self, bridge: str, channels: list[str] | None = None) -> None:
        """Forget the cursors of `channels` of `bridge` (None: all of them)."""


def forward_cursors_full(bridge: str, cap: int) -> Conflict:
    """The refusal of one more cursor to a bridge that has `cap` of them."""
    return Conflict(
        f"bridge {bridge!r} forwards {cap} channels, the most one bridge may: narrow its "
        "forward= patterns"
    )


class Store(abc.ABC):
    """What a store URL opens: channels, jobs, principals, workers and schedules in one
    engine, as part objects callers reach by name (`store.channels.publish`,
    `store.jobs.get_job`, `store.auth.get_user`, `store.workers.list_workers`,
    `store.schedules.get_schedule`), plus the life cycle they share."""

    # True for a store several server processes share (Redis): live messages then reach
    # each process's hub through its relay, not straight from the publish path.
    shared = False

    channels: ChannelStore
    jobs: JobStore
    auth: AuthStore
    workers: WorkerStore
    schedules: ScheduleStore
    forwards: ForwardStore

    @abc.abstractmethod
    async def start(self) -> None:
        """Open connections and create the schema; call before anything else."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release every resource."""

    async def ping(self) -> None:
        """Raise StoreError when the store cannot serve; used by /readyz."""
        return

    def write_counters(self) -> tuple[int, int] | None:
        """(transactions committed, writes they held) since start, for the metrics
        (group commit: several writes share a transaction); None, the default, for an
        engine that does not count them."""
        return None
