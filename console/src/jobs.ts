// Jobs: the queues with their counts, rates and limits (admins edit them), a job list
// paged by the server (filters, dead letters, retry), the submit form, and one job's page
// followed live on `job.<id>`.

import { TidingsError, api, client, query, seg } from "./api.js";
import type { JobInfo, Message, Subscription } from "../client/tidings.js";
import { add, brief, fill, h, num, rate, short, show, when } from "./dom.js";
import { type Limits, limitsEditor, limitsText, heldText } from "./limits.js";
import type { Ctx } from "./main.js";
import { may, mayAny, mayOwn, type Me } from "./perms.js";
import { type Scope, button, emptyRow, facts, field, refusal, section, showError, statusBadge, table, title } from "./ui.js";

/** A job as the API serves it. */
export type Job = JobInfo;

interface JobList {
  jobs: Job[];
  next: string | null;
}

// `waiting`: for its parents (`after`) to succeed.
const STATUSES = ["waiting", "queued", "running", "succeeded", "failed", "cancelled"] as const;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const POLL = 2000;
const PAGE_SIZE = 50;
/** How many further stretches the job list reads while a filtered page comes back empty. */
const EMPTY_STRETCHES = 10;
/** The most events a job's page shows (newest first); older ones leave the table. */
const EVENT_ROWS = 200;

export const jobHref = (id: string): string => `#/jobs/${seg(id)}`;

/** A job's last error as one line: "Type: message". */
function errorLine(error: unknown): string {
  if (error === null || error === undefined) return "";
  if (typeof error === "object") {
    const e = error as { type?: unknown; message?: unknown };
    if (typeof e.message === "string") return typeof e.type === "string" ? `${e.type}: ${e.message}` : e.message;
  }
  return brief(error, 300);
}

function percent(job: Job): number {
  if (job.status === "succeeded") return 100;
  const p = typeof job.progress === "number" && Number.isFinite(job.progress) ? job.progress : 0;
  return Math.max(0, Math.min(100, p));
}

/** A progress bar with role progressbar and aria-valuenow (0..100). */
export function progressBar(testid: string): { el: HTMLElement; set: (job: Job) => void } {
  const bar = h("div", { class: "bar" });
  const label = h("span", { class: "progress-label", "data-testid": `${testid}-text` });
  const el = h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0, "data-testid": testid }, bar, label);
  const set = (job: Job) => {
    const p = percent(job);
    el.setAttribute("aria-valuenow", String(Math.round(p)));
    el.dataset.status = job.status;
    bar.style.width = `${p}%`;
    label.textContent = `${Math.round(p)} %`;
  };
  return { el, set };
}

// ---------------------------------------------------------------------------------------
// Actions on a job

async function retryJob(scope: Scope, id: string): Promise<Job | undefined> {
  return scope.act(() => api<Job>("POST", `/v1/jobs/${seg(id)}/retry`));
}

async function cancelJob(scope: Scope, id: string): Promise<Job | undefined> {
  return scope.act(() => api<Job>("POST", `/v1/jobs/${seg(id)}/cancel`));
}

function actions(me: Me, scope: Scope, job: Job, done: (job: Job) => void): HTMLElement[] {
  if (!mayOwn(me, job)) return [];
  const out: HTMLElement[] = [];
  if (job.status === "failed" || job.status === "cancelled") {
    out.push(button("Retry", "job-retry", () => void retryJob(scope, job.id).then((j) => j && done(j))));
  }
  if ((job.status === "waiting" || job.status === "queued" || job.status === "running") && !job.cancel_requested) {
    out.push(button("Cancel", "job-cancel", () => void cancelJob(scope, job.id).then((j) => j && done(j)), "danger"));
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The jobs page

interface Sample {
  time: number;
  finished: number; // succeeded + failed
  total: number;
}

export function jobsPage(view: HTMLElement, ctx: Ctx): void {
  const { scope, me } = ctx;
  let type = ctx.query.get("type") ?? "";
  let status = ctx.query.get("status") ?? "";
  let befores: string[] = [""];
  let next: string | null = null;

  // Queues ---------------------------------------------------------------------------------
  const { table: qt, body: qbody } = table("queues-table", ["Type", ...STATUSES.map((x) => `#${x}`), "#Finished/s", "#Submitted/s", "Limits", ""]);
  // Admins set a type's limits here; the others see them read-only in the table.
  const editor = me.permissions.admin ? limitsEditor(scope, () => queuePoll.now()) : null;
  const types = h("datalist", { id: "job-types" });
  let last = new Map<string, Sample>();
  const queuePoll = scope.poll(async (signal) => {
    const answer = await api<{ queues: Record<string, Record<string, number>>; limits?: Record<string, Limits | null> }>("GET", "/v1/queues", undefined, signal);
    const now = performance.now() / 1000;
    const seen = new Map<string, Sample>();
    const limits = answer.limits ?? {};
    // A limited type with no job yet has a row too: its limits are shown and edited there.
    const names = [...new Set([...Object.keys(answer.queues), ...Object.keys(limits)])].sort();
    fill(types, names.map((n) => h("option", { value: n })));
    if (names.length === 0) {
      fill(qbody, emptyRow(STATUSES.length + 5, "No jobs yet.", "queues-empty"));
      last = seen;
      return;
    }
    fill(
      qbody,
      names.map((name) => {
        const counts = answer.queues[name] ?? {};
        const limit = limits[name] ?? null;
        const sample: Sample = {
          time: now,
          finished: (counts.succeeded ?? 0) + (counts.failed ?? 0),
          total: Object.values(counts).reduce((a, b) => a + b, 0),
        };
        seen.set(name, sample);
        const before = last.get(name);
        const dt = before ? sample.time - before.time : 0;
        const per = (a: number, b: number) => (dt > 0 ? Math.max(0, a - b) / dt : 0);
        const filter = h("button", { type: "button", class: "link", "data-testid": "queue-filter", onclick: () => setFilter(name, status) }, name);
        return h(
          "tr",
          { "data-testid": "queue-row", "data-type": name },
          h("td", null, filter),
          STATUSES.map((s) => h("td", { class: `num${counts[s] ? ` count-${s}` : " zero"}`, "data-testid": `queue-${s}` }, num(counts[s] ?? 0))),
          h("td", { class: "num", "data-testid": "queue-finished-rate" }, before ? rate(per(sample.finished, before.finished)) : "…"),
          h("td", { class: "num", "data-testid": "queue-submitted-rate" }, before ? rate(per(sample.total, before.total)) : "…"),
          h(
            "td",
            { class: "limits-cell" },
            h("div", { "data-testid": "queue-limits", class: limit ? null : "muted" }, limit ? limitsText(limit) : "none"),
            limit ? h("div", { class: "small", "data-testid": "queue-held" }, "held back: ", heldText(limit)) : null,
          ),
          h("td", { class: "actions" }, editor ? button(limit ? "Edit" : "Limit", "queue-limits-edit", () => editor.open(name, limit)) : null),
        );
      }),
    );
    last = seen;
  }, POLL);

  // Submit ---------------------------------------------------------------------------------
  let submitCard: HTMLElement | null = null;
  let openSubmit: HTMLButtonElement | null = null;
  if (mayAny(me, "submit")) {
    const jtype = h("input", { required: true, list: "job-types", placeholder: "e.g. transcode", "data-testid": "submit-type" });
    const payload = h("textarea", { rows: 4, "data-testid": "submit-payload", value: "{}" });
    const attempts = h("input", { type: "number", min: 1, step: 1, placeholder: "default", "data-testid": "submit-max-attempts" });
    const delay = h("input", { type: "number", min: 0, step: "any", placeholder: "0", "data-testid": "submit-delay" });
    const priority = h("input", { type: "number", step: 1, placeholder: "0", "data-testid": "submit-priority" });
    const afterIds = h("input", { placeholder: "none", "data-testid": "submit-after" });
    const group = h("input", { placeholder: "none", "data-testid": "submit-group" });
    const uniqueKey = h("input", { placeholder: "none", "data-testid": "submit-unique-key" });
    const note = h("p", { class: "error", "data-testid": "submit-error", role: "alert" });
    const submit = h("button", { type: "submit", class: "primary", "data-testid": "submit-job" }, "Submit job");
    const form = h(
      "form",
      { class: "submit-form", "data-testid": "submit-form" },
      h(
        "div",
        { class: "submit-fields" },
        field("Type", jtype),
        h("div", { class: "row" }, field("Max attempts", attempts), field("Delay (s)", delay), field("Priority", priority)),
        h(
          "div",
          { class: "row" },
          field("After (job ids)", afterIds, "comma-separated: it waits until they all succeeded"),
          field("Group", group, "what the type's group concurrency counts"),
          field("Unique key", uniqueKey, "a job holding it is answered instead"),
        ),
      ),
      h("div", { class: "submit-payload" }, field("Payload (JSON)", payload)),
      h("div", { class: "row submit-go" }, submit, note),
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      note.textContent = "";
      let data: unknown;
      try {
        data = JSON.parse(payload.value.trim() || "null");
      } catch (exc) {
        note.textContent = `The payload is not JSON: ${(exc as Error).message}`;
        return;
      }
      const t = jtype.value.trim();
      if (!may(me, "submit", t)) {
        note.textContent = `${me.user} may not submit jobs of type ${t}.`;
        return;
      }
      const numberOf = (el: HTMLInputElement) => (el.value.trim() === "" ? undefined : Number(el.value));
      const textOf = (el: HTMLInputElement) => el.value.trim() || undefined;
      const parents = afterIds.value
        .split(",")
        .map((x) => x.trim())
        .filter((x) => x !== "");
      submit.disabled = true;
      void scope
        .act(() =>
          client.submit(t, data, {
            maxAttempts: numberOf(attempts),
            delay: numberOf(delay),
            priority: numberOf(priority),
            after: parents.length ? parents : undefined,
            group: textOf(group),
            uniqueKey: textOf(uniqueKey),
          }),
        )
        .then((job) => {
          if (job) location.hash = jobHref(job.id);
        })
        .finally(() => (submit.disabled = false));
    });
    submitCard = section("Submit a job", "submit-card", form);
    submitCard.hidden = !ctx.query.has("submit");
    openSubmit = button("Submit a job", "submit-open", () => {
      const card = submitCard as HTMLElement;
      card.hidden = !card.hidden;
      openSubmit?.classList.toggle("active", !card.hidden);
      if (!card.hidden) jtype.focus();
    });
    openSubmit.classList.toggle("active", !submitCard.hidden);
  }

  // The list -------------------------------------------------------------------------------
  const typeInput = h("input", { type: "search", list: "job-types", placeholder: "any type", value: type, "data-testid": "jobs-filter-type", "aria-label": "Filter by type" });
  const statusSelect = h(
    "select",
    { "data-testid": "jobs-filter-status", "aria-label": "Filter by status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s }, s)),
  );
  statusSelect.value = status;
  const dead = button("Dead letters", "jobs-dead-letters", () => setFilter(type, status === "failed" ? "" : "failed"));
  const newest = button("Newest", "jobs-newest", () => go([""]));
  const older = button("Older ›", "jobs-older", () => next !== null && go([...befores, next]));
  const newer = button("‹ Newer", "jobs-newer", () => go(befores.slice(0, -1)));
  const where = h("span", { class: "muted", "data-testid": "jobs-where" });
  const heading = h("h2", { "data-testid": "jobs-heading" });
  const { table: lt, body: lbody } = table("jobs-table", ["Job", "Type", "Status", "#Attempt", "#Progress", "Created", "Error", ""]);

  const renderList = (page: JobList) => {
    next = page.next;
    older.disabled = next === null;
    newest.disabled = befores.length <= 1;
    newer.disabled = befores.length <= 1;
    dead.classList.toggle("active", status === "failed");
    heading.textContent =
      status === "failed" ? "Dead letters: jobs that used up their attempts" : status === "waiting" ? "Jobs waiting on their parents, newest first" : "Jobs, newest first";
    where.textContent = `${page.jobs.length} shown${next === null ? " · no older" : ""}`;
    if (page.jobs.length === 0) {
      const text = next !== null ? "No matching job in this stretch: look further with “Older”." : status === "failed" ? "No dead letters." : "No jobs match.";
      fill(lbody, emptyRow(8, text, "jobs-empty"));
      return;
    }
    fill(
      lbody,
      page.jobs.map((job) =>
        h(
          "tr",
          { "data-testid": "job-row", "data-id": job.id, "data-status": job.status },
          h("td", { class: "mono" }, h("a", { href: jobHref(job.id), "data-testid": "job-link" }, job.id)),
          h("td", null, job.type),
          h("td", null, statusBadge(job.status, "job-row-status")),
          h("td", { class: "num" }, `${job.attempt}/${job.max_attempts}`),
          h("td", { class: "num" }, job.status === "running" ? `${Math.round(percent(job))} %` : ""),
          h("td", { class: "nowrap", title: `created ${when(job.created_at)}, updated ${when(job.updated_at)}` }, short(job.created_at)),
          h("td", { class: "error-cell", "data-testid": "job-row-error" }, errorLine(job.error)),
          h("td", { class: "actions" }, actions(me, scope, job, () => listPoll.now())),
        ),
      ),
    );
  };
  const listPoll = scope.poll(async (signal) => {
    // A filtered page may come back empty with a `next` (the Redis store scans a bounded
    // stretch of jobs per page): a few more stretches are read before showing it so.
    let before = befores[befores.length - 1];
    let page: JobList;
    for (let stretch = 0; ; stretch++) {
      page = await api<JobList>("GET", `/v1/jobs${query({ type, status, before, limit: PAGE_SIZE })}`, undefined, signal);
      if (page.jobs.length > 0 || page.next === null || stretch >= EMPTY_STRETCHES) break;
      before = page.next;
    }
    renderList(page);
  }, POLL);

  function go(stack: string[]): void {
    befores = stack.length ? stack : [""];
    listPoll.now();
  }
  function setFilter(t: string, s: string): void {
    type = t;
    status = s;
    typeInput.value = t;
    statusSelect.value = s;
    history.replaceState(null, "", `#/jobs${query({ type, status })}`);
    go([""]);
  }
  let typing: ReturnType<typeof setTimeout> | null = null;
  typeInput.addEventListener("input", () => {
    if (typing) clearTimeout(typing);
    typing = setTimeout(() => setFilter(typeInput.value.trim(), status), 300);
  });
  scope.defer(() => typing && clearTimeout(typing));
  statusSelect.addEventListener("change", () => setFilter(type, statusSelect.value));

  add(view, 
    title("Jobs", openSubmit),
    types,
    submitCard,
    section(
      "Queues",
      "queues-card",
      h("div", { class: "scroll" }, qt),
      editor ? editor.el : h("p", { class: "hint", "data-testid": "limits-read-only" }, "Limits are set by admins."),
    ),
    h(
      "section",
      { class: "card", "data-testid": "jobs-card" },
      heading,
      h("div", { class: "toolbar" }, typeInput, statusSelect, dead, h("span", { class: "spacer" }), where, newest, newer, older),
      h("div", { class: "scroll" }, lt),
    ),
  );
}

// ---------------------------------------------------------------------------------------
// One job

/** A job's `errors`: one row per failed attempt. */
function errorsTable(errors: unknown[]): HTMLTableElement {
  const { table: t, body } = table("job-errors-table", ["#Attempt", "Error"]);
  t.classList.add("errors-table");
  fill(
    body,
    errors.map((e, i) => {
      const attempt = e && typeof e === "object" && typeof (e as { attempt?: unknown }).attempt === "number" ? (e as { attempt: number }).attempt : i + 1;
      return h("tr", { "data-testid": "job-errors-row" }, h("td", { class: "num" }, String(attempt)), h("td", { class: "error-cell" }, errorLine(e)));
    }),
  );
  return t;
}

// Why a child was cancelled by its parents, as the server says it (transitions.parent_problem).
const PARENT_REASONS: Record<string, string> = {
  ParentFailed: "its parent failed",
  ParentCancelled: "its parent was cancelled",
  ParentGone: "its parent no longer exists",
};

/** A job's parents, group and unique key, for those it has. */
function optionalFacts(j: Job): [string, HTMLElement | string, string][] {
  const out: [string, HTMLElement | string, string][] = [];
  const parents = j.after ?? [];
  if (parents.length) {
    out.push([
      "After",
      h("span", { class: "mono" }, parents.map((p, i) => [i ? ", " : "", h("a", { href: jobHref(p), "data-testid": "job-parent" }, p)])),
      "job-after",
    ]);
  }
  if (j.group) out.push(["Group", j.group, "job-group"]);
  if (j.unique_key) out.push(["Unique key", j.unique_key, "job-unique-key"]);
  return out;
}

/** "Cancelled because its parent failed: <link>" for a child its parents ended, else null. */
function parentReason(error: unknown): HTMLElement | null {
  const e = (error ?? {}) as { type?: unknown; parent?: unknown };
  if (typeof e.type !== "string" || !(e.type in PARENT_REASONS)) return null;
  const parent = typeof e.parent === "string" ? e.parent : null;
  return h(
    "p",
    { class: "cancel-reason", "data-testid": "job-cancel-reason", "data-reason": e.type },
    h("strong", null, `Cancelled because ${PARENT_REASONS[e.type]}`),
    parent ? [": ", h("a", { href: jobHref(parent), class: "mono", "data-testid": "job-cancel-parent" }, parent)] : null,
    ` (${e.type})`,
  );
}

export function jobPage(view: HTMLElement, ctx: Ctx): void {
  const { scope, me } = ctx;
  const id = ctx.params[0];
  const head = title(`Job ${id}`, h("a", { href: "#/jobs", class: "back", "data-testid": "back" }, "‹ All jobs"));
  const body = h("div", null, h("p", { class: "muted" }, "Loading…"));
  add(view, head, body);

  let job: Job | null = null;
  let sub: Subscription | null = null;
  scope.defer(() => sub?.close());

  const badge = h("span", { "data-testid": "job-status-box" });
  const progress = progressBar("job-progress");
  const message = h("p", { class: "job-message", "data-testid": "job-message" });
  const buttons = h("div", { class: "row", "data-testid": "job-actions" });
  const factsBox = h("div");
  const errorBox = h("div", { "data-testid": "job-error-box" });
  const resultBox = h("pre", { class: "code", "data-testid": "job-result" });
  const payloadBox = h("pre", { class: "code", "data-testid": "job-payload" });
  const { table: et, body: ebody } = table("job-events", ["Time", "Event", "Status", "#Progress", "Message"]);

  const render = () => {
    if (job === null) return;
    const j = job;
    fill(badge, statusBadge(j.status, "job-status"), j.cancel_requested && !TERMINAL.has(j.status) ? h("span", { class: "muted" }, " cancel requested") : null);
    progress.set(j);
    message.textContent = j.message ?? "";
    fill(buttons, actions(me, scope, j, (changed) => restart(changed)));
    fill(
      factsBox,
      facts("job-facts", [
        ["Type", j.type, "job-type"],
        ["Attempt", `${j.attempt} of ${j.max_attempts}`, "job-attempt"],
        ["Worker", j.worker ? h("a", { href: "#/workers" }, j.worker) : "—", "job-worker"],
        ["Priority", String(j.priority)],
        ...optionalFacts(j),
        ["Timeout", j.timeout === null ? "—" : `${j.timeout} s`],
        ["Submitted by", j.submitted_by ?? "anonymous"],
        ["Created", when(j.created_at)],
        ["Runs at", when(j.run_at)],
        ["Started", when(j.started_at) || "—"],
        ["Finished", when(j.finished_at) || "—"],
        ["Lease expires", when(j.lease_expires_at) || "—"],
      ]),
    );
    const error = j.error as { type?: string; message?: string; traceback?: string } | null;
    const history = (j.errors ?? []) as unknown[];
    fill(
      errorBox,
      j.status === "cancelled" ? parentReason(j.error) : null,
      error ? h("p", { class: "error", "data-testid": "job-error" }, errorLine(error)) : h("p", { class: "muted", "data-testid": "job-no-error" }, "No error."),
      error && typeof error === "object" && typeof error.traceback === "string" ? h("pre", { class: "code traceback", "data-testid": "job-traceback" }, error.traceback) : null,
      history.length ? h("details", { "data-testid": "job-errors", open: j.status === "failed" }, h("summary", null, `Errors, attempt by attempt (${history.length})`), errorsTable(history)) : null,
    );
    resultBox.textContent = j.result === null || j.result === undefined ? "—" : show(j.result);
    payloadBox.textContent = show(j.payload);
  };

  const addEvent = (e: { event: string; job: Job; time: string }) => {
    ebody.prepend(
      h(
        "tr",
        { "data-testid": "job-event", "data-event": e.event },
        h("td", { class: "nowrap", title: when(e.time) }, short(e.time)),
        h("td", null, e.event),
        h("td", null, e.job.status),
        h("td", { class: "num" }, typeof e.job.progress === "number" ? `${Math.round(e.job.progress)} %` : ""),
        h("td", null, e.job.message ?? ""),
      ),
    );
    while (ebody.rows.length > EVENT_ROWS) ebody.deleteRow(-1);
  };

  // The full job (payload, errors, traceback) from GET; live changes from its channel.
  const load = async (): Promise<void> => {
    job = await api<Job>("GET", `/v1/jobs/${seg(id)}`, undefined, scope.signal);
    render();
  };
  // The job's channel, from its first event, for as long as the page shows it: a retry
  // (from here or elsewhere) goes on in the same view.
  let reloading = false;
  const onMessage = (m: Message) => {
    if (scope.closed) return;
    const data = (m.data ?? {}) as Job;
    addEvent({ event: m.event ?? data.status, job: data, time: m.time });
    // An event carries no payload, errors nor traceback: those of the last GET stay while
    // its error is the same one.
    const keep = job;
    job = { ...data, payload: keep?.payload, errors: keep?.errors };
    if (keep && errorLine(keep.error) === errorLine(data.error)) job.error = keep.error;
    render();
    // One GET for any number of terminal events close together (a replay of several
    // attempts brings one each).
    if (TERMINAL.has(data.status) && !reloading) {
      reloading = true;
      scope.later(() => {
        reloading = false;
        void scope.act(load);
      }, 200);
    }
  };
  const follow = () => {
    sub = client.subscribe(`job.${id}`, { via: "auto", after: "0", onMessage, onError: (e) => showError(e, "job-live") });
  };
  const restart = (changed: Job) => {
    job = { ...changed, payload: changed.payload ?? job?.payload, errors: changed.errors ?? job?.errors };
    render();
  };

  void (async () => {
    try {
      await load();
    } catch (exc) {
      if (scope.closed) return;
      fill(body, refusal(exc instanceof TidingsError && exc.status === 404 ? new TidingsError(404, "not_found", `no job ${id}: it never existed, or it ended long enough ago to be swept`) : exc));
      return;
    }
    fill(
      body,
      h(
        "section",
        { class: "card job-live" },
        h("div", { class: "row spread" }, badge, buttons),
        progress.el,
        message,
      ),
      h("div", { class: "grid" }, section("Details", "job-details", factsBox), section("Error", "job-error-card", errorBox)),
      h("div", { class: "grid" }, section("Result", "job-result-card", resultBox), section("Payload", "job-payload-card", payloadBox)),
      section("Events", "job-events-card", h("div", { class: "scroll" }, et)),
    );
    follow();
  })();
}
