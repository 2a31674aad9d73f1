// Workers: who leases which job types, what each runs, when it was last heard of, and the
// leases that expire next (GET /v1/workers, polled).

import { api } from "./api.js";
import { add, ago, duration, fill, h, secondsFrom, when } from "./dom.js";
import { jobHref } from "./jobs.js";
import type { Ctx } from "./main.js";
import { emptyRow, section, table, title } from "./ui.js";

interface Running {
  id: string;
  type: string;
  attempt: number;
  started_at: string | null;
  lease_expires_at: string | null;
  progress: number | null;
  message: string | null;
}

interface Worker {
  id: string;
  name: string;
  user: string | null;
  types: string[] | null;
  concurrency: number | null;
  first_seen: string;
  last_seen: string;
  running: Running[];
}

interface Workers {
  workers: Worker[];
  unidentified: Running[];
}

const POLL = 2000;

function expiry(time: string | null): string {
  const s = secondsFrom(time);
  if (s === null) return "—";
  return s >= 0 ? `in ${duration(s)}` : `${duration(-s)} ago (expired)`;
}

function jobLink(r: Running): HTMLElement {
  return h("a", { href: jobHref(r.id), class: "mono", "data-testid": "job-link" }, r.id);
}

function runningRows(rows: { run: Running; worker: string }[], testid: string): HTMLTableRowElement[] {
  return rows.map(({ run, worker }) =>
    h(
      "tr",
      { "data-testid": testid, "data-id": run.id },
      h("td", null, jobLink(run)),
      h("td", null, run.type),
      h("td", null, worker),
      h("td", { class: "num" }, String(run.attempt)),
      h("td", { class: "num" }, typeof run.progress === "number" ? `${Math.round(run.progress)} %` : ""),
      h("td", null, run.message ?? ""),
      h("td", { class: "nowrap", title: when(run.started_at) }, ago(run.started_at)),
      h("td", { class: "nowrap", "data-testid": "lease-expires", title: when(run.lease_expires_at) }, expiry(run.lease_expires_at)),
    ),
  );
}

const RUN_HEADERS = ["Job", "Type", "Worker", "#Attempt", "#Progress", "Message", "Started", "Lease expires"];

export function workersPage(view: HTMLElement, ctx: Ctx): void {
  const { table: wt, body: wbody } = table("workers-table", ["Worker", "User", "Types", "#Concurrency", "Running", "Last heartbeat", "First seen"]);
  const { table: lt, body: lbody } = table("leases-table", RUN_HEADERS);
  const { table: ut, body: ubody } = table("unidentified-table", RUN_HEADERS);
  const summary = h("span", { class: "muted", "data-testid": "workers-summary" });

  ctx.scope.poll(async (signal) => {
    const answer = await api<Workers>("GET", "/v1/workers", undefined, signal);
    const workers = [...answer.workers].sort((a, b) => a.name.localeCompare(b.name) || a.id.localeCompare(b.id));
    const runs = workers.reduce((n, w) => n + w.running.length, 0);
    summary.textContent = `${workers.length} worker${workers.length === 1 ? "" : "s"} · ${runs} job${runs === 1 ? "" : "s"} running`;
    fill(
      wbody,
      workers.length === 0
        ? emptyRow(7, "No worker leased or sent a heartbeat in the last minute.", "workers-empty")
        : workers.map((w) =>
            h(
              "tr",
              { "data-testid": "worker-row", "data-id": w.id, "data-name": w.name },
              h("td", null, h("strong", null, w.name), h("div", { class: "muted small mono" }, w.id)),
              h("td", null, w.user ?? "—"),
              h("td", null, w.types === null ? h("span", { class: "muted" }, "any") : w.types.join(", ")),
              h("td", { class: "num" }, w.concurrency === null ? "—" : String(w.concurrency)),
              h("td", { "data-testid": "worker-running" }, w.running.length === 0 ? h("span", { class: "muted" }, "idle") : w.running.map((r) => [jobLink(r), " "])),
              h("td", { class: "nowrap", "data-testid": "worker-heartbeat", title: when(w.last_seen) }, ago(w.last_seen)),
              h("td", { class: "nowrap" }, when(w.first_seen)),
            ),
          ),
    );
    const leases = workers
      .flatMap((w) => w.running.map((run) => ({ run, worker: w.name })))
      .concat(answer.unidentified.map((run) => ({ run, worker: "unidentified" })))
      .sort((a, b) => (secondsFrom(a.run.lease_expires_at) ?? Infinity) - (secondsFrom(b.run.lease_expires_at) ?? Infinity));
    fill(lbody, leases.length ? runningRows(leases, "lease-row") : emptyRow(8, "No job is running.", "leases-empty"));
    const unknown = answer.unidentified.map((run) => ({ run, worker: "—" }));
    fill(ubody, unknown.length ? runningRows(unknown, "unidentified-row") : emptyRow(8, "None: every running job's worker said who it is.", "unidentified-empty"));
  }, POLL);

  add(view, 
    title("Workers", summary),
    section("Workers seen in the last minute", "workers-card", h("div", { class: "scroll" }, wt)),
    section("Leases expiring next", "leases-card", h("div", { class: "scroll" }, lt)),
    section("Running jobs of unidentified workers", "unidentified-card", h("div", { class: "scroll" }, ut)),
  );
}
