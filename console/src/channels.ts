// Channels: the list (paged by the server, searched by prefix) and one channel's page
// (its stats, a live tail, publishing, retention and deletion).

import { api, client, query, seg } from "./api.js";
import type { Message, Reset, Status, Subscription } from "../client/tidings.js";
import { add, brief, duration, fill, h, num, short, when } from "./dom.js";
import type { Ctx } from "./main.js";
import { may } from "./perms.js";
import { button, confirmButton, emptyRow, facts, field, section, showError, table, title } from "./ui.js";

interface ChannelInfo {
  name: string;
  first_id: string | null;
  last_id: string | null;
  messages: number;
  created: string;
  retention: { max_messages: number; max_age: number; custom: boolean };
  subscribers: Record<string, number>;
}

interface ChannelPage {
  channels: ChannelInfo[];
  next: string | null;
}

const PAGE_SIZE = 100;
const LIST_POLL = 5000;
const INFO_POLL = 2000;
// The live tail keeps this many rows; older ones leave the page.
const TAIL_ROWS = 500;

const channelHref = (name: string): string => `#/channels/${seg(name)}`;

function subscribers(counts: Record<string, number>): { total: number; detail: string } {
  const entries = Object.entries(counts).filter(([, n]) => n > 0);
  const total = entries.reduce((sum, [, n]) => sum + n, 0);
  return { total, detail: entries.map(([t, n]) => `${t} ${n}`).join(" · ") };
}

function retentionText(r: ChannelInfo["retention"]): string {
  return `${num(r.max_messages)} msgs · ${duration(r.max_age)}${r.custom ? " (own)" : ""}`;
}

// ---------------------------------------------------------------------------------------
// The list

export function channelsPage(view: HTMLElement, ctx: Ctx): void {
  const { scope } = ctx;
  let prefix = ctx.query.get("prefix") ?? "";
  // The `after` of each page shown so far: the last is the current page's.
  let afters: string[] = [""];
  let next: string | null = null;

  const search = h("input", { type: "search", placeholder: "Name prefix, e.g. news.", value: prefix, "data-testid": "channel-search", "aria-label": "Search channels by name prefix" });
  const openInput = h("input", { placeholder: "channel name", "data-testid": "channel-open-input", "aria-label": "Channel name" });
  const openForm = h("form", { class: "inline", "data-testid": "channel-open-form" }, openInput, h("button", { type: "submit", "data-testid": "channel-open" }, "Open"));
  openForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = openInput.value.trim();
    if (name) location.hash = channelHref(name);
  });
  const first = button("Newest", "channels-first", () => go([""]));
  const prev = button("‹ Previous", "channels-prev", () => go(afters.slice(0, -1)));
  const nextBtn = button("Next ›", "channels-next", () => next !== null && go([...afters, next]));
  const where = h("span", { class: "muted", "data-testid": "channels-where" });
  const { table: t, body } = table("channels-table", ["Channel", "#Messages", "First id", "Last id", "#Subscribers", "Retention"]);

  const render = (page: ChannelPage) => {
    next = page.next;
    prev.disabled = afters.length <= 1;
    first.disabled = afters.length <= 1;
    nextBtn.disabled = next === null;
    where.textContent = `page ${afters.length} · ${page.channels.length} shown${next === null ? " · the last" : ""}`;
    if (page.channels.length === 0) {
      const text = next !== null ? "No channel you may read on this page: look on the next one." : prefix ? `No channel starts with “${prefix}”.` : "No channels yet: publish to a name to create it.";
      fill(body, emptyRow(6, text, "channels-empty"));
      return;
    }
    fill(
      body,
      page.channels.map((c) => {
        const subs = subscribers(c.subscribers);
        return h(
          "tr",
          { "data-testid": "channel-row", "data-channel": c.name },
          h("td", null, h("a", { href: channelHref(c.name), "data-testid": "channel-link" }, c.name)),
          h("td", { class: "num", "data-testid": "channel-messages" }, num(c.messages)),
          h("td", { class: "mono" }, c.first_id ?? "—"),
          h("td", { class: "mono" }, c.last_id ?? "—"),
          h("td", { class: "num", title: subs.detail, "data-testid": "channel-subscribers" }, num(subs.total), subs.detail ? h("span", { class: "muted small" }, ` ${subs.detail}`) : null),
          h("td", null, retentionText(c.retention)),
        );
      }),
    );
  };

  const poll = scope.poll(async (signal) => {
    const page = await api<ChannelPage>("GET", `/v1/channels${query({ prefix, after: afters[afters.length - 1], limit: PAGE_SIZE })}`, undefined, signal);
    render(page);
  }, LIST_POLL);

  function go(stack: string[]): void {
    afters = stack.length ? stack : [""];
    poll.now();
  }

  let typing: ReturnType<typeof setTimeout> | null = null;
  search.addEventListener("input", () => {
    if (typing) clearTimeout(typing);
    typing = setTimeout(() => {
      prefix = search.value.trim();
      history.replaceState(null, "", `#/channels${query({ prefix })}`);
      go([""]);
    }, 250);
  });
  scope.defer(() => typing && clearTimeout(typing));

  add(view, 
    title("Channels", openForm),
    h("div", { class: "card" }, h("div", { class: "toolbar" }, search, h("span", { class: "spacer" }), where, first, prev, nextBtn), t),
  );
}

// ---------------------------------------------------------------------------------------
// One channel

export function channelPage(view: HTMLElement, ctx: Ctx): void {
  const { scope, me } = ctx;
  const name = ctx.params[0];
  let info: ChannelInfo | null = null;

  const infoBox = h("div", { "data-testid": "channel-info" }, h("p", { class: "muted" }, "Loading…"));
  const renderInfo = () => {
    if (info === null) {
      fill(infoBox, h("p", { class: "muted", "data-testid": "channel-missing" }, "This channel does not exist yet: publishing to it creates it."));
      return;
    }
    const subs = subscribers(info.subscribers);
    fill(
      infoBox,
      facts("channel-facts", [
        ["Messages", num(info.messages), "info-messages"],
        ["First id", info.first_id ?? "—", "info-first"],
        ["Last id", info.last_id ?? "—", "info-last"],
        ["Subscribers", `${num(subs.total)}${subs.detail ? ` (${subs.detail})` : ""}`, "info-subscribers"],
        ["Retention", retentionText(info.retention), "info-retention"],
        ["Created", when(info.created), "info-created"],
      ]),
    );
  };
  const readable = may(me, "subscribe", name);
  // Read from the list (this name as the prefix, one entry: the name itself sorts first)
  // rather than GET /v1/channels/{c}: a channel not created yet is then an empty list, not
  // a 404 that the browser would log as an error every poll.
  const infoPoll = scope.poll(async (signal) => {
    if (!readable) return;
    const page = await api<ChannelPage>("GET", `/v1/channels${query({ prefix: name, limit: 1 })}`, undefined, signal);
    info = page.channels[0]?.name === name ? page.channels[0] : null;
    renderInfo();
    fillRetention();
  }, INFO_POLL);
  if (!readable) fill(infoBox, h("p", { class: "muted", "data-testid": "channel-unreadable" }, `${me.user} may not read this channel's stats.`));

  // Publish ------------------------------------------------------------------------------
  let publishCard: HTMLElement | null = null;
  if (may(me, "publish", name)) {
    const mode = h("select", { "data-testid": "publish-mode", "aria-label": "Data format" }, h("option", { value: "text" }, "Text"), h("option", { value: "json" }, "JSON"));
    const data = h("textarea", { rows: 4, placeholder: "Message data", "data-testid": "publish-data" });
    const event = h("input", { placeholder: "optional", "data-testid": "publish-event" });
    const result = h("p", { class: "muted", "data-testid": "publish-result", "aria-live": "polite" });
    const submit = h("button", { type: "submit", class: "primary", "data-testid": "publish-submit" }, "Publish");
    const form = h("form", { "data-testid": "publish-form" }, field("Data", data), h("div", { class: "row" }, field("Format", mode), field("Event name", event)), h("div", { class: "row" }, submit, result));
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      let value: unknown = data.value;
      if (mode.value === "json") {
        try {
          value = JSON.parse(data.value);
        } catch (exc) {
          result.textContent = `Not JSON: ${(exc as Error).message}`;
          result.className = "error";
          return;
        }
      }
      submit.disabled = true;
      void scope
        .act(() => client.publish(name, value, { event: event.value.trim() || undefined }))
        .then((ack) => {
          if (ack) {
            result.textContent = `Published ${ack.id}`;
            result.className = "muted";
            infoPoll.now();
          }
        })
        .finally(() => (submit.disabled = false));
    });
    publishCard = section("Publish", "publish-card", form);
  }

  // Retention and delete (admins) ------------------------------------------------------
  let adminCard: HTMLElement | null = null;
  const maxMessages = h("input", { type: "number", min: 1, step: 1, "data-testid": "retention-max-messages" });
  const maxAge = h("input", { type: "number", min: 1, step: "any", "data-testid": "retention-max-age" });
  let retentionFilled = false;
  function fillRetention(): void {
    if (retentionFilled || info === null) return;
    retentionFilled = true;
    maxMessages.value = String(info.retention.max_messages);
    maxAge.value = String(info.retention.max_age);
  }
  if (me.permissions.admin) {
    const save = async (retention: { max_messages: number; max_age: number } | null) => {
      const answer = await scope.act(() => api<ChannelInfo>("PUT", `/v1/channels/${seg(name)}`, { retention }));
      if (answer) {
        info = answer;
        retentionFilled = false;
        renderInfo();
        fillRetention();
      }
    };
    const form = h(
      "form",
      { "data-testid": "retention-form" },
      h(
        "div",
        { class: "row compact" },
        field("Max messages", maxMessages),
        field("Max age (s)", maxAge),
        h("button", { type: "submit", "data-testid": "retention-save" }, "Save retention"),
        button("Server default", "retention-default", () => void save(null)),
      ),
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      void save({ max_messages: Number(maxMessages.value), max_age: Number(maxAge.value) });
    });
    const remove = confirmButton("Delete channel", `Delete ${name} and its history?`, "channel-delete", async () => {
      const done = await scope.act(async () => {
        await api("DELETE", `/v1/channels/${seg(name)}`);
        return true;
      });
      if (done) location.hash = "#/channels";
    });
    adminCard = section("Retention and deletion", "channel-admin", form, h("div", { class: "row danger-zone" }, remove));
  }

  // Live tail ------------------------------------------------------------------------------
  let tailCard: HTMLElement;
  if (may(me, "subscribe", name)) {
    tailCard = tail(name, ctx);
  } else {
    tailCard = section("Live tail", "tail", h("p", { class: "muted", "data-testid": "tail-forbidden" }, `${me.user} may not subscribe to ${name}.`));
  }

  add(view, 
    title(name, h("a", { href: "#/channels", class: "back", "data-testid": "back" }, "‹ All channels")),
    h("div", { class: "grid" }, section("Channel", "channel-card", infoBox), publishCard),
    tailCard,
    adminCard,
  );
}

/** The live tail of one channel: newest first, at most TAIL_ROWS rows. */
function tail(name: string, ctx: Ctx): HTMLElement {
  const { scope } = ctx;
  let sub: Subscription | null = null;
  let paused = false;
  let lastId: string | null = null;
  let shown = 0;

  const status = h("span", { class: "pill", "data-testid": "tail-status", "data-state": "connecting" }, "connecting");
  const count = h("span", { class: "muted", "data-testid": "tail-count" }, "");
  const { table: t, body } = table("tail-table", ["Id", "Time", "Event", "Data"]);
  const empty = emptyRow(4, "Waiting for new messages. To see the history kept, resume from id 0.", "tail-empty");
  body.appendChild(empty);

  const updateCount = () => {
    count.textContent = `${shown} received${shown > TAIL_ROWS ? ` · newest ${TAIL_ROWS} shown` : ""}`;
  };
  const add = (row: HTMLTableRowElement) => {
    empty.remove();
    body.prepend(row);
    while (body.rows.length > TAIL_ROWS) body.lastElementChild?.remove();
  };
  const onMessage = (m: Message) => {
    lastId = m.id;
    shown += 1;
    updateCount();
    const text = brief(m.data, 400);
    add(
      h(
        "tr",
        { "data-testid": "tail-row", "data-id": m.id },
        h("td", { class: "mono" }, m.id),
        h("td", { class: "nowrap", title: when(m.time) }, short(m.time)),
        h("td", null, m.event ?? ""),
        h("td", { class: typeof m.data === "string" ? "data" : "data mono", "data-testid": "tail-data" }, text),
      ),
    );
  };
  const onReset = (r: Reset) => {
    add(
      h(
        "tr",
        { class: "reset", "data-testid": "tail-reset" },
        h("td", { colspan: 4 }, h("strong", null, "Reset: "), `${r.reason}. `, r.first ? `The history goes on at ${r.first}.` : "The channel keeps nothing now."),
      ),
    );
  };
  const onStatus = (s: Status) => {
    const label = s.state === "open" ? `live · ${s.via}` : s.state === "reconnecting" ? `reconnecting in ${s.delay?.toFixed(1) ?? "?"} s` : s.state === "fallback" ? `trying ${s.via}` : s.state;
    status.textContent = paused ? "paused" : label;
    status.dataset.state = paused ? "paused" : s.state;
    status.dataset.via = s.via;
  };
  const start = (after?: string) => {
    sub?.close();
    paused = false;
    pause.textContent = "Pause";
    sub = client.subscribe(name, { via: "auto", after, onMessage, onReset, onStatus, onError: (e) => showError(e, "tail") });
  };
  const stop = () => {
    sub?.close();
    sub = null;
  };

  const pause = button("Pause", "tail-pause", () => {
    if (paused) {
      start(lastId ?? undefined);
    } else {
      lastId = sub?.lastId ?? lastId;
      stop();
      paused = true;
      pause.textContent = "Resume";
      status.textContent = "paused";
      status.dataset.state = "paused";
      if (lastId === null) {
        // Nothing received yet: resume after what the channel holds now, not from its
        // oldest message.
        void scope.act(async () => {
          const page = await api<ChannelPage>("GET", `/v1/channels${query({ prefix: name, limit: 1 })}`, undefined, scope.signal);
          const held = page.channels[0];
          if (lastId === null) lastId = held?.name === name ? (held.last_id ?? "0") : "0";
        });
      }
    }
  });
  const from = h("input", { placeholder: "id, or 0 for the oldest", "data-testid": "tail-from", "aria-label": "Resume from id" });
  const fromForm = h("form", { class: "inline" }, from, h("button", { type: "submit", "data-testid": "tail-from-go" }, "Resume from id"));
  fromForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = from.value.trim();
    if (!id) return;
    fill(body);
    shown = 0;
    updateCount();
    start(id);
  });
  const clear = button("Clear", "tail-clear", () => {
    fill(body, empty);
    shown = 0;
    updateCount();
  });

  start();
  scope.defer(stop);
  return section("Live tail", "tail", h("div", { class: "toolbar" }, status, pause, clear, h("span", { class: "spacer" }), count, fromForm), h("div", { class: "scroll" }, t));
}


