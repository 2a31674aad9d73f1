// The server: live charts drawn from /metrics (polled), the server's version, store and
// settings (GET /v1/admin/server), and the doctor's report on its store's network path.

import { api, apiText } from "./api.js";
import { LineChart, type Points, type Sample, byLabel, parseMetrics, total } from "./chart.js";
import { add, brief, duration, fill, h, when } from "./dom.js";
import type { Ctx } from "./main.js";
import { button, emptyRow, facts, refusal, section, table, title } from "./ui.js";

interface ServerInfo {
  version: string;
  python: string;
  pid: number;
  started_at: string;
  uptime: number;
  store: { engine: string; url: string };
  settings: Record<string, unknown>;
}

interface DoctorReport {
  targets: Record<string, unknown>[];
  gateway: Record<string, unknown> | null;
  warnings: string[];
  notes: string[];
}

const POLL = 2000;
const WINDOW = 120;

// One chart's series: how to read each from a scrape (a gauge's value, or a counter's
// total whose change per second is drawn).
interface Chart {
  chart: LineChart;
  kind: "gauge" | "rate";
  read: (samples: Sample[]) => Map<string, number>;
}

function one(name: string, label: string, where: Record<string, string> = {}) {
  return (samples: Sample[]) => {
    const value = total(samples, name, where);
    return new Map(value === null ? [] : [[label, value]]);
  };
}

export function serverPage(view: HTMLElement, ctx: Ctx): void {
  const { scope } = ctx;
  const charts: Chart[] = [
    {
      chart: new LineChart("Open streams", "by transport", "chart-streams", WINDOW),
      kind: "gauge",
      read: (x) => byLabel(x, "tidings_open_streams", "transport"),
    },
    { chart: new LineChart("Connections", "open", "chart-connections", WINDOW), kind: "gauge", read: one("tidings_connections", "connections") },
    { chart: new LineChart("Deliveries", "per second", "chart-deliveries", WINDOW), kind: "rate", read: one("tidings_messages_delivered_total", "delivered") },
    { chart: new LineChart("Publishes", "per second", "chart-publishes", WINDOW), kind: "rate", read: one("tidings_messages_published_total", "published") },
    {
      chart: new LineChart("Jobs", "per second", "chart-jobs", WINDOW),
      kind: "rate",
      read: (x) => {
        const out = new Map<string, number>();
        const submitted = total(x, "tidings_jobs_submitted_total");
        if (submitted !== null) out.set("submitted", submitted);
        for (const [status, n] of byLabel(x, "tidings_jobs_finished_total", "status")) out.set(status, n);
        return out;
      },
    },
  ];
  const series = charts.map(() => new Map<string, Points>());
  let previous: { time: number; values: Map<string, number>[] } | null = null;
  for (const c of charts) c.chart.waiting("collecting…");

  scope.poll(async (signal) => {
    const samples = parseMetrics(await apiText("/metrics", signal));
    const now = performance.now() / 1000;
    const values = charts.map((c) => c.read(samples));
    charts.forEach((c, i) => {
      const lines = series[i];
      for (const [name, value] of values[i]) {
        let point: number | null = value;
        if (c.kind === "rate") {
          const before = previous?.values[i].get(name);
          const dt = previous ? now - previous.time : 0;
          // A counter that went down was reset (a restart): no rate for that step.
          point = before === undefined || dt <= 0 || value < before ? null : (value - before) / dt;
        }
        if (point === null) continue;
        if (!lines.has(name)) lines.set(name, []);
        (lines.get(name) as Points).push([now, point]);
      }
      for (const [name, points] of lines) {
        while (points.length && points[0][0] < now - WINDOW - 5) points.shift();
        if (!points.length) lines.delete(name);
      }
      if (lines.size) c.chart.draw(lines, now);
      else c.chart.waiting(c.kind === "rate" && !previous ? "collecting…" : "no data");
    });
    previous = { time: now, values };
  }, POLL);

  // Version, store, settings ----------------------------------------------------------
  const infoBox = h("div", { "data-testid": "server-info" }, h("p", { class: "muted" }, "Loading…"));
  const settingsBox = h("div");
  void scope.act(async () => {
    try {
      const info = await api<ServerInfo>("GET", "/v1/admin/server", undefined, scope.signal);
      fill(
        infoBox,
        facts("server-facts", [
          ["Version", info.version, "server-version"],
          ["Python", info.python],
          ["Process", String(info.pid)],
          ["Started", `${when(info.started_at)} (up ${duration(info.uptime)})`, "server-started"],
          ["Store", info.store.engine, "server-store-engine"],
          ["Store URL", h("span", { class: "mono" }, info.store.url), "server-store-url"],
        ]),
      );
      const { table: t, body } = table("server-settings", ["Setting", "Value"]);
      fill(
        body,
        Object.entries(info.settings).map(([key, value]) =>
          h(
            "tr",
            { "data-testid": "setting-row", "data-key": key },
            h("td", { class: "mono" }, key),
            h("td", { class: "mono" }, value === "" || value === null ? h("span", { class: "muted" }, "—") : brief(value, 300)),
          ),
        ),
      );
      fill(settingsBox, h("div", { class: "scroll tall" }, t));
    } catch (exc) {
      if (!scope.closed) fill(infoBox, refusal(exc));
    }
  });

  // The doctor ------------------------------------------------------------------------------
  const report = h("div", { "data-testid": "doctor-report" }, h("p", { class: "muted" }, "Checks the route to the store's host, TCP connect times and the default gateway's MAC. Takes a few seconds."));
  const run = button("Run doctor", "doctor-run", () => {
    run.disabled = true;
    fill(report, h("p", { class: "muted", "data-testid": "doctor-running" }, "Running…"));
    void scope
      .act(async () => {
        try {
          renderDoctor(report, await api<DoctorReport>("GET", "/v1/admin/network", undefined, scope.signal));
        } catch (exc) {
          if (!scope.closed) fill(report, refusal(exc));
        }
      })
      .finally(() => (run.disabled = false));
  });

  add(view, 
    title("Server"),
    h("div", { class: "charts", "data-testid": "charts" }, charts.map((c) => c.chart.el)),
    h("div", { class: "grid" }, section("This server", "server-card", infoBox), section("Store network (doctor)", "doctor-card", report, h("div", { class: "row" }, run))),
    section("Settings", "settings-card", settingsBox),
  );
}

function cell(value: unknown): string {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (Array.isArray(value)) return value.map((v) => cell(v)).join("; ");
  if (typeof value === "object") {
    return Object.entries(value as Record<string, unknown>)
      .map(([k, v]) => `${k} ${cell(v)}`)
      .join(", ");
  }
  return String(value);
}

function renderDoctor(box: HTMLElement, r: DoctorReport): void {
  const columns = [...new Set(r.targets.flatMap((t) => Object.keys(t)))];
  const { table: t, body } = table("doctor-targets", columns);
  fill(
    body,
    r.targets.length
      ? r.targets.map((target) => h("tr", { "data-testid": "doctor-target" }, columns.map((c) => h("td", null, cell(target[c])))))
      : emptyRow(Math.max(columns.length, 1), "No network target: the store is in this process (memory) or a local file (SQLite).", "doctor-no-targets"),
  );
  fill(
    box,
    r.targets.length ? h("div", { class: "scroll" }, t) : h("p", { class: "muted", "data-testid": "doctor-no-targets" }, "No network target: the store is in this process (memory) or a local file (SQLite)."),
    r.gateway ? [h("h3", null, "Default gateway"), facts("doctor-gateway", Object.entries(r.gateway).map(([k, v]) => [k, cell(v)]))] : null,
    r.warnings.length ? [h("h3", null, "Warnings"), h("ul", { class: "warnings", "data-testid": "doctor-warnings" }, r.warnings.map((w) => h("li", null, w)))] : null,
    r.notes.length ? [h("h3", null, "Notes"), h("ul", { "data-testid": "doctor-notes" }, r.notes.map((n) => h("li", null, n)))] : null,
  );
}
