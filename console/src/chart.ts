// A small SVG line chart of the last few minutes, and the Prometheus text parser that
// feeds the server page.

import { fill, h, num, rate, s } from "./dom.js";

// ---------------------------------------------------------------------------------------
// Prometheus exposition text (version 0.0.4)

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*/gy;

/** The samples of an exposition (comments skipped; NaN, +Inf and -Inf kept as numbers). */
export function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const m = SAMPLE.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    if (m[2]) {
      LABEL.lastIndex = 0;
      let l: RegExpExecArray | null;
      while ((l = LABEL.exec(m[2])) !== null) {
        labels[l[1]] = l[2].replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
      }
    }
    const value = m[3] === "+Inf" ? Infinity : m[3] === "-Inf" ? -Infinity : Number(m[3]);
    out.push({ name: m[1], labels, value });
  }
  return out;
}

/** The sum of a metric's samples (matching `where` labels); null when it has none. */
export function total(samples: Sample[], name: string, where: Record<string, string> = {}): number | null {
  let sum: number | null = null;
  for (const x of samples) {
    if (x.name !== name) continue;
    if (Object.entries(where).some(([k, v]) => x.labels[k] !== v)) continue;
    sum = (sum ?? 0) + x.value;
  }
  return sum;
}

/** A metric's values by one label: {ws: 3, sse: 1}. */
export function byLabel(samples: Sample[], name: string, label: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const x of samples) {
    if (x.name === name) out.set(x.labels[label] ?? "", (out.get(x.labels[label] ?? "") ?? 0) + x.value);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// The chart

/** Points [seconds, value], oldest first. */
export type Points = [number, number][];

const WIDTH = 380;
const HEIGHT = 150;
const LEFT = 36;
const RIGHT = 8;
const TOP = 10;
const BOTTOM = 22;

/** A rounded ceiling for the y axis: 1, 2, 5 × 10^n. */
function niceMax(value: number): number {
  if (!(value > 0)) return 1;
  const base = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) if (step * base >= value) return step * base;
  return 10 * base;
}

function tick(value: number): string {
  if (value >= 1_000_000) return `${+(value / 1_000_000).toFixed(1)}M`;
  if (value >= 1000) return `${+(value / 1000).toFixed(1)}k`;
  return String(+value.toPrecision(2));
}

/** A line chart of several series over the last `window` seconds. */
export class LineChart {
  readonly el: HTMLElement;
  private readonly svg: SVGSVGElement;
  private readonly legend: HTMLElement;

  constructor(
    heading: string,
    unit: string,
    testid: string,
    private readonly window = 120,
  ) {
    this.svg = s("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img", "aria-label": heading });
    this.legend = h("div", { class: "legend", "data-testid": `${testid}-legend` });
    this.el = h("figure", { class: "chart-box", "data-testid": testid }, h("figcaption", null, heading, h("span", { class: "muted" }, ` ${unit}`)), this.svg, this.legend);
  }

  /** Draw `series` (by name) as of `now` (seconds, the clock of their points). */
  draw(series: Map<string, Points>, now: number): void {
    const start = now - this.window;
    const w = WIDTH - LEFT - RIGHT;
    const ht = HEIGHT - TOP - BOTTOM;
    let max = 0;
    for (const points of series.values()) for (const [t, v] of points) if (t >= start && Number.isFinite(v)) max = Math.max(max, v);
    const top = niceMax(max);
    const x = (t: number) => LEFT + ((t - start) / this.window) * w;
    const y = (v: number) => TOP + ht - (v / top) * ht;
    const grid = [0, top / 2, top].map((v) => [
      s("line", { x1: LEFT, x2: WIDTH - RIGHT, y1: y(v), y2: y(v), class: "grid" }),
      s("text", { x: LEFT - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, tick(v)),
    ]);
    const times = [0, this.window / 2, this.window].map((ago) => s("text", { x: x(now - ago), y: HEIGHT - 6, class: "axis", "text-anchor": ago === 0 ? "end" : ago === this.window ? "start" : "middle" }, ago === 0 ? "now" : `−${ago >= 60 ? `${ago / 60} min` : `${ago} s`}`));
    const lines = [...series.entries()].map(([, points], i) => {
      const visible = points.filter(([t, v]) => t >= start - 5 && Number.isFinite(v));
      const d = visible.map(([t, v]) => `${x(Math.max(t, start)).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
      return s("polyline", { points: d, class: `line series-${i % 8}` });
    });
    fill(this.svg, grid, times, lines);
    fill(
      this.legend,
      [...series.entries()].map(([name, points], i) => {
        const lastValue = points.length ? points[points.length - 1][1] : null;
        return h(
          "span",
          { class: "legend-item", "data-series": name },
          h("span", { class: `swatch series-${i % 8}` }),
          `${name} `,
          h("strong", { "data-testid": "legend-value" }, lastValue === null ? "—" : Number.isInteger(lastValue) ? num(lastValue) : rate(lastValue)),
        );
      }),
    );
  }

  /** Shown before the second sample, when rates cannot be known yet. */
  waiting(text: string): void {
    fill(this.svg, s("text", { x: WIDTH / 2, y: HEIGHT / 2, class: "axis", "text-anchor": "middle" }, text));
  }
}
