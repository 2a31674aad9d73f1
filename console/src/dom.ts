// The DOM helpers every page builds with. Text always goes in as text nodes (never as
// markup): channel names, payloads and error messages come from whoever wrote them.

export type Child = Node | string | number | null | undefined | false | Child[];
type Handler = (event: any) => void;
export type Attrs = Record<string, string | number | boolean | null | undefined | Handler>;

function append(parent: Node, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(parent, child);
    else if (child instanceof Node) parent.appendChild(child);
    else parent.appendChild(document.createTextNode(String(child)));
  }
}

function apply(el: Element, attrs: Attrs | null | undefined): void {
  if (!attrs) return;
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === "function") {
      el.addEventListener(key.replace(/^on/, ""), value);
    } else if (key === "value" && "value" in el) {
      (el as HTMLInputElement).value = String(value);
    } else if (key === "checked" && el instanceof HTMLInputElement) {
      el.checked = Boolean(value);
    } else {
      el.setAttribute(key === "className" ? "class" : key, value === true ? "" : String(value));
    }
  }
}

/** An HTML element: `h("a", {href: "#/jobs", class: "x", onclick: f}, "text", child)`. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element, as `h` makes HTML ones. */
export function s<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG_NS, tag);
  apply(el, attrs);
  append(el, children);
  return el;
}

/** Append children (nulls and falses skipped). */
export function add(el: Element, ...children: Child[]): void {
  append(el, children);
}

/** Replace an element's children. */
export function fill(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

// ---------------------------------------------------------------------------------------
// Formatting

const pad = (n: number): string => String(n).padStart(2, "0");

/** An RFC 3339 time (or Unix seconds) as local "YYYY-MM-DD HH:MM:SS"; "" for none. */
export function when(time: string | number | null | undefined): string {
  if (time === null || time === undefined || time === "") return "";
  const d = typeof time === "number" ? new Date(time * 1000) : new Date(time);
  if (Number.isNaN(d.getTime())) return String(time);
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

/** A time in a table: "HH:MM:SS" today, "MM-DD HH:MM" before; "" for none. */
export function short(time: string | number | null | undefined): string {
  const full = when(time);
  if (!full || full === String(time)) return full;
  const today = when(Date.now() / 1000).slice(0, 10);
  return full.startsWith(today) ? full.slice(11) : full.slice(5, 16);
}

/** Seconds from now to `time` (negative: in the past). */
export function secondsFrom(time: string | null | undefined): number | null {
  if (!time) return null;
  const t = new Date(time).getTime();
  return Number.isNaN(t) ? null : (t - Date.now()) / 1000;
}

/** A duration in seconds, short: "45 s", "3 min", "2 h 5 min", "3 d". */
export function duration(seconds: number): string {
  const s = Math.abs(seconds);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) {
    const m = Math.round((s % 3600) / 60);
    return `${Math.floor(s / 3600)} h${m ? ` ${m} min` : ""}`;
  }
  const hours = Math.round((s % 86400) / 3600);
  return `${Math.floor(s / 86400)} d${hours ? ` ${hours} h` : ""}`;
}

/** "n s ago" for a time in the past. */
export function ago(time: string | null | undefined): string {
  const s = secondsFrom(time);
  return s === null ? "" : `${duration(-Math.min(s, 0))} ago`;
}

/** A number with thin grouping: 12 345. */
export function num(n: number | null | undefined): string {
  if (n === null || n === undefined) return "";
  return Number.isInteger(n) ? n.toLocaleString("en-US").replace(/,/g, "\u202f") : n.toFixed(2);
}

/** A per-second rate: "0", "0.35", "12.4", "1 234". */
export function rate(n: number): string {
  if (n === 0) return "0";
  if (n < 1) return n.toFixed(2);
  if (n < 100) return n.toFixed(1);
  return num(Math.round(n));
}

/** Any value as readable text: strings as they are, the rest as indented JSON. */
export function show(value: unknown): string {
  if (typeof value === "string") return value;
  if (value === undefined) return "";
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

/** Any value on one line, cut to `max` characters. */
export function brief(value: unknown, max = 200): string {
  let text: string;
  if (typeof value === "string") text = value;
  else {
    try {
      text = JSON.stringify(value) ?? "";
    } catch {
      text = String(value);
    }
  }
  text = text.replace(/\s+/g, " ");
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}
