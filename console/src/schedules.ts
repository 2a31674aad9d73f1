// Schedules: those this principal may see (GET /v1/schedules, paged by the server), each
// with its cron expression or period, time zone, next slot and last firing; a form that
// adds or replaces one (PUT /v1/schedules/{name}) and shows the server's refusal (a bad
// cron expression, an unknown time zone: 422) beside its fields; delete with a confirm.

import { TidingsError, api, client, query } from "./api.js";
import type { ScheduleInfo } from "../client/tidings.js";
import { add, ago, fill, h, show, short, when } from "./dom.js";
import { jobHref } from "./jobs.js";
import type { Ctx } from "./main.js";
import { may, type Me } from "./perms.js";
import { type Scope, button, confirmButton, describe, emptyRow, field, section, showError, table, title } from "./ui.js";

const PAGE_SIZE = 50;
const POLL = 2000;

// A schedule's slots in one line: its cron expression, or "every 90 s".
function whenText(s: ScheduleInfo): string {
  return s.cron !== null ? s.cron : `every ${s.every} s`;
}

/** The jobs page listing a schedule's firings: its type's jobs (the job list filters by
 * type; each firing's id is sched:{name}:{slot}). */
const firingsHref = (s: ScheduleInfo): string => `#/jobs${query({ type: s.type })}`;

/** May `me` replace or delete `s`: its owner or an admin (as the server's `_may_change`). */
function mayChange(me: Me, s: ScheduleInfo): boolean {
  return me.permissions.admin || (!me.anonymous && s.owner === me.user);
}

/** The add/edit form; `open(s)` fills it with a schedule to replace it. */
function scheduleForm(scope: Scope, me: Me, saved: (s: ScheduleInfo) => void): { el: HTMLElement; open: (s: ScheduleInfo | null) => void } {
  const name = h("input", { required: true, placeholder: "e.g. nightly-report", pattern: "[A-Za-z0-9._:\\-]{1,128}", "data-testid": "schedule-name" });
  const type = h("input", { required: true, list: "schedule-types", placeholder: "e.g. report", "data-testid": "schedule-type" });
  const cron = h("input", { placeholder: "e.g. */5 * * * *", "data-testid": "schedule-cron" });
  const every = h("input", { type: "number", step: "any", placeholder: "seconds", "data-testid": "schedule-every" });
  const timezone = h("input", { placeholder: "UTC", "data-testid": "schedule-timezone" });
  const payload = h("textarea", { rows: 3, value: "null", "data-testid": "schedule-payload" });
  const attempts = h("input", { type: "number", step: 1, placeholder: "3", "data-testid": "schedule-max-attempts" });
  const catchUp = h("select", { "data-testid": "schedule-catch-up" }, h("option", { value: "latest" }, "latest: fire the missed slot once"), h("option", { value: "skip" }, "skip: fire none"));
  const error = h("p", { class: "error", "data-testid": "schedule-error", role: "alert" });
  const result = h("p", { class: "muted", "data-testid": "schedule-result", "aria-live": "polite" });
  const save = h("button", { type: "submit", class: "primary", "data-testid": "schedule-save" }, "Save schedule");
  const form = h(
    "form",
    { class: "schedule-form", "data-testid": "schedule-form" },
    h("div", { class: "row" }, field("Name", name, "A-Z a-z 0-9 . _ : -"), field("Job type", type)),
    h(
      "div",
      { class: "row" },
      field("Cron", cron, "five fields: minute hour day month weekday"),
      field("Time zone", timezone, "IANA name, for cron: e.g. Europe/Paris"),
      field("or every (s)", every, "instead of cron"),
    ),
    h("div", { class: "row" }, field("Max attempts", attempts), field("After downtime", catchUp)),
    field("Payload (JSON)", payload),
    h("div", { class: "row" }, save, error, result),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    error.textContent = "";
    result.textContent = "";
    let data: unknown;
    try {
      data = JSON.parse(payload.value.trim() || "null");
    } catch (exc) {
      error.textContent = `The payload is not JSON: ${(exc as Error).message}`;
      return;
    }
    const t = type.value.trim();
    if (!may(me, "submit", t)) {
      error.textContent = `${me.user} may not submit jobs of type ${t}, so may not schedule them.`;
      return;
    }
    const c = cron.value.trim();
    const e = every.value.trim();
    if ((c === "") === (e === "")) {
      error.textContent = "Give a cron expression or a period in seconds (one of them).";
      return;
    }
    const n = name.value.trim();
    save.disabled = true;
    client
      .putSchedule(n, t, data, {
        cron: c || undefined,
        every: e ? Number(e) : undefined,
        timezone: timezone.value.trim() || undefined,
        maxAttempts: attempts.value.trim() ? Number(attempts.value) : undefined,
        catchUp: catchUp.value as "latest" | "skip",
      })
      .then((stored) => {
        result.textContent = `Saved ${stored.name}: next at ${when(stored.next_run_at)}.`;
        saved(stored);
      })
      .catch((exc) => {
        if (scope.closed) return;
        // A lost session asks for a login; any other refusal is the server's, shown here.
        if (exc instanceof TidingsError && exc.status === 401) showError(exc);
        else error.textContent = describe(exc);
      })
      .finally(() => (save.disabled = false));
  });
  const box = section("Add a schedule", "schedule-form-card", form);
  const heading = box.querySelector("h2") as HTMLElement;
  const open = (s: ScheduleInfo | null) => {
    heading.textContent = s ? `Edit ${s.name}` : "Add a schedule";
    name.value = s?.name ?? "";
    name.readOnly = s !== null;
    type.value = s?.type ?? "";
    cron.value = s?.cron ?? "";
    every.value = s?.every != null ? String(s.every) : "";
    timezone.value = s?.timezone ?? "";
    attempts.value = s ? String(s.max_attempts) : "";
    catchUp.value = s?.catch_up ?? "latest";
    payload.value = s ? show(s.payload) : "null";
    error.textContent = "";
    result.textContent = "";
    (s ? type : name).focus();
  };
  return { el: box, open };
}

export function schedulesPage(view: HTMLElement, ctx: Ctx): void {
  const { scope, me } = ctx;
  // The `after` of each page shown so far (the first: ""), as the channel list pages.
  let afters: string[] = [""];
  let next: string | null = null;
  const types = h("datalist", { id: "schedule-types" });
  const { table: t, body } = table("schedules-table", ["Name", "Type", "When", "Time zone", "Next", "Last firing", "Owner", ""]);
  const where = h("span", { class: "muted", "data-testid": "schedules-where" });
  const older = button("Next ›", "schedules-next", () => next !== null && go([...afters, next]));
  const newer = button("‹ Previous", "schedules-prev", () => go(afters.slice(0, -1)));
  const form = scheduleForm(scope, me, () => poll.now());
  const poll = scope.poll(async (signal) => {
    const after = afters[afters.length - 1];
    const page = await api<{ schedules: ScheduleInfo[]; next: string | null }>("GET", `/v1/schedules${query({ after, limit: PAGE_SIZE })}`, undefined, signal);
    next = page.next;
    older.disabled = next === null;
    newer.disabled = afters.length <= 1;
    where.textContent = `page ${afters.length} · ${page.schedules.length} shown${next === null ? "" : " · more follow"}`;
    fill(types, [...new Set(page.schedules.map((s) => s.type))].map((x) => h("option", { value: x })));
    fill(
      body,
      page.schedules.length === 0
        ? emptyRow(8, next === null ? "No schedules." : "None you may see in this stretch: look further with “Next”.", "schedules-empty")
        : page.schedules.map((s) =>
            h(
              "tr",
              { "data-testid": "schedule-row", "data-name": s.name },
              h("td", { class: "mono" }, s.name),
              h("td", null, h("a", { href: firingsHref(s), title: `jobs of type ${s.type}: this schedule's firings are sched:${s.name}:…`, "data-testid": "schedule-firings" }, s.type)),
              h("td", { class: "mono", "data-testid": "schedule-when" }, whenText(s)),
              h("td", { "data-testid": "schedule-timezone-cell" }, s.cron !== null ? (s.timezone ?? "UTC") : h("span", { class: "muted" }, "—")),
              h("td", { class: "nowrap", title: when(s.next_run_at), "data-testid": "schedule-next" }, short(s.next_run_at)),
              h(
                "td",
                { class: "nowrap", "data-testid": "schedule-last" },
                s.last_job_id
                  ? [h("a", { href: jobHref(s.last_job_id), class: "mono", "data-testid": "schedule-last-job" }, s.last_job_id), " ", h("span", { class: "muted", title: when(s.last_run_at) }, ago(s.last_run_at))]
                  : h("span", { class: "muted" }, "not yet"),
              ),
              h("td", null, s.owner ?? h("span", { class: "muted" }, "anonymous")),
              h(
                "td",
                { class: "actions" },
                mayChange(me, s)
                  ? [
                      button("Edit", "schedule-edit", () => form.open(s)),
                      confirmButton("Delete", `Delete ${s.name}?`, "schedule-delete", async () => {
                        const done = await scope.act(async () => (await client.deleteSchedule(s.name), true));
                        if (done) poll.now();
                      }),
                    ]
                  : null,
              ),
            ),
          ),
    );
  }, POLL);
  function go(stack: string[]): void {
    afters = stack.length ? stack : [""];
    poll.now();
  }
  add(
    view,
    title("Schedules", button("Add a schedule", "schedule-new", () => form.open(null))),
    types,
    h(
      "section",
      { class: "card", "data-testid": "schedules-card" },
      h("h2", null, "Schedules by name"),
      h("div", { class: "toolbar" }, h("span", { class: "spacer" }), where, newer, older),
      h("div", { class: "scroll" }, t),
      h("p", { class: "hint" }, "Each firing is a job of the schedule's type whose id is sched:{name}:{slot in UTC}; the type links to its jobs."),
    ),
    form.el,
  );
}
