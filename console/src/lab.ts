// The lab: `tidings lab` run by the server against itself (POST /v1/admin/lab) on a small
// workload, its figures per pattern and its chart. The chart is the lab's SVG shown as an
// <img> from a data: URL (the page's CSP allows data: images): an image's SVG runs no
// script and loads nothing, and its markup never enters this page's DOM.

import { api } from "./api.js";
import { fill, h, num } from "./dom.js";
import type { Ctx } from "./main.js";
import { button, field, refusal, section, table, title } from "./ui.js";

interface LabRow {
  pattern: string;
  delivered: number;
  missed: number;
  requests_per_delivery: number | null;
  bytes_per_delivery: number | null;
  latency_p50_ms: number | null;
  latency_p99_ms: number | null;
  cpu_ms_per_delivery: number | null;
}

interface LabAnswer {
  report: { points: { clients: number; rate: number; results: LabRow[]; claims: string[] }[] };
  svg: string;
}

const PATTERNS = ["poll", "longpoll", "sse", "ws", "job-poll", "job-longpoll", "job-push", "job-request"];

function figure(n: number | null, digits: number): string {
  return n === null || n === undefined ? "—" : n.toFixed(digits);
}

function bounded(label: string, testid: string, value: number, max: number, hint: string): [HTMLElement, HTMLInputElement] {
  const input = h("input", { type: "number", min: 1, max, step: 1, value, required: true, "data-testid": testid });
  return [field(label, input, hint), input];
}

export function labPage(view: HTMLElement, ctx: Ctx): void {
  const { scope } = ctx;
  const [clientsField, clients] = bounded("Clients", "lab-clients", 5, 50, "per pattern, 1–50");
  const [rateField, rate] = bounded("Rate", "lab-rate", 5, 50, "messages a second, 1–50");
  const [secondsField, seconds] = bounded("Seconds", "lab-seconds", 2, 10, "each pattern runs, 1–10");
  const boxes = PATTERNS.map((p) =>
    h("input", { type: "checkbox", value: p, checked: !p.startsWith("job-"), "data-testid": `lab-pattern-${p}` }),
  );
  const result = h("div", { "data-testid": "lab-result" }, h("p", { class: "muted" }, "Runs each chosen pattern in turn against this server; takes about the seconds times the patterns, plus a few."));

  const run = button("Run lab", "lab-run", () => {
    const body = {
      clients: clients.valueAsNumber,
      rate: rate.valueAsNumber,
      seconds: seconds.valueAsNumber,
      patterns: boxes.filter((b) => b.checked).map((b) => b.value),
    };
    run.disabled = true;
    fill(result, h("p", { class: "muted", "data-testid": "lab-running" }, "Running…"));
    void scope
      .act(async () => {
        try {
          render(result, await api<LabAnswer>("POST", "/v1/admin/lab", body, scope.signal));
        } catch (exc) {
          if (!scope.closed) fill(result, refusal(exc));
        }
      })
      .finally(() => (run.disabled = false));
  });

  fill(
    view,
    title("Lab"),
    section(
      "Workload",
      "lab-form",
      h("div", { class: "row" }, clientsField, rateField, secondsField),
      h("div", { class: "row" }, boxes.map((b) => h("label", { class: "check" }, b, ` ${b.value}`))),
      h("div", { class: "row" }, run),
    ),
    section("Results", "lab-card", result),
  );
}

function render(box: HTMLElement, answer: LabAnswer): void {
  const point = answer.report.points[0];
  const { table: t, body } = table("lab-table", ["Pattern", "#Requests/msg", "#Bytes/msg", "#p50 ms", "#p99 ms", "#CPU ms/msg", "#Missed"]);
  fill(
    body,
    point.results.map((r) =>
      h(
        "tr",
        { "data-testid": "lab-row", "data-pattern": r.pattern },
        h("td", null, r.pattern),
        h("td", { class: "num" }, figure(r.requests_per_delivery, 3)),
        h("td", { class: "num" }, figure(r.bytes_per_delivery, 0)),
        h("td", { class: "num" }, figure(r.latency_p50_ms, 1)),
        h("td", { class: "num" }, figure(r.latency_p99_ms, 1)),
        h("td", { class: "num" }, figure(r.cpu_ms_per_delivery, 3)),
        h("td", { class: "num" }, num(r.missed)),
      ),
    ),
  );
  const chart = h("img", {
    class: "lab-chart",
    alt: "The lab's chart: each pattern's figures",
    src: `data:image/svg+xml;charset=utf-8,${encodeURIComponent(answer.svg)}`,
    "data-testid": "lab-chart",
  });
  fill(
    box,
    h("p", { class: "muted" }, `${point.clients} clients, ${point.rate} msg/s`),
    h("div", { class: "scroll" }, t),
    point.claims.length ? h("ul", { "data-testid": "lab-claims" }, point.claims.map((c) => h("li", null, c))) : null,
    chart,
  );
}
