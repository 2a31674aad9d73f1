"""Defaults and names in one place, so every module agrees on them."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_STORE = "sqlite:///tidings.db"

# Retention: a channel keeps at most this many messages, none older than this many seconds.
DEFAULT_MAX_MESSAGES = 10_000
DEFAULT_MAX_AGE = 24 * 3600.0
# The largest retention a channel may be given: a signed 64-bit count (what the stores
# can count) and a hundred years.
MAX_RETAINED = 2**63 - 1
MAX_RETENTION_AGE = 100 * 365 * 86_400.0
# How often expired messages are swept out (seconds).
RETENTION_SWEEP_INTERVAL = 5.0

# Limits.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
DEFAULT_LONG_POLL_CAP = 30.0
DEFAULT_POLL_LIMIT = 100
MAX_POLL_LIMIT = 1000
# A subscriber whose pending (unsent) frames exceed this many bytes is cut.
DEFAULT_SUBSCRIBER_BUFFER = 256 * 1024
DEFAULT_HEARTBEAT = 15.0
# Inputs: the deepest nesting of arrays/objects accepted in any decoded value (bodies,
# WebSocket frames, job payloads/results/progress, JWT claims).
DEFAULT_MAX_DEPTH = 64
# HTTP/1.1 request limits, about nginx's defaults: the request line, the header block and
# the number of header fields (414 / 431 above them).
MAX_REQUEST_LINE = 8 * 1024
DEFAULT_MAX_HEADER_BYTES = 32 * 1024
MAX_HEADER_FIELDS = 100
# Seconds a client may take to send a request's headers, and may leave between two pieces
# of its body; seconds an idle keep-alive connection is kept.
DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0
DEFAULT_KEEP_ALIVE_TIMEOUT = 5.0
# Connections: 0 = derived from the process's file limit (see docs/deploy.md).
DEFAULT_MAX_CONNECTIONS = 0
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 256
# Login: attempts per client address per minute, failed attempts per account per
# LOGIN_ACCOUNT_WINDOW seconds, and password hashes waiting for a thread (503 above).
DEFAULT_LOGIN_RATE_PER_ADDRESS = 20
DEFAULT_LOGIN_FAILURES_PER_ACCOUNT = 10
LOGIN_ACCOUNT_WINDOW = 300.0
DEFAULT_LOGIN_QUEUE = 16
# Channels on one multiplexed stream (GET /v1/events).
DEFAULT_MAX_STREAM_CHANNELS = 100
# Idempotency keys are remembered this long (seconds).
IDEMPOTENCY_TTL = 24 * 3600.0
# SSE `retry:` hint for EventSource reconnects (milliseconds).
SSE_RETRY_MS = 1000
# Graceful shutdown: streams are told to close, then the server waits this long.
SHUTDOWN_GRACE = 5.0

# Jobs.
DEFAULT_RETRY_BACKOFF = 1.0
DEFAULT_JOB_TTL = 7 * 24 * 3600.0
# How often expired leases are looked for (seconds), and finished jobs swept.
LEASE_EXPIRY_INTERVAL = 0.25
JOB_SWEEP_INTERVAL = 60.0
# A job type is "served" while a worker asked to lease it (got a job or parked) within the
# last SERVED_WINDOW seconds: several lease polls of a worker that is up, whose parked
# requests look again at least every 5 s. Each node writes a type's mark to the store at
# most once per SERVED_MARK_INTERVAL seconds.
SERVED_WINDOW = 60.0
SERVED_MARK_INTERVAL = 5.0
# The worker list (GET /v1/workers): a worker is listed while it asked to lease, or
# heartbeat a job it holds, within the last WORKER_WINDOW seconds — longer than the SDK's
# parked lease request (20 s), so a worker waiting for work stays listed. Each node writes
# a worker's record to the store at most once per WORKER_MARK_INTERVAL seconds (the lease
# path is hot); a store keeps at most MAX_WORKERS records, the least recently seen go first.
WORKER_WINDOW = 60.0
WORKER_MARK_INTERVAL = 5.0
MAX_WORKERS = 10_000
# Job dependencies: a job names at most MAX_AFTER parents (`after`); a batch submit
# (POST /v1/jobs/batch) holds at most MAX_BATCH_JOBS jobs. The dependency repair reads,
# every DEPENDENCY_REPAIR_INTERVAL seconds, up to DEPENDENCY_REPAIR_MARKS settle marks
# left in the store (JobStore.settle_marks: a node stopped between a parent's end and the
# release of its children) and does what each asks.
MAX_AFTER = 100
MAX_BATCH_JOBS = 1000
DEPENDENCY_REPAIR_INTERVAL = 10.0
DEPENDENCY_REPAIR_MARKS = 1000

# Schedules: at most MAX_SCHEDULES in a store; each node's scheduler looks at the store at
# least every SCHEDULE_POLL seconds (a schedule put on another node is seen within it) and
# fires at most SCHEDULE_BATCH due schedules per look. Slots at most SCHEDULE_GRACE
# seconds late (a look delayed by load) are all fired, in order; older ones were missed
# in a downtime and follow the schedule's catch_up. `every` is at most
# MAX_SCHEDULE_EVERY seconds (a year).
MAX_SCHEDULES = 10_000
# The most schedules one owner (a user or an application JWT's subject) may have: one
# grant to submit a type does not take the whole store. Admins, and the anonymous owner of
# a server without auth, have only the store's MAX_SCHEDULES.
MAX_SCHEDULES_PER_OWNER = 100
SCHEDULE_POLL = 1.0
SCHEDULE_BATCH = 100
SCHEDULE_GRACE = 10.0
MAX_SCHEDULE_EVERY = 366 * 86_400

# Cyclic GC thresholds for `tidings serve` (CPython's default is 700, 10, 10): with
# thousands of connections alive, each collection sweeps all of their objects; cycles are
# rare, so collect seldom (docs/decisions/0003).
GC_THRESHOLDS = (50_000, 20, 100)
# GIL switch interval for `tidings worker`, and for `tidings serve` while a fan-out runs
# (CPython's default is 0.005 s): threads handing results to a busy loop wait that long
# otherwise (docs/decisions/0007).
SWITCH_INTERVAL = 0.0005
# ... and for `tidings serve` the rest of the time: a busy loop giving the GIL to the SQLite
# writer every 0.5 ms cost a durable publish ~20 % of its rate (docs/decisions/0024).
SWITCH_INTERVAL_IDLE = 0.005

# Login sessions last a day unless `--session-ttl` says otherwise.
DEFAULT_SESSION_TTL = 86_400.0
# How often open streams' sessions are re-checked (revoked or expired: the stream ends).
SESSION_SWEEP_INTERVAL = 1.0

# Bridges' outbound side: at most this many channels (cursors) one bridge forwards.
MAX_FORWARD_CHANNELS = 10_000
