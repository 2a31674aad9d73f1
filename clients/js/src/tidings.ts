/**
 * tidings-client: the JavaScript client of a tidings server, for browsers and Node >= 20.
 *
 *     const t = new Tidings({ url: "http://127.0.0.1:8000" });
 *     await t.publish("news", { title: "hello" });
 *     for await (const item of t.subscribe("news")) { ... }
 *
 * One file, no dependencies. It mirrors the Python SDK (`tidings.sdk.client`):
 *
 * - `subscribe` keeps, per channel, the id of the last message it gave out and resumes
 *   after it whenever a connection drops, so a message is never given twice nor out of
 *   order. With no `after` it starts "from now": the channel's newest id, looked up once
 *   before the first connection so that a drop before the first message loses nothing.
 * - Every transport hands over whole messages `{id, channel, event, data, time}`: WebSocket
 *   frames and poll answers are such objects, and SSE streams are asked for them with
 *   `?format=json` (single channel and job streams) or carry them always (`/v1/events`).
 *   So a message's `data` is the same value of the same type whichever transport carried it.
 * - SSE is read from a `fetch()` response body in every runtime. The native EventSource is
 *   not used: it cannot send an `Authorization` header, it hides the status of a refused
 *   stream (a 401 looks like a network error), and it only delivers events of names it
 *   was told in advance, while tidings names each event after the message's `event`.
 * - WebSocket is `globalThis.WebSocket` (browsers, Node >= 22) or the constructor given as
 *   the `WebSocket` option (e.g. the `ws` package on Node 20). A browser's WebSocket
 *   cannot send a bearer token: with a `token` option it is not used (a session made by
 *   `login()` travels in its cookie, which it does send).
 *
 * Errors are `TidingsError`s with the HTTP `status` and the server's `code` and message;
 * a server that cannot be reached is status 0, code "unreachable".
 */

// ---------------------------------------------------------------------------------------
// Public types

/** How `subscribe` receives messages; "auto" tries WebSocket, then SSE, then long polling. */
export type Via = "auto" | "ws" | "sse" | "longpoll" | "poll";
/** A transport `subscribe` can use. */
export type Transport = Exclude<Via, "auto">;

/** A constructor of WebSocket-like objects: the browser's, Node's, or the `ws` package's. */
export interface WebSocketConstructor {
  new (url: string, init?: { headers?: Record<string, string> }): WebSocketLike;
}

/** What the client uses of a WebSocket. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => void) | null;
  onmessage: ((ev: { data: any }) => void) | null;
  onerror: ((ev: any) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  close(code?: number, reason?: string): void;
}

export interface TidingsOptions {
  /** Base URL of the server, e.g. "http://127.0.0.1:8000"; a path prefix is kept. */
  url: string;
  /** API or session token, sent as `Authorization: Bearer <token>`. */
  token?: string;
  /** The fetch function to use (default: the global `fetch`). */
  fetch?: typeof fetch;
  /**
   * The WebSocket constructor (default: `globalThis.WebSocket`); `null` disables WebSocket.
   * A constructor given here is called as `new WebSocket(url, {headers})`, which the `ws`
   * package and Node's own WebSocket accept.
   */
  WebSocket?: WebSocketConstructor | null;
  /** Seconds to wait for an answer to a request (long polls add their wait). Default 30. */
  timeout?: number;
  /**
   * Browsers: whether requests carry cookies (a session made by `login()`). Default
   * "include", which a server on another origin must allow: `--cors-origins` naming this
   * page's origin. With `--cors-origins '*'` use "same-origin" (and a token).
   */
  credentials?: RequestCredentials;
}

/** A channel's message. `time` is RFC 3339 (UTC), as the server writes it. */
export interface Message {
  type: "message";
  id: string;
  channel: string;
  event: string | null;
  data: unknown;
  time: string;
}

/** History the subscriber asked for is gone: what follows is not contiguous with its cursor. */
export interface Reset {
  type: "reset";
  channel: string;
  /** The oldest id still kept (null when the channel keeps nothing). */
  first: string | null;
  reason: string;
}

/**
 * A subscription's connection state:
 * - "connecting": a transport is being opened;
 * - "open": it is open (`attempt` starts over);
 * - "fallback": `from` could not be opened (or buffers its stream), trying `via` next;
 * - "reconnecting": the connection failed or ended; the next try is in `delay` seconds;
 * - "closed": the subscription ended (`error` says why when it was not `close()`).
 */
export interface Status {
  type: "status";
  state: "connecting" | "open" | "fallback" | "reconnecting" | "closed";
  via: Transport;
  from?: Transport;
  attempt: number;
  delay?: number;
  error?: TidingsError;
}

export interface SubscribeOptions {
  /** Transport; default "auto" (WebSocket, then SSE, then long polling). */
  via?: Via;
  /**
   * Start after this message id ("0": from the oldest kept); for several channels, one id
   * for all or an object of ids by channel. Default: from now.
   */
  after?: string | Record<string, string>;
  onMessage?: (message: Message) => void;
  onReset?: (reset: Reset) => void;
  onStatus?: (status: Status) => void;
  /** The error that ended the subscription (a 401, a 403, a bad channel...). */
  onError?: (error: TidingsError) => void;
  /** Seconds between requests of "poll" when nothing is new. Default 1. */
  pollInterval?: number;
  /** Seconds before the first reconnect; doubles per failure up to `maxReconnectDelay`. */
  reconnectDelay?: number;
  /** Longest wait between reconnects, seconds. Default 30. */
  maxReconnectDelay?: number;
  /**
   * An SSE stream silent this many seconds is reconnected; time spent waiting for a slow
   * reader does not count. The server sends a heartbeat every `--heartbeat` seconds (15 by
   * default) and does not announce that interval: against a server run with a longer
   * `--heartbeat`, set this to about three heartbeats. Default 45; 0: never.
   */
  stallTimeout?: number;
  /** With "auto": seconds between checks that an SSE stream which has sent nothing yet is not held back by a buffering proxy. Default 3. */
  probeInterval?: number;
  /** Ends the subscription when aborted, as `close()` does. */
  signal?: AbortSignal;
}

export interface PublishOptions {
  event?: string;
  /** A repeat with the same key answers the first message's id instead of publishing again. */
  idempotencyKey?: string;
}

export interface PublishAck {
  id: string;
  channel: string;
  time: string;
}

export interface Page {
  messages: Message[];
  next: string;
  reset: boolean;
}

export interface ReadOptions {
  /** Start after this id ("0": the oldest kept). Default: from now. */
  after?: string;
  limit?: number;
  /** Seconds to wait for a message when there is none (long poll). */
  wait?: number;
  signal?: AbortSignal;
}

/** A job as the server describes it; times are RFC 3339 strings. */
export interface JobInfo {
  id: string;
  type: string;
  /** `waiting`: for its parents (`after`) to succeed. */
  status: "waiting" | "queued" | "running" | "succeeded" | "failed" | "cancelled";
  payload?: unknown;
  progress: number | null;
  message: string | null;
  result: unknown;
  error: unknown;
  errors?: unknown[];
  attempt: number;
  max_attempts: number;
  priority: number;
  timeout: number | null;
  cancel_requested: boolean;
  submitted_by: string | null;
  /** The id of the worker holding the job, or that last held it (null: never leased). */
  worker: string | null;
  /** While this job waits, is queued or runs, a submit with this key answers it. */
  unique_key?: string | null;
  /** What its type's group_concurrency counts it by (e.g. a tenant). */
  group?: string | null;
  /** The parent job ids it waits for (left out when none). */
  after?: string[];
  created_at: string;
  updated_at: string;
  run_at: string;
  started_at: string | null;
  finished_at: string | null;
  lease_expires_at: string | null;
  links: Record<string, string>;
  served?: boolean;
  /** In a submit's answer: true when it made no job, this one holding its `unique_key`. */
  deduplicated?: boolean;
  /** In a batch submit's answer: the job's name in the batch. */
  ref?: string;
}

export interface SubmitOptions {
  maxAttempts?: number;
  /** Seconds an attempt may run. */
  timeout?: number;
  /** Seconds before the job may start. */
  delay?: number;
  priority?: number;
  idempotencyKey?: string;
  /** While a waiting, queued or running job of this type holds this key, the submit
   * answers that job (the handle's `deduplicated` is true) instead of making another. */
  uniqueKey?: string;
  /** What the type's group_concurrency counts the job by, e.g. a tenant. */
  group?: string;
  /** Parent job ids: the job waits (status "waiting") until they all succeeded; a parent
   * that fails or is cancelled ends it cancelled (ParentFailed, ParentCancelled). */
  after?: string[];
}

/** One job of `submitBatch`: `submit`'s fields and `ref`, its name in the batch, which the
 * `after` of the batch's other jobs may name (besides ids of existing jobs). */
export interface BatchJob {
  ref: string;
  type: string;
  payload?: unknown;
  maxAttempts?: number;
  timeout?: number;
  delay?: number;
  priority?: number;
  uniqueKey?: string;
  group?: string;
  after?: string[];
}

/** A schedule as the server describes it; times are RFC 3339 strings. Exactly one of
 * `cron` (read in `timezone`) and `every` (seconds) is set. */
export interface ScheduleInfo {
  name: string;
  type: string;
  payload: unknown;
  cron: string | null;
  every: number | null;
  timezone: string | null;
  max_attempts: number;
  timeout: number | null;
  priority: number;
  catch_up: "latest" | "skip";
  /** The next slot to fire. */
  next_run_at: string;
  /** The slot fired last, and its job (`sched:{name}:{slot}`). */
  last_run_at: string | null;
  last_job_id: string | null;
  created_at: string;
  updated_at: string;
  /** Whose jobs its firings are (null: anonymous). */
  owner: string | null;
  links: Record<string, string>;
}

export interface ScheduleOptions {
  /** Five fields (minute hour day-of-month month day-of-week); exactly one of cron and every. */
  cron?: string;
  /** Whole seconds between firings, the first `every` from now. */
  every?: number;
  /** IANA time zone the cron expression is read in (default UTC). */
  timezone?: string;
  maxAttempts?: number;
  timeout?: number;
  priority?: number;
  /** After downtime: "latest" fires the most recent missed slot once, "skip" none. */
  catchUp?: "latest" | "skip";
}

/** One event of a job: "queued", "running", "progress", then "succeeded", "failed" or "cancelled". */
export interface JobEvent {
  type: "job";
  event: string;
  id: string;
  job: JobInfo;
  time: string;
}

export interface JobEventsOptions {
  via?: Via;
  onStatus?: (status: Status) => void;
  signal?: AbortSignal;
}

export interface LoginAnswer {
  token: string;
  expires_at: string;
  user: string;
  permissions: Record<string, unknown>;
}

export interface Me {
  user: string;
  anonymous: boolean;
  permissions: Record<string, unknown>;
  expires_at: string | null;
}

/**
 * An error the client raises: the server's answer (`status`, and `code` and `message`
 * from its `{"error": {"code", "message"}}` body) or, with status 0, a failure before any
 * answer: "unreachable" (the server could not be reached or the connection broke),
 * "timeout", "invalid_url", "unsupported" (a transport this runtime lacks), "job_timeout".
 */
export class TidingsError extends Error {
  readonly status: number;
  readonly code: string;
  /** The answer's body: the parsed JSON when it was JSON, else its text. */
  readonly body: unknown;
  /** Seconds the server asked to wait before trying again (`Retry-After`), if it did. */
  readonly retryAfter: number | null;

  constructor(
    status: number,
    code: string,
    message: string,
    body: unknown = null,
    retryAfter: number | null = null,
  ) {
    super(message);
    this.name = "TidingsError";
    this.status = status;
    this.code = code;
    this.body = body;
    this.retryAfter = retryAfter;
  }

  /** True when trying again later may succeed: no answer (but for the client's own
   * refusals), an answer that was not the server's (a proxy's 200 page), a 5xx, 408, 429. */
  get retryable(): boolean {
    if (this.status === 0) return !FINAL_CODES.has(this.code);
    if (this.status < 400) return true;
    return this.status >= 500 || this.status === 408 || this.status === 429;
  }
}

// ---------------------------------------------------------------------------------------
// Constants

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
// Status-0 errors that no retry can mend: the client refused the call itself.
const FINAL_CODES = new Set(["invalid_url", "unsupported", "bad_request", "job_timeout"]);
// Seconds a long poll asks the server to hold each request (its cap is 30 by default).
const LONG_POLL_WAIT = 25;
// Added to a long poll's wait for the request's own timeout, so the server answers first.
const LONG_POLL_MARGIN = 10;
// Items a subscription holds for a slow reader before it stops reading its stream.
const HIGH_WATER = 1000;
// A WebSocket cannot be paused: past this many items held for a slow reader, its socket is
// closed, and the subscription reconnects from its cursor once the reader has caught up.
const WS_HIGH_WATER = 2 * HIGH_WATER;
const RESET_BEHIND = "cursor is older than the retained history of the channel";
const RESET_AHEAD =
  "cursor is ahead of the channel's newest message (the channel was deleted or recreated)";
const DIGITS = /^[0-9]+$/;

// ---------------------------------------------------------------------------------------
// Small helpers

/** Whether message id `id` comes after `last` in its channel (null: nothing yet). Ids are
 * opaque; tidings' stores write decimal numbers, compared here without converting them to
 * floats (they may exceed 2^53). Ids of another form are only told apart by equality. */
export function idAfter(id: string, last: string | null): boolean {
  if (last === null) return true;
  if (DIGITS.test(id) && DIGITS.test(last)) {
    const a = id.replace(/^0+(?=.)/, "");
    const b = last.replace(/^0+(?=.)/, "");
    return a.length !== b.length ? a.length > b.length : a > b;
  }
  return id !== last;
}

/** The `~` cursor of a stream of several channels: each position, in the URL's channel
 * order, joined by "." ("0" written as nothing); tidings.protocol.cursors. */
function compositeCursor(positions: string[]): string {
  return "~" + positions.map((p) => (p === "0" ? "" : p)).join(".");
}

function unreachable(url: string, exc: unknown): TidingsError {
  const cause = (exc as { cause?: { code?: string; message?: string } })?.cause;
  const why = cause?.code ?? cause?.message ?? (exc as Error)?.message ?? String(exc);
  return new TidingsError(
    0,
    "unreachable",
    `cannot reach the tidings server at ${url} (${why}): check the URL and that the server runs`,
  );
}

function sleep(seconds: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, seconds * 1000);
    signal.addEventListener("abort", done, { once: true });
  });
}

/** A controller aborted with `parent`, or after `seconds` (code "timeout"). */
function linked(
  parent: AbortSignal | undefined,
  seconds: number | null,
): { signal: AbortSignal; abort: () => void; timedOut: () => boolean; dispose: () => void } {
  const controller = new AbortController();
  let expired = false;
  const onAbort = () => controller.abort();
  if (parent) {
    if (parent.aborted) controller.abort();
    else parent.addEventListener("abort", onAbort, { once: true });
  }
  const timer =
    seconds === null
      ? undefined
      : setTimeout(() => {
          expired = true;
          controller.abort();
        }, seconds * 1000);
  return {
    signal: controller.signal,
    abort: () => controller.abort(),
    timedOut: () => expired,
    dispose: () => {
      if (timer !== undefined) clearTimeout(timer);
      parent?.removeEventListener("abort", onAbort);
    },
  };
}

function report(exc: unknown): void {
  // A callback's exception is the caller's bug: surface it without stopping the stream.
  setTimeout(() => {
    throw exc;
  });
}

function isNode(): boolean {
  const proc = (globalThis as { process?: { versions?: { node?: string } } }).process;
  return typeof proc?.versions?.node === "string";
}

function asMessage(obj: unknown): Message | null {
  if (typeof obj !== "object" || obj === null) return null;
  const o = obj as Record<string, unknown>;
  if (typeof o.id !== "string" || typeof o.channel !== "string") return null;
  return {
    type: "message",
    id: o.id,
    channel: o.channel,
    event: typeof o.event === "string" ? o.event : null,
    data: o.data === undefined ? null : o.data,
    time: typeof o.time === "string" ? o.time : "",
  };
}

function asReset(obj: unknown, channel: string): Reset {
  const o = (typeof obj === "object" && obj !== null ? obj : {}) as Record<string, unknown>;
  return {
    type: "reset",
    channel: typeof o.channel === "string" ? o.channel : channel,
    first: typeof o.first === "string" ? o.first : null,
    reason: typeof o.reason === "string" ? o.reason : RESET_BEHIND,
  };
}

// ---------------------------------------------------------------------------------------
// Server-Sent Events, parsed as the HTML standard says (fields, comments, line endings).

interface SseEvent {
  event: string;
  data: string;
  /** The event's own `id:` line, or null when it had none (a control event). */
  id: string | null;
}

class SseParser {
  private buffer = "";
  private data: string[] = [];
  private event = "";
  private id: string | null = null;
  private started = false;

  /** The events completed by `chunk`. */
  push(chunk: string): SseEvent[] {
    let text = this.buffer + chunk;
    if (!this.started && text.length > 0) {
      this.started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    const events: SseEvent[] = [];
    let start = 0;
    for (;;) {
      const cr = text.indexOf("\r", start);
      const lf = text.indexOf("\n", start);
      let end: number;
      let next: number;
      if (cr === -1 && lf === -1) break;
      if (cr !== -1 && (lf === -1 || cr < lf)) {
        // A lone \r ends a line too; \r at the chunk's end may be half of \r\n.
        if (cr === text.length - 1) break;
        end = cr;
        next = text[cr + 1] === "\n" ? cr + 2 : cr + 1;
      } else {
        end = lf;
        next = lf + 1;
      }
      this.line(text.slice(start, end), events);
      start = next;
    }
    this.buffer = text.slice(start);
    return events;
  }

  private line(line: string, events: SseEvent[]): void {
    if (line === "") {
      if (this.data.length > 0) {
        events.push({ event: this.event || "message", data: this.data.join("\n"), id: this.id });
      }
      this.data = [];
      this.event = "";
      this.id = null;
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.event = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
  }
}

// ---------------------------------------------------------------------------------------
// Subscriptions

/** What a subscription follows: channels, or one job's channel with its own endpoints. */
interface Source {
  channels: string[];
  /** The job whose streams these are (its channel is `job.{id}`), or null. */
  job: string | null;
}

/** A connection ended by the server on purpose (a `close` frame, the end of a stream). */
class Ended {
  constructor(readonly complete: boolean) {}
}

type Item = Message | Reset;

/**
 * A live subscription: an async iterable of messages and resets, in order, without
 * duplicates, resuming by itself after any drop. `close()` ends it.
 */
export class Subscription<T = Item> implements AsyncIterable<T> {
  /** The channels followed, in order. */
  readonly channels: string[];
  /** The id of the last message given out (of any channel), or null. */
  lastId: string | null = null;
  /** The transport in use (or being tried). */
  via: Transport;
  /** The last status reported. */
  status: Status | null = null;
  /** Settles when the subscription ends: with the error that ended it, or null. */
  readonly ended: Promise<TidingsError | null>;

  // Per channel: the position to resume after, and the last id given out (null after a
  // reset, so that what follows it is taken whatever its id).
  private readonly cursor = new Map<string, string | null>();
  private readonly last = new Map<string, string | null>();
  private readonly queue: T[] = [];
  private waiters: (() => void)[] = [];
  // Settles once the reader has caught up; every loop held back by a full queue waits on it.
  private drain: { promise: Promise<void>; resolve: () => void } | null = null;
  private queueing: boolean;
  private closed = false;
  private error: TidingsError | null = null;
  private complete = false;
  private readonly controller = new AbortController();
  private settle!: (error: TidingsError | null) => void;
  private readonly order: Transport[];
  private proven: Transport | null = null;
  private attempt = 0;
  // Removed from the caller's signal when the subscription ends, which may share it.
  private readonly onAbort = () => this.close();

  /** @internal */
  constructor(
    private readonly client: Tidings,
    private readonly source: Source,
    private readonly options: SubscribeOptions,
    private readonly convert: (item: Item) => T | null,
    after: Record<string, string | null>,
  ) {
    this.channels = source.channels;
    for (const ch of this.channels) {
      this.cursor.set(ch, after[ch] ?? null);
      this.last.set(ch, after[ch] ?? null);
    }
    this.queueing = !(options.onMessage || options.onReset);
    this.ended = new Promise((resolve) => (this.settle = resolve));
    const via = options.via ?? "auto";
    const ws = client.webSocketUsable();
    if (via === "auto") {
      this.order = ws === null ? ["ws", "sse", "longpoll"] : ["sse", "longpoll"];
    } else {
      this.order = [via];
    }
    this.via = this.order[0];
    options.signal?.addEventListener("abort", this.onAbort, { once: true });
    if (options.signal?.aborted) this.close();
    this.run().catch((exc) =>
      this.finish(exc instanceof TidingsError ? exc : new TidingsError(0, "internal", `the subscription failed: ${exc}`)),
    );
  }

  /** End the subscription: its connection closes and iteration stops. */
  close(): void {
    this.finish(null);
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    this.queueing = true;
    return {
      next: () => this.next(),
      return: async () => {
        this.close();
        return { value: undefined, done: true };
      },
    };
  }

  private async next(): Promise<IteratorResult<T>> {
    for (;;) {
      if (this.queue.length > 0) {
        const value = this.queue.shift() as T;
        if (this.drain && this.queue.length <= HIGH_WATER / 2) this.drained();
        return { value, done: false };
      }
      if (this.closed) {
        const error = this.error;
        if (error) {
          this.error = null; // thrown once; later calls just end
          throw error;
        }
        return { value: undefined, done: true };
      }
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** Let every loop held back by the reader go on. */
  private drained(): void {
    const drain = this.drain;
    this.drain = null;
    drain?.resolve();
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  private finish(error: TidingsError | null): void {
    if (this.closed) return;
    this.closed = true;
    this.error = error;
    this.controller.abort();
    this.emitStatus({ state: "closed", error: error ?? undefined });
    if (error && this.options.onError) {
      try {
        this.options.onError(error);
      } catch (exc) {
        report(exc);
      }
    }
    this.options.signal?.removeEventListener("abort", this.onAbort);
    this.drained();
    this.settle(error);
    this.wake();
  }

  private emitStatus(s: Omit<Status, "type" | "via" | "attempt"> & { via?: Transport }): void {
    const status: Status = { type: "status", via: this.via, attempt: this.attempt, ...s };
    this.status = status;
    if (this.options.onStatus) {
      try {
        this.options.onStatus(status);
      } catch (exc) {
        report(exc);
      }
    }
  }

  /** Hand an item out; a promise to await before reading more when the reader lags. */
  private emit(item: Item): Promise<void> | null {
    if (this.closed) return null;
    if (item.type === "message" && this.options.onMessage) {
      try {
        this.options.onMessage(item);
      } catch (exc) {
        report(exc);
      }
    } else if (item.type === "reset" && this.options.onReset) {
      try {
        this.options.onReset(item);
      } catch (exc) {
        report(exc);
      }
    }
    const converted = this.convert(item);
    if (!this.queueing || converted === null) return null;
    this.queue.push(converted);
    this.wake();
    if (this.queue.length < HIGH_WATER) return null;
    if (this.drain === null) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.drain = { promise, resolve };
    }
    return this.drain.promise;
  }

  /** Take a message if it follows the channel's last one; true when it was new. */
  private accept(message: Message): Promise<void> | null {
    const ch = message.channel;
    if (!this.last.has(ch)) return null; // not a channel of this subscription
    if (!idAfter(message.id, this.last.get(ch) ?? null)) return null; // seen already
    this.last.set(ch, message.id);
    this.cursor.set(ch, message.id);
    this.lastId = message.id;
    if (this.source.job !== null) {
      const status = (message.data as { status?: string } | null)?.status;
      if (TERMINAL.has(message.event ?? "") || TERMINAL.has(status ?? "")) this.complete = true;
    }
    return this.emit(message);
  }

  private reset(reset: Reset): Promise<void> | null {
    if (!this.last.has(reset.channel)) return null;
    this.last.set(reset.channel, null);
    return this.source.job === null ? this.emit(reset) : null;
  }

  // Running: pick a transport, connect, reconnect --------------------------------------

  private async run(): Promise<void> {
    const opts = this.options;
    const base = opts.reconnectDelay ?? 0.5;
    const ceiling = Math.max(base, opts.maxReconnectDelay ?? 30);
    const auto = this.order.length > 1;
    const lastIndex = this.order.length - 1;
    let index = 0;
    while (!this.closed) {
      const via = this.proven ?? this.order[index];
      this.via = via;
      let failure: TidingsError | null = null;
      let connecting = false;
      const opened = { value: false };
      try {
        await this.resolveCursors();
        connecting = true;
        this.emitStatus({ state: "connecting" });
        const result = await this.connect(via, opened);
        if (this.closed) return;
        if (result.complete || this.complete) {
          this.finish(null);
          return;
        }
      } catch (exc) {
        if (this.closed) return;
        failure = exc instanceof TidingsError ? exc : unreachable(this.client.url, exc);
      }
      if (this.complete) {
        this.finish(null);
        return;
      }
      // "auto", before a transport has worked: one that did not open (or whose stream is
      // held back) gives way to the next at once.
      const blocked = failure !== null && (!opened.value || failure.code === "stream_buffered");
      if (auto && connecting && this.proven === null && blocked && index < lastIndex) {
        index += 1;
        this.emitStatus({ state: "fallback", from: via, via: this.order[index], error: failure ?? undefined });
        continue;
      }
      if (failure !== null && !failure.retryable) {
        this.finish(failure);
        return;
      }
      let delay: number;
      if (failure !== null) {
        this.attempt += 1;
        delay = Math.min(ceiling, base * 2 ** Math.min(this.attempt - 1, 16));
        delay *= 0.5 + Math.random() / 2; // jitter: clients cut together do not return together
        if (failure.retryAfter !== null) delay = Math.max(delay, Math.min(failure.retryAfter, 60));
        if (auto && (this.proven === null || this.attempt >= 3)) {
          // Nothing has worked yet, or what worked keeps failing: start from the best again.
          this.proven = null;
          index = 0;
        }
      } else {
        delay = base * (0.5 + Math.random() / 2); // ended by the server: back soon
      }
      this.emitStatus({ state: "reconnecting", delay, error: failure ?? undefined });
      await sleep(delay, this.controller.signal);
    }
  }

  /** Channels without a cursor start from now: their newest id, asked for once. */
  private async resolveCursors(): Promise<void> {
    const missing = this.channels.filter((ch) => this.cursor.get(ch) === null && this.last.get(ch) === null);
    if (missing.length === 0) return;
    await Promise.all(
      missing.map(async (ch) => {
        const page = await this.client.read(ch, { limit: 1, signal: this.controller.signal });
        const now = page.next || "0";
        if (this.cursor.get(ch) === null) {
          this.cursor.set(ch, now);
          this.last.set(ch, now);
        }
      }),
    );
  }

  private opened(via: Transport, flag: { value: boolean }, proven: boolean): void {
    if (!flag.value) {
      flag.value = true;
      this.attempt = 0;
      this.emitStatus({ state: "open" });
    }
    if (proven) this.proven = via;
  }

  private connect(via: Transport, opened: { value: boolean }): Promise<Ended> {
    const signal = this.controller.signal;
    if (via === "sse") return this.sse(opened, signal);
    if (via === "ws") {
      return this.perChannel(signal, (ch, s) => this.ws(ch, opened, s));
    }
    return this.perChannel(signal, (ch, s) => this.poll(ch, via === "longpoll", opened, s));
  }

  /** Run one connection per channel; the first to end or fail ends them all. */
  private async perChannel(
    signal: AbortSignal,
    one: (channel: string, signal: AbortSignal) => Promise<Ended>,
  ): Promise<Ended> {
    if (this.channels.length === 1) return one(this.channels[0], signal);
    const group = linked(signal, null);
    try {
      return await Promise.race(this.channels.map((ch) => one(ch, group.signal)));
    } finally {
      // Stop the others; they resume from their cursors on the next connection.
      group.abort();
      group.dispose();
    }
  }

  // SSE over fetch ---------------------------------------------------------------------

  private ssePath(): string {
    const job = this.source.job;
    if (job !== null) {
      const ch = this.channels[0];
      return this.client.path(`/v1/jobs/${encodeURIComponent(job)}/events`, {
        format: "json",
        after: this.cursor.get(ch) ?? "0",
      });
    }
    if (this.channels.length === 1) {
      const ch = this.channels[0];
      return this.client.path(`/v1/channels/${encodeURIComponent(ch)}/events`, {
        format: "json",
        after: this.cursor.get(ch) ?? "0",
      });
    }
    const params = new URLSearchParams();
    for (const ch of this.channels) params.append("channel", ch);
    params.append("after", compositeCursor(this.channels.map((ch) => this.cursor.get(ch) ?? "0")));
    return this.client.path("/v1/events", params);
  }

  private async sse(opened: { value: boolean }, signal: AbortSignal): Promise<Ended> {
    const opts = this.options;
    const stallAfter = opts.stallTimeout ?? 45;
    const probeEvery = (opts.probeInterval ?? 3) * 1000;
    // "auto" keeps an eye on a stream that has sent nothing yet: a proxy may buffer it.
    const probing = this.order.length > 1 && this.proven === null;
    // This connection: ended by close(), by a stall, or when found buffered (`why`).
    const conn = linked(signal, null);
    let why: TidingsError | null = null;
    const stop = (error: TidingsError) => {
      why ??= error;
      conn.abort();
    };
    let stallTimer: ReturnType<typeof setTimeout> | undefined;
    let probeTimer: ReturnType<typeof setTimeout> | undefined;
    const armStall = () => {
      if (stallAfter <= 0) return;
      clearTimeout(stallTimer);
      stallTimer = setTimeout(
        () => stop(new TidingsError(0, "unreachable", `the SSE stream sent nothing for ${stallAfter} s`)),
        stallAfter * 1000,
      );
    };
    try {
      let gotBytes = false;
      let strikes = 0;
      const probe = async () => {
        try {
          strikes = (await this.pending(conn.signal)) ? strikes + 1 : 0;
        } catch {
          strikes = 0;
        }
        if (gotBytes || conn.signal.aborted) return;
        // Twice in a row, so that a message on its way when the first check ran is not
        // taken for a held one.
        if (strikes >= 2) {
          stop(
            new TidingsError(
              0,
              "stream_buffered",
              "the SSE stream sent nothing while messages were waiting: something between here and the server holds it back",
            ),
          );
          return;
        }
        probeTimer = setTimeout(probe, probeEvery);
      };
      // From the request on: a proxy may hold back the head of the answer as well as its events.
      if (probing) probeTimer = setTimeout(probe, probeEvery);
      const head = linked(conn.signal, this.client.timeout);
      let response: Response;
      try {
        response = await this.client.send(this.ssePath(), {
          headers: { Accept: "text/event-stream" },
          signal: head.signal,
        });
      } catch (exc) {
        if (why) throw why;
        if (head.timedOut()) {
          throw new TidingsError(0, "timeout", `no answer to the SSE request within ${this.client.timeout} s`);
        }
        throw exc;
      } finally {
        head.dispose();
      }
      if (response.status === 204) return new Ended(true); // a job's stream with nothing left
      if (!response.ok) throw await errorOf(response);
      const type = response.headers.get("content-type") ?? "";
      if (!type.startsWith("text/event-stream") || response.body === null) {
        void response.body?.cancel().catch(() => {});
        throw new TidingsError(
          response.status,
          "not_event_stream",
          `expected an event stream, got ${type || "no content type"}: does a proxy answer for the server?`,
        );
      }
      this.opened("sse", opened, !probing);
      armStall();
      const reader = response.body.getReader();
      // Cancelling ends a pending read() with `done`.
      conn.signal.addEventListener("abort", () => void reader.cancel().catch(() => {}), { once: true });
      const decoder = new TextDecoder();
      const parser = new SseParser();
      let closedByServer = false;
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          if (!gotBytes) {
            gotBytes = true;
            clearTimeout(probeTimer);
            this.opened("sse", opened, true);
          }
          armStall();
          for (const ev of parser.push(decoder.decode(value, { stream: true }))) {
            const wait = this.sseEvent(ev);
            if (wait === "close") closedByServer = true;
            else if (wait) {
              // The stream is not read meanwhile: its silence is the reader's, not the server's.
              clearTimeout(stallTimer);
              await wait;
              armStall();
            }
          }
        }
      } catch (exc) {
        if (why) throw why;
        throw exc;
      }
      if (why) throw why;
      return new Ended(closedByServer && this.complete);
    } finally {
      // Ends a probe still in flight too, which would otherwise schedule the next one.
      conn.abort();
      conn.dispose();
      clearTimeout(stallTimer);
      clearTimeout(probeTimer);
    }
  }

  private sseEvent(ev: SseEvent): Promise<void> | null | "close" {
    if (ev.id !== null) {
      let obj: unknown;
      try {
        obj = JSON.parse(ev.data);
      } catch {
        throw new TidingsError(0, "malformed", `malformed message event from the server: ${ev.data.slice(0, 100)}`);
      }
      const message = asMessage(obj);
      return message ? this.accept(message) : null;
    }
    if (ev.event === "reset") {
      let obj: unknown = null;
      try {
        obj = JSON.parse(ev.data);
      } catch {
        // a reset of another shape still resets
      }
      return this.reset(asReset(obj, this.channels[0]));
    }
    if (ev.event === "close") return "close";
    return null;
  }

  /** Whether the server holds something for this subscription that its stream has not sent. */
  private async pending(signal: AbortSignal): Promise<boolean> {
    for (const ch of this.channels) {
      const page = await this.client.read(ch, { after: this.cursor.get(ch) ?? "0", limit: 1, signal });
      if (page.reset || page.messages.some((m) => idAfter(m.id, this.last.get(ch) ?? null))) {
        return true;
      }
    }
    return false;
  }

  // WebSocket --------------------------------------------------------------------------

  private ws(channel: string, opened: { value: boolean }, signal: AbortSignal): Promise<Ended> {
    const ctor = this.client.webSocketCtor();
    const usable = this.client.webSocketUsable();
    if (ctor === null || usable !== null) {
      return Promise.reject(new TidingsError(0, "unsupported", usable ?? "no WebSocket"));
    }
    const job = this.source.job;
    const path =
      job !== null
        ? `/v1/jobs/${encodeURIComponent(job)}/ws`
        : `/v1/channels/${encodeURIComponent(channel)}/ws`;
    const url = this.client.wsUrl(path, { after: this.cursor.get(channel) ?? "0" });
    if (signal.aborted) return Promise.resolve(new Ended(false));
    return new Promise<Ended>((resolve, reject) => {
      let socket: WebSocketLike;
      try {
        socket = this.client.openWebSocket(ctor, url);
      } catch (exc) {
        reject(new TidingsError(0, "unreachable", `cannot open a WebSocket to ${url}: ${(exc as Error).message}`));
        return;
      }
      let isOpen = false;
      let closing = false;
      let settled = false;
      const openTimer = setTimeout(() => {
        fail(new TidingsError(0, "timeout", `the WebSocket did not open within ${this.client.timeout} s`));
      }, this.client.timeout * 1000);
      const done = () => {
        settled = true;
        clearTimeout(openTimer);
        signal.removeEventListener("abort", onAbort);
        // No-ops rather than null: the ws package throws an "error" nobody listens to.
        const ignore = () => {};
        socket.onopen = socket.onmessage = socket.onerror = socket.onclose = ignore;
      };
      const fail = (error: TidingsError) => {
        if (settled) return;
        done();
        try {
          socket.close(1000);
        } catch {
          // already closed
        }
        reject(error);
      };
      const onAbort = () => {
        if (settled) return;
        done();
        try {
          socket.close(1000);
        } catch {
          // already closed
        }
        resolve(new Ended(false));
      };
      // The reader lags too far behind: stop taking frames, and end this connection once it
      // has caught up (or the subscription ends); the next one resumes from the cursor.
      const overflow = (drained: Promise<void>) => {
        done();
        try {
          socket.close(1000);
        } catch {
          // already closed
        }
        const end = () => {
          signal.removeEventListener("abort", end);
          resolve(new Ended(this.complete));
        };
        signal.addEventListener("abort", end, { once: true });
        void drained.then(end);
      };
      signal.addEventListener("abort", onAbort, { once: true });
      socket.onopen = () => {
        isOpen = true;
        clearTimeout(openTimer);
        this.opened("ws", opened, true);
      };
      socket.onmessage = (ev) => {
        if (settled) return;
        let obj: unknown;
        try {
          obj = JSON.parse(typeof ev.data === "string" ? ev.data : new TextDecoder().decode(ev.data));
        } catch {
          fail(new TidingsError(0, "malformed", "malformed WebSocket frame from the server"));
          return;
        }
        if (typeof obj !== "object" || obj === null) return;
        const kind = (obj as { type?: unknown }).type;
        let wait: Promise<void> | null = null;
        if (kind === undefined) {
          const message = asMessage(obj);
          if (message) wait = this.accept(message);
        } else if (kind === "reset") {
          wait = this.reset(asReset(obj, channel));
        } else if (kind === "close") {
          closing = true;
        }
        // "ack" and "error" answer publishes through the socket, which this client does not make.
        if (wait && this.queue.length >= WS_HIGH_WATER) overflow(wait);
      };
      socket.onerror = () => {
        // The close event follows with the code; a socket that never opened says no more.
      };
      socket.onclose = (ev) => {
        if (settled) return;
        const code = ev.code;
        const reason = ev.reason || "closed by the server";
        if (!isOpen) {
          fail(new TidingsError(0, "unreachable", `the WebSocket to ${url} did not open (close code ${code})`));
          return;
        }
        if (code === 1008) {
          fail(new TidingsError(403, `ws_close_${code}`, reason));
          return;
        }
        if (code >= 4400 && code < 4500 && code !== 4408 && code !== 4429) {
          fail(new TidingsError(code - 4000, `ws_close_${code}`, reason));
          return;
        }
        if (code === 1000 || closing) {
          done();
          // A job's socket closed normally has sent its last event.
          resolve(new Ended(this.complete || (code === 1000 && job !== null)));
          return;
        }
        fail(new TidingsError(0, "unreachable", `the WebSocket closed (code ${code}): ${reason}`));
      };
    });
  }

  // Polling ----------------------------------------------------------------------------

  private async poll(
    channel: string,
    long: boolean,
    opened: { value: boolean },
    signal: AbortSignal,
  ): Promise<Ended> {
    const interval = this.options.pollInterval ?? 1;
    for (;;) {
      const started = Date.now();
      const before = this.cursor.get(channel) ?? "0";
      const page = await this.client.read(channel, {
        after: before,
        wait: long ? LONG_POLL_WAIT : undefined,
        signal,
      });
      if (signal.aborted) return new Ended(false);
      this.opened(long ? "longpoll" : "poll", opened, true);
      if (page.reset) {
        const first = page.messages.length > 0 ? page.messages[0].id : null;
        const ahead = idAfter(before, first ?? page.next) && before !== (first ?? page.next);
        const wait = this.reset({
          type: "reset",
          channel,
          first,
          reason: ahead ? RESET_AHEAD : RESET_BEHIND,
        });
        if (wait) await wait;
      }
      for (const m of page.messages) {
        const wait = this.accept(m);
        if (wait) await wait;
      }
      if (page.next) {
        this.cursor.set(channel, page.next);
        if (page.reset || page.messages.length > 0) this.last.set(channel, page.next);
      }
      if (this.complete) return new Ended(true);
      let pause = 0;
      if (page.messages.length === 0) {
        // A long poll that came back empty at once (a proxy cutting it): do not spin.
        pause = !long || Date.now() - started < 1000 ? interval : 0;
      }
      if (pause > 0) await sleep(pause, signal);
      if (signal.aborted) return new Ended(false);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Jobs

/** A submitted job: its id, its last known state, and ways to follow it to its end. */
export class Job {
  readonly id: string;
  /** The job as last seen by this handle (updated by every call below). */
  job: JobInfo;
  /** From `submit`: whether a worker asked for jobs of this type lately (null: unknown). */
  readonly served: boolean | null;
  /** From `submit`: true when it made no job, this one holding its `uniqueKey`. */
  readonly deduplicated: boolean;

  /** @internal */
  constructor(
    private readonly client: Tidings,
    job: JobInfo,
    served: boolean | null = null,
  ) {
    this.id = job.id;
    this.job = job;
    this.served = served;
    this.deduplicated = job.deduplicated === true;
  }

  /** The job's current state. */
  async refresh(): Promise<JobInfo> {
    this.job = await this.client.getJob(this.id);
    return this.job;
  }

  /**
   * The job's events from its first ("queued", "running", "progress"..., then the terminal
   * one), over the best transport; the iteration ends after the terminal event.
   */
  events(options: JobEventsOptions = {}): Subscription<JobEvent> {
    const channel = `job.${this.id}`;
    const convert = (item: Item): JobEvent | null => {
      if (item.type !== "message") return null;
      const data = (item.data ?? {}) as JobInfo;
      const job: JobInfo = { ...data };
      if (job.payload === undefined && this.job.payload !== undefined) job.payload = this.job.payload;
      this.job = job;
      return { type: "job", event: item.event ?? job.status, id: item.id, job, time: item.time };
    };
    return new Subscription<JobEvent>(
      this.client,
      { channels: [channel], job: this.id },
      { via: options.via, onStatus: options.onStatus, signal: options.signal },
      convert,
      { [channel]: "0" },
    );
  }

  /**
   * The finished job (succeeded, failed or cancelled), long polling until it ends and
   * riding out dropped connections. `timeout` in seconds: then a TidingsError with code
   * "job_timeout" (the job goes on).
   */
  async wait(timeout?: number): Promise<JobInfo> {
    if (TERMINAL.has(this.job.status)) return this.job;
    const deadline = timeout === undefined ? null : Date.now() + timeout * 1000;
    let failures = 0;
    const never = new AbortController().signal;
    for (;;) {
      let wait = LONG_POLL_WAIT;
      if (deadline !== null) {
        const left = (deadline - Date.now()) / 1000;
        if (left <= 0) {
          throw new TidingsError(0, "job_timeout", `job ${this.id} did not end within ${timeout} s`);
        }
        wait = Math.min(wait, left);
      }
      try {
        this.job = await this.client.getJob(this.id, { wait });
        failures = 0;
      } catch (exc) {
        if (!(exc instanceof TidingsError) || !exc.retryable) throw exc;
        let delay = Math.min(0.25 * 2 ** failures, 5) * (0.5 + Math.random() / 2);
        failures += 1;
        if (deadline !== null) delay = Math.min(delay, Math.max(0, (deadline - Date.now()) / 1000));
        await sleep(delay, never);
        continue;
      }
      if (TERMINAL.has(this.job.status)) return this.job;
    }
  }

  /** Cancel the job: a queued one at once, a running one at its next heartbeat. */
  async cancel(): Promise<JobInfo> {
    this.job = await this.client.json<JobInfo>("POST", `/v1/jobs/${encodeURIComponent(this.id)}/cancel`);
    return this.job;
  }
}

// ---------------------------------------------------------------------------------------
// The client

async function errorOf(response: Response): Promise<TidingsError> {
  let text = "";
  try {
    text = await response.text();
  } catch {
    // the body broke: the status alone speaks
  }
  const header = response.headers.get("retry-after");
  let retryAfter: number | null = null;
  if (header !== null && /^\s*\d+(\.\d+)?\s*$/.test(header)) retryAfter = Number(header);
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON: a proxy's page
  }
  const detail = (body as { error?: { code?: unknown; message?: unknown } } | null)?.error;
  if (detail && typeof detail.code === "string" && typeof detail.message === "string") {
    return new TidingsError(response.status, detail.code, detail.message, body, retryAfter);
  }
  const message = text.trim().slice(0, 500) || response.statusText || "(empty body)";
  return new TidingsError(response.status, `http_${response.status}`, message, body, retryAfter);
}

/** A client of one tidings server. */
export class Tidings {
  /** The server's base URL, without a trailing slash. */
  readonly url: string;
  /** Seconds a request waits for its answer. */
  readonly timeout: number;
  /** The bearer token sent (from the options, or from `login()`), or null. */
  token: string | null;
  private readonly base: URL;
  private readonly fetchFn: typeof fetch;
  private readonly wsCtor: WebSocketConstructor | null;
  private readonly wsGiven: boolean;
  private readonly credentials: RequestCredentials;
  private tokenFromLogin = false;

  constructor(options: TidingsOptions) {
    let base: URL;
    try {
      base = new URL(options.url);
    } catch {
      throw new TidingsError(0, "invalid_url", `url must be an http:// or https:// URL, got ${JSON.stringify(options.url)}`);
    }
    if (base.protocol !== "http:" && base.protocol !== "https:") {
      throw new TidingsError(0, "invalid_url", `url must start with http:// or https://, got ${JSON.stringify(options.url)}`);
    }
    base.pathname = base.pathname.replace(/\/+$/, "");
    base.search = "";
    base.hash = "";
    this.base = base;
    this.url = base.href.replace(/\/+$/, "");
    this.timeout = options.timeout ?? 30;
    this.credentials = options.credentials ?? "include";
    this.token = options.token ?? null;
    const f = options.fetch ?? (globalThis.fetch as typeof fetch | undefined);
    if (!f) throw new TidingsError(0, "unsupported", "this runtime has no fetch(): give one as the `fetch` option");
    this.fetchFn = options.fetch ? options.fetch : f.bind(globalThis);
    this.wsGiven = options.WebSocket !== undefined && options.WebSocket !== null;
    const native = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket ?? null;
    this.wsCtor = options.WebSocket === undefined ? native : options.WebSocket;
  }

  // Plumbing (internal) ----------------------------------------------------------------

  /** @internal An endpoint's path (from the server's root, without the base URL's
   * prefix) with its query. */
  path(path: string, query?: Record<string, string | number | undefined> | URLSearchParams): string {
    let params: URLSearchParams;
    if (query instanceof URLSearchParams) params = query;
    else {
      params = new URLSearchParams();
      for (const [k, v] of Object.entries(query ?? {})) if (v !== undefined) params.append(k, String(v));
    }
    const search = params.toString();
    return search ? `${path}?${search}` : path;
  }

  /** @internal A WebSocket URL for an endpoint. */
  wsUrl(path: string, query: Record<string, string>): string {
    const url = new URL(this.url + this.path(path, query));
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  /** @internal The WebSocket constructor, if any. */
  webSocketCtor(): WebSocketConstructor | null {
    return this.wsCtor;
  }

  /** @internal Null when WebSocket can carry this client's credentials, else why not. */
  webSocketUsable(): string | null {
    if (this.wsCtor === null) {
      return "this runtime has no WebSocket: use another transport, or give a WebSocket constructor (e.g. the ws package) as the `WebSocket` option";
    }
    if (this.token !== null && !this.tokenFromLogin && !this.wsGiven && !isNode()) {
      return "a browser's WebSocket cannot send a bearer token: use another transport, or log in with login() (its session cookie travels with the socket)";
    }
    return null;
  }

  /** @internal */
  openWebSocket(ctor: WebSocketConstructor, url: string): WebSocketLike {
    // A browser's WebSocket takes no headers (its second argument is the subprotocols).
    const headerCapable = this.wsGiven || isNode();
    const socket =
      headerCapable && this.token !== null
        ? new ctor(url, { headers: { Authorization: `Bearer ${this.token}` } })
        : new ctor(url);
    (socket as { binaryType?: string }).binaryType = "arraybuffer";
    return socket;
  }

  /** @internal Send a request to an endpoint (see `path`); a failure to reach the server
   * becomes a status-0 TidingsError, an abort stays an abort. */
  async send(
    path: string,
    init: { method?: string; body?: string; headers?: Record<string, string>; signal?: AbortSignal } = {},
  ): Promise<Response> {
    const headers: Record<string, string> = { Accept: "application/json", ...init.headers };
    if (this.token !== null) headers.Authorization = `Bearer ${this.token}`;
    try {
      return await this.fetchFn(this.url + path, {
        method: init.method ?? "GET",
        headers,
        body: init.body,
        signal: init.signal,
        // Browsers: a session cookie goes along, to another origin too (CORS permitting).
        credentials: this.credentials,
      });
    } catch (exc) {
      if (init.signal?.aborted) throw exc;
      throw unreachable(this.url, exc);
    }
  }

  /** @internal A JSON request and its JSON answer; a TidingsError for an error status. */
  async json<T>(
    method: string,
    path: string,
    body?: unknown,
    extra: { headers?: Record<string, string>; signal?: AbortSignal; timeout?: number } = {},
  ): Promise<T> {
    const headers: Record<string, string> = { ...extra.headers };
    let text: string | undefined;
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      text = JSON.stringify(body);
    }
    const ctl = linked(extra.signal, extra.timeout ?? this.timeout);
    try {
      const response = await this.send(path, { method, body: text, headers, signal: ctl.signal });
      if (!response.ok) throw await errorOf(response);
      if (response.status === 204) return undefined as T;
      const answer = await response.text();
      try {
        return JSON.parse(answer) as T;
      } catch {
        throw new TidingsError(response.status, "malformed", `the server answered with malformed JSON: ${answer.slice(0, 200)}`, answer);
      }
    } catch (exc) {
      if (ctl.timedOut()) throw new TidingsError(0, "timeout", `no answer from ${this.url}${path} within ${extra.timeout ?? this.timeout} s`);
      throw exc;
    } finally {
      ctl.dispose();
    }
  }

  // Channels ---------------------------------------------------------------------------

  /**
   * Publish one message; it resolves once the message is durable.
   * `data` is any JSON value (undefined is sent as null).
   */
  async publish(channel: string, data: unknown, options: PublishOptions = {}): Promise<PublishAck> {
    const body: Record<string, unknown> = { data: data === undefined ? null : data };
    if (options.event !== undefined) body.event = options.event;
    const headers: Record<string, string> = {};
    if (options.idempotencyKey !== undefined) headers["Idempotency-Key"] = options.idempotencyKey;
    return this.json<PublishAck>("POST", `/v1/channels/${encodeURIComponent(channel)}/messages`, body, { headers });
  }

  /** One read of a channel: the messages after a cursor (a short poll, or a long one with `wait`). */
  async read(channel: string, options: ReadOptions = {}): Promise<Page> {
    const query: Record<string, string | number | undefined> = {
      after: options.after,
      limit: options.limit,
      wait: options.wait,
    };
    const timeout = options.wait ? Math.max(this.timeout, options.wait + LONG_POLL_MARGIN) : this.timeout;
    const page = await this.json<{ messages: unknown[]; next: string; reset: boolean }>(
      "GET",
      this.path(`/v1/channels/${encodeURIComponent(channel)}/messages`, query),
      undefined,
      { signal: options.signal, timeout },
    );
    const messages = (page.messages ?? []).map(asMessage).filter((m): m is Message => m !== null);
    return { messages, next: page.next, reset: page.reset };
  }

  /**
   * Follow one channel, or several, in order and without duplicates, resuming by itself
   * after any drop. Iterate it (`for await`) or give callbacks; `close()` ends it.
   */
  subscribe(channels: string | string[], options: SubscribeOptions = {}): Subscription<Message | Reset> {
    const list = [...new Set(typeof channels === "string" ? [channels] : channels)];
    if (list.length === 0) throw new TidingsError(0, "bad_request", "name at least one channel");
    const via = options.via ?? "auto";
    if (!["auto", "ws", "sse", "longpoll", "poll"].includes(via)) {
      throw new TidingsError(0, "bad_request", `via must be auto, ws, sse, longpoll or poll; got ${JSON.stringify(via)}`);
    }
    if (via === "ws") {
      const why = this.webSocketUsable();
      if (why !== null) throw new TidingsError(0, "unsupported", why);
    }
    const after: Record<string, string | null> = {};
    for (const ch of list) {
      const given = options.after;
      after[ch] = given === undefined ? null : typeof given === "string" ? given : (given[ch] ?? null);
    }
    return new Subscription<Item>(this, { channels: list, job: null }, options, (item) => item, after);
  }

  // Jobs -------------------------------------------------------------------------------

  /** Submit a job; the handle follows it. */
  async submit(type: string, payload: unknown = null, options: SubmitOptions = {}): Promise<Job> {
    const body: Record<string, unknown> = { type, payload: payload === undefined ? null : payload };
    if (options.maxAttempts !== undefined) body.max_attempts = options.maxAttempts;
    if (options.timeout !== undefined) body.timeout = options.timeout;
    if (options.delay !== undefined) body.delay = options.delay;
    if (options.priority !== undefined) body.priority = options.priority;
    if (options.uniqueKey !== undefined) body.unique_key = options.uniqueKey;
    if (options.group !== undefined) body.group = options.group;
    if (options.after !== undefined) body.after = options.after;
    const headers: Record<string, string> = {};
    if (options.idempotencyKey !== undefined) headers["Idempotency-Key"] = options.idempotencyKey;
    const job = await this.json<JobInfo>("POST", "/v1/jobs", body, { headers });
    return new Job(this, job, typeof job.served === "boolean" ? job.served : null);
  }

  /**
   * Submit a graph of jobs at once: all are made, or none (a 422 or 409 TidingsError says
   * what to fix: a cycle, a ref used twice, an `after` naming neither a ref nor a job).
   * Resolves to a handle on each job made, by ref, in the batch's order:
   *
   *     const jobs = await t.submitBatch([
   *       { ref: "a", type: "fetch", payload: 1 },
   *       { ref: "b", type: "fetch", payload: 2 },
   *       { ref: "sum", type: "add", after: ["a", "b"] },
   *     ]);
   *     await jobs.get("sum")!.wait();
   */
  async submitBatch(jobs: BatchJob[]): Promise<Map<string, Job>> {
    const body = jobs.map((job) => {
      const out: Record<string, unknown> = { ref: job.ref, type: job.type, payload: job.payload === undefined ? null : job.payload };
      if (job.maxAttempts !== undefined) out.max_attempts = job.maxAttempts;
      if (job.timeout !== undefined) out.timeout = job.timeout;
      if (job.delay !== undefined) out.delay = job.delay;
      if (job.priority !== undefined) out.priority = job.priority;
      if (job.uniqueKey !== undefined) out.unique_key = job.uniqueKey;
      if (job.group !== undefined) out.group = job.group;
      if (job.after !== undefined) out.after = job.after;
      return out;
    });
    const answer = await this.json<{ jobs: JobInfo[] }>("POST", "/v1/jobs/batch", { jobs: body });
    return new Map(answer.jobs.map((job) => [job.ref ?? job.id, new Job(this, job)]));
  }

  /** A handle on an existing job (fetched once: a 404 TidingsError when there is none). */
  async job(id: string): Promise<Job> {
    return new Job(this, await this.getJob(id));
  }

  /** A job now, or with `wait` (seconds) once it ends or after `wait` seconds. */
  async getJob(id: string, options: { wait?: number; signal?: AbortSignal } = {}): Promise<JobInfo> {
    const timeout = options.wait ? Math.max(this.timeout, options.wait + LONG_POLL_MARGIN) : this.timeout;
    const path = `/v1/jobs/${encodeURIComponent(id)}` + (options.wait ? `?wait=${options.wait}` : "");
    return this.json<JobInfo>("GET", path, undefined, { signal: options.signal, timeout });
  }

  // Schedules --------------------------------------------------------------------------

  /**
   * Create or replace the schedule `name`: a job of `type` with `payload` at each slot of
   * `cron` (read in `timezone`) or every `every` seconds; each firing's job id is
   * `sched:{name}:{slot as YYYYmmddTHHMMSSZ}`. A bad cron expression or an unknown time
   * zone is a 422 TidingsError saying what to fix.
   */
  async putSchedule(name: string, type: string, payload: unknown = null, options: ScheduleOptions = {}): Promise<ScheduleInfo> {
    if ((options.cron === undefined) === (options.every === undefined)) {
      throw new TidingsError(0, "bad_request", "give exactly one of cron (five fields) or every (seconds)");
    }
    const body: Record<string, unknown> = { type, payload: payload === undefined ? null : payload };
    if (options.cron !== undefined) body.cron = options.cron;
    if (options.every !== undefined) body.every = options.every;
    if (options.timezone !== undefined) body.timezone = options.timezone;
    if (options.maxAttempts !== undefined) body.max_attempts = options.maxAttempts;
    if (options.timeout !== undefined) body.timeout = options.timeout;
    if (options.priority !== undefined) body.priority = options.priority;
    if (options.catchUp !== undefined) body.catch_up = options.catchUp;
    return this.json<ScheduleInfo>("PUT", `/v1/schedules/${encodeURIComponent(name)}`, body);
  }

  /** One schedule, with its next slot and its last firing's job (404 when there is none). */
  async getSchedule(name: string): Promise<ScheduleInfo> {
    return this.json<ScheduleInfo>("GET", `/v1/schedules/${encodeURIComponent(name)}`);
  }

  /** The schedules this principal may see, by name: at most `limit` (default 1000); the
   * server's pages are followed until then. */
  async listSchedules(options: { limit?: number; signal?: AbortSignal } = {}): Promise<ScheduleInfo[]> {
    const limit = options.limit ?? 1000;
    const out: ScheduleInfo[] = [];
    let after: string | undefined;
    while (out.length < limit) {
      const page = await this.json<{ schedules: ScheduleInfo[]; next: string | null }>(
        "GET",
        this.path("/v1/schedules", { after, limit: Math.min(limit - out.length, 1000) }),
        undefined,
        { signal: options.signal },
      );
      out.push(...page.schedules);
      if (page.next === null) break;
      after = page.next;
    }
    return out.slice(0, limit);
  }

  /** Remove a schedule (its owner or an admin); the jobs it submitted stay. */
  async deleteSchedule(name: string): Promise<void> {
    await this.json<void>("DELETE", `/v1/schedules/${encodeURIComponent(name)}`);
  }

  // Auth -------------------------------------------------------------------------------

  /** Log in: later requests carry the session (its token, and in browsers its cookie). */
  async login(user: string, password: string): Promise<LoginAnswer> {
    const answer = await this.json<LoginAnswer>("POST", "/v1/auth/login", { username: user, password });
    this.token = answer.token;
    this.tokenFromLogin = true;
    return answer;
  }

  /** End the session (server side too); later requests are anonymous. */
  async logout(): Promise<void> {
    try {
      await this.json("POST", "/v1/auth/logout");
    } finally {
      if (this.tokenFromLogin) {
        this.token = null;
        this.tokenFromLogin = false;
      }
    }
  }

  /** Who this client acts as, with its permissions. */
  async me(): Promise<Me> {
    return this.json<Me>("GET", "/v1/auth/me");
  }
}
