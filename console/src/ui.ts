// What the pages share: the life of a page (Scope), the error banner, and small widgets.

import { TidingsError } from "./api.js";
import { type Child, h } from "./dom.js";

// ---------------------------------------------------------------------------------------
// The error banner

let bannerEl: HTMLElement | null = null;
let onUnauthorized: (() => void) | null = null;

/** Where the banner is drawn, and what a 401 does (ask for a login). */
export function setupBanner(el: HTMLElement, unauthorized: () => void): void {
  bannerEl = el;
  onUnauthorized = unauthorized;
}

/** An error as one line: the server's code and message. */
export function describe(error: unknown): string {
  if (error instanceof TidingsError) {
    const status = error.status ? `${error.status} ` : "";
    return `${status}${error.code}: ${error.message}`;
  }
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}

/** Show an error in the banner (a 401 asks for a login instead). `key` names its source,
 * so that the source's next success can clear it. */
export function showError(error: unknown, key = "action"): void {
  if (error instanceof DOMException && error.name === "AbortError") return;
  if (error instanceof TidingsError && error.status === 401 && onUnauthorized) {
    onUnauthorized();
    return;
  }
  if (!bannerEl) return;
  const forbidden = error instanceof TidingsError && error.status === 403;
  const message = h(
    "div",
    { class: "banner-item", "data-testid": "error-banner", "data-key": key, role: "alert" },
    h("strong", null, forbidden ? "Not allowed: " : "Error: "),
    h("span", { "data-testid": "error-message" }, describe(error)),
    h("button", { class: "link", type: "button", "data-testid": "error-close", onclick: () => message.remove() }, "dismiss"),
  );
  for (const old of Array.from(bannerEl.children)) if ((old as HTMLElement).dataset.key === key) old.remove();
  bannerEl.appendChild(message);
}

/** Remove the banner's error of `key` (or every error). */
export function clearError(key?: string): void {
  if (!bannerEl) return;
  for (const el of Array.from(bannerEl.children)) {
    if (key === undefined || (el as HTMLElement).dataset.key === key) el.remove();
  }
}

// ---------------------------------------------------------------------------------------
// A page's life

// A poll's pause while the tab is hidden, and the longest after failures.
const HIDDEN_INTERVAL = 30_000;
const MAX_BACKOFF = 30_000;

/** A handle on a running poll. */
export interface Poll {
  /** Run it now (after an action), then at its interval again. */
  now(): void;
}

/**
 * What one page holds while it is on screen: an AbortSignal for its requests, its polls,
 * its subscriptions. The router closes it when the page is left: requests are aborted,
 * polls stop, and every cleanup registered with `defer` runs.
 */
export class Scope {
  private readonly controller = new AbortController();
  private readonly cleanups: (() => void)[] = [];

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  get closed(): boolean {
    return this.controller.signal.aborted;
  }

  /** Run `fn` when the page is left. */
  defer(fn: () => void): void {
    if (this.closed) fn();
    else this.cleanups.push(fn);
  }

  /** Run `fn` once after `ms` milliseconds, unless the page is left first. */
  later(fn: () => void, ms: number): void {
    const timer = setTimeout(() => {
      if (!this.closed) fn();
    }, ms);
    this.defer(() => clearTimeout(timer));
  }

  close(): void {
    if (this.closed) return;
    this.controller.abort();
    for (const fn of this.cleanups.reverse()) {
      try {
        fn();
      } catch (exc) {
        console.warn("cleanup failed", exc);
      }
    }
    this.cleanups.length = 0;
  }

  /** Run `fn` now and then every `interval` ms, one run at a time, until the page is left:
   * every 30 s while the tab is hidden (at once again when it shows), backing off after
   * failures, whose error is shown until a run succeeds. */
  poll(fn: (signal: AbortSignal) => Promise<void>, interval: number): Poll {
    const key = `poll-${Math.random().toString(36).slice(2)}`;
    let timer: ReturnType<typeof setTimeout> | null = null;
    let running = false;
    let again = false;
    let failures = 0;
    const schedule = () => {
      if (this.closed) return;
      let delay = failures ? Math.min(interval * 2 ** failures, MAX_BACKOFF) : interval;
      if (document.visibilityState === "hidden") delay = Math.max(delay, HIDDEN_INTERVAL);
      timer = setTimeout(run, delay);
    };
    const run = async () => {
      timer = null;
      if (this.closed) return;
      running = true;
      try {
        await fn(this.signal);
        if (failures) clearError(key);
        failures = 0;
      } catch (exc) {
        if (!this.closed) {
          failures += 1;
          showError(exc, key);
        }
      } finally {
        running = false;
      }
      if (again) {
        again = false;
        void run();
      } else {
        schedule();
      }
    };
    const now = () => {
      if (this.closed) return;
      if (running) {
        again = true;
        return;
      }
      if (timer !== null) clearTimeout(timer);
      void run();
    };
    const visible = () => {
      if (document.visibilityState === "visible" && timer !== null) now();
    };
    document.addEventListener("visibilitychange", visible);
    this.defer(() => {
      document.removeEventListener("visibilitychange", visible);
      if (timer !== null) clearTimeout(timer);
    });
    void run();
    return { now };
  }

  /** Run an action, showing its error in the banner; undefined when it failed. */
  async act<T>(fn: () => Promise<T>): Promise<T | undefined> {
    try {
      clearError("action");
      return await fn();
    } catch (exc) {
      if (!this.closed) showError(exc);
      return undefined;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Widgets

/** A page's title row: the heading and, on the right, its actions. */
export function title(text: string, ...actions: Child[]): HTMLElement {
  return h("header", { class: "page-head" }, h("h1", { "data-testid": "page-title" }, text), h("div", { class: "actions" }, actions));
}

/** A section with its heading. */
export function section(heading: string, testid: string, ...children: Child[]): HTMLElement {
  return h("section", { class: "card", "data-testid": testid }, h("h2", null, heading), children);
}

/** A button. */
export function button(text: string, testid: string, onclick: () => void, kind = ""): HTMLButtonElement {
  return h("button", { type: "button", class: kind || null, "data-testid": testid, onclick }, text);
}

/** A button that asks again before it acts: "Delete" becomes "Delete x? Yes / No". The
 * confirming buttons' test ids are `<testid>-confirm` and `<testid>-cancel`. */
export function confirmButton(text: string, question: string, testid: string, action: () => Promise<void> | void): HTMLElement {
  const box = h("span", { class: "confirm" });
  const ask = () => {
    box.replaceChildren(
      h("span", { class: "question" }, question),
      button("Yes", `${testid}-confirm`, () => {
        box.replaceChildren(initial);
        void action();
      }, "danger"),
      button("No", `${testid}-cancel`, () => box.replaceChildren(initial)),
    );
  };
  const initial = button(text, testid, ask, "danger");
  box.appendChild(initial);
  return box;
}

/** A table's header and its body. A header written "#Messages" heads a column of numbers
 * (aligned right). */
export function table(testid: string, headers: string[]): { table: HTMLTableElement; body: HTMLTableSectionElement } {
  const body = h("tbody");
  const heads = headers.map((x) => (x.startsWith("#") ? h("th", { class: "num" }, x.slice(1)) : h("th", null, x)));
  const t = h("table", { "data-testid": testid }, h("thead", null, h("tr", null, heads)), body);
  return { table: t, body };
}

/** A row saying there is nothing to list. */
export function emptyRow(columns: number, text: string, testid = "empty"): HTMLTableRowElement {
  return h("tr", { class: "empty" }, h("td", { colspan: columns, "data-testid": testid }, text));
}

/** A job status as a coloured label. */
export function statusBadge(status: string, testid = "status"): HTMLElement {
  return h("span", { class: `badge status-${status}`, "data-testid": testid }, status);
}

/** What a page shows when the server refused it (403), or another error ended it. */
export function refusal(error: unknown): HTMLElement {
  const forbidden = error instanceof TidingsError && error.status === 403;
  return h(
    "div",
    { class: "refusal", "data-testid": forbidden ? "forbidden" : "page-error" },
    h("strong", null, forbidden ? "Not allowed. " : "This page could not be loaded. "),
    describe(error),
  );
}

/** A term/definition list from pairs. */
export function facts(testid: string, rows: [string, Child, string?][]): HTMLElement {
  return h(
    "dl",
    { class: "facts", "data-testid": testid },
    rows.map(([term, value, id]) => [h("dt", null, term), h("dd", { "data-testid": id ?? null }, value)]),
  );
}

/** A labelled form field. */
export function field(label: string, control: HTMLElement, hint?: string): HTMLElement {
  return h("label", { class: "field" }, h("span", { class: "label" }, label), control, hint ? h("span", { class: "hint" }, hint) : null);
}
