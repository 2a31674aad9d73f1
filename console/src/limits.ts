// A job type's limits (PUT/DELETE /v1/queues/{type}, admins): how they read in the queues
// table, with the jobs each holds back, and the form that sets or lifts them, which shows
// the server's refusal (a 422 saying what to fix) beside its fields.

import { TidingsError, api, seg } from "./api.js";
import { fill, h, num } from "./dom.js";
import { type Scope, confirmButton, describe, field, showError } from "./ui.js";

/** A type's limits as GET /v1/queues shows them, with the jobs each holds back now. */
export interface Limits {
  rate: { limit: number; per: number } | null;
  concurrency: number | null;
  group_concurrency: number | null;
  waiting?: { concurrency: number; rate: number; group: number } | null;
}

const seconds = (n: number): string => (n === 1 ? "s" : `${n} s`);

/** "50 per s · 4 at once · 2 per group". */
export function limitsText(limits: Limits): string {
  const parts: string[] = [];
  if (limits.rate) parts.push(`${num(limits.rate.limit)} per ${seconds(limits.rate.per)}`);
  if (limits.concurrency !== null) parts.push(`${num(limits.concurrency)} at once`);
  if (limits.group_concurrency !== null) parts.push(`${num(limits.group_concurrency)} per group`);
  return parts.join(" · ") || "none";
}

/** What each limit holds back now: "3 by concurrency · 1 by group", or "none". */
export function heldText(limits: Limits): HTMLElement {
  const w = limits.waiting;
  const parts = w ? (["concurrency", "rate", "group"] as const).filter((k) => w[k] > 0).map((k) => `${num(w[k])} by ${k}`) : [];
  return parts.length ? h("span", { class: "count-running" }, parts.join(" · ")) : h("span", { class: "muted" }, "none");
}

/** The admins' form: `open(type, limits)` fills it with a type's limits; `saved` runs
 * after a change went through (the queues are read again). */
export function limitsEditor(scope: Scope, saved: () => void): { el: HTMLElement; open: (type: string, limits: Limits | null) => void } {
  // No min or max on the fields: the server says what fits, and its answer is shown here.
  const type = h("input", { required: true, list: "job-types", placeholder: "e.g. transcode", "data-testid": "limits-type" });
  const rateLimit = h("input", { type: "number", step: "any", placeholder: "none", "data-testid": "limits-rate" });
  const ratePer = h("input", { type: "number", step: "any", placeholder: "1", "data-testid": "limits-per" });
  const concurrency = h("input", { type: "number", step: "any", placeholder: "none", "data-testid": "limits-concurrency" });
  const groups = h("input", { type: "number", step: "any", placeholder: "none", "data-testid": "limits-group-concurrency" });
  const error = h("p", { class: "error", "data-testid": "limits-error", role: "alert" });
  const result = h("p", { class: "muted", "data-testid": "limits-result", "aria-live": "polite" });
  const save = h("button", { type: "submit", class: "primary", "data-testid": "limits-save" }, "Save limits");
  const numberOf = (el: HTMLInputElement): number | null => (el.value.trim() === "" ? null : Number(el.value));

  const run = async (what: () => Promise<string>): Promise<void> => {
    error.textContent = "";
    result.textContent = "";
    save.disabled = true;
    try {
      result.textContent = await what();
      saved();
    } catch (exc) {
      if (scope.closed) return;
      // A lost session asks for a login; any other refusal is the server's, shown here.
      if (exc instanceof TidingsError && exc.status === 401) showError(exc);
      else error.textContent = describe(exc);
    } finally {
      save.disabled = false;
    }
  };

  const form = h(
    "form",
    { class: "limits-form", "data-testid": "limits-form" },
    h(
      "div",
      { class: "row" },
      field("Type", type),
      field("Rate: jobs", rateLimit, "started at most per the period"),
      field("per (s)", ratePer),
      field("Concurrency", concurrency, "running at once, across nodes"),
      field("Per group", groups, "running at once per submit's group"),
    ),
    h(
      "div",
      { class: "row" },
      save,
      confirmButton("Lift limits", "Lift every limit of this type?", "limits-lift", () =>
        run(async () => {
          const t = type.value.trim();
          await api("DELETE", `/v1/queues/${seg(t)}`);
          for (const el of [rateLimit, ratePer, concurrency, groups]) el.value = "";
          return `Lifted the limits of ${t}.`;
        }),
      ),
      error,
      result,
    ),
    h("p", { class: "hint" }, "An empty field is no such limit; all empty lifts them. Leases never pass them, across nodes."),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const t = type.value.trim();
    const limit = numberOf(rateLimit);
    const per = numberOf(ratePer);
    const body = {
      rate: limit === null ? null : per === null ? { limit } : { limit, per },
      concurrency: numberOf(concurrency),
      group_concurrency: numberOf(groups),
    };
    void run(async () => {
      const answer = await api<{ type: string; limits: Limits | null }>("PUT", `/v1/queues/${seg(t)}`, body);
      return answer.limits ? `${answer.type}: ${limitsText(answer.limits)}.` : `${answer.type}: no limits.`;
    });
  });

  const box = h("details", { class: "limits-editor", "data-testid": "limits-editor" }, h("summary", null, "Set a type's limits"), form);
  const open = (name: string, limits: Limits | null) => {
    box.open = true;
    type.value = name;
    rateLimit.value = limits?.rate ? String(limits.rate.limit) : "";
    ratePer.value = limits?.rate ? String(limits.rate.per) : "";
    concurrency.value = limits?.concurrency != null ? String(limits.concurrency) : "";
    groups.value = limits?.group_concurrency != null ? String(limits.group_concurrency) : "";
    fill(error);
    fill(result);
    rateLimit.focus();
  };
  return { el: box, open };
}
