// The console's entry: who is here (GET /v1/auth/me, a login form on 401), the left nav
// with the pages this principal may use, and the hash router that mounts one page at a
// time and closes the one it leaves (its polls and live streams end with it).

import { TidingsError, api, client } from "./api.js";
import { channelPage, channelsPage } from "./channels.js";
import { h } from "./dom.js";
import { jobPage, jobsPage } from "./jobs.js";
import { type Me, mayAny } from "./perms.js";
import { schedulesPage } from "./schedules.js";
import { labPage } from "./lab.js";
import { serverPage } from "./server.js";
import { Scope, clearError, describe, setupBanner, showError } from "./ui.js";
import { userPage, usersPage } from "./users.js";
import { workersPage } from "./workers.js";

/** What a page is given when it is mounted. */
export interface Ctx {
  me: Me;
  scope: Scope;
  /** The route's captures (decoded), e.g. the channel's name. */
  params: string[];
  /** The hash's query: `#/jobs?status=failed`. */
  query: URLSearchParams;
}

type PageFn = (view: HTMLElement, ctx: Ctx) => void;

interface NavItem {
  key: string;
  label: string;
  visible: (me: Me) => boolean;
  why: string;
}

// The nav, in order; a page is listed only for those who may use it.
const NAV: NavItem[] = [
  {
    key: "channels",
    label: "Channels",
    visible: (me) => mayAny(me, "subscribe") || mayAny(me, "publish"),
    why: "channels are for those with a subscribe or publish grant",
  },
  {
    key: "jobs",
    label: "Jobs",
    visible: (me) => mayAny(me, "submit") || mayAny(me, "work"),
    why: "jobs are for those with a submit or work grant",
  },
  {
    key: "schedules",
    label: "Schedules",
    visible: (me) => mayAny(me, "submit") || mayAny(me, "work"),
    why: "schedules are for those with a submit or work grant",
  },
  {
    key: "workers",
    label: "Workers",
    visible: (me) => me.permissions.admin || me.permissions.work.length > 0,
    why: "workers are for admins and those with a work grant",
  },
  { key: "server", label: "Server", visible: (me) => me.permissions.admin, why: "the server page is for admins" },
  { key: "users", label: "Users", visible: (me) => me.permissions.admin, why: "users are managed by admins" },
  { key: "lab", label: "Lab", visible: (me) => me.permissions.admin, why: "the lab is for admins" },
];

const ROUTES: [RegExp, string, PageFn][] = [
  [/^\/channels$/, "channels", channelsPage],
  [/^\/channels\/([^/]+)$/, "channels", channelPage],
  [/^\/jobs$/, "jobs", jobsPage],
  [/^\/jobs\/([^/]+)$/, "jobs", jobPage],
  [/^\/schedules$/, "schedules", schedulesPage],
  [/^\/workers$/, "workers", workersPage],
  [/^\/server$/, "server", serverPage],
  [/^\/users$/, "users", usersPage],
  [/^\/lab$/, "lab", labPage],
  [/^\/users\/([^/]+)$/, "users", userPage],
];

const app = document.getElementById("app") as HTMLElement;
let me: Me | null = null;
let scope: Scope | null = null;
let view: HTMLElement | null = null;
const navLinks = new Map<string, HTMLAnchorElement>();

function leavePage(): void {
  scope?.close();
  scope = null;
}

function route(): void {
  if (me === null || view === null) return;
  leavePage();
  clearError();
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = hash.split("?", 2);
  const allowed = NAV.filter((item) => item.visible(me as Me));
  let match: [RegExp, string, PageFn] | undefined;
  let params: string[] = [];
  for (const r of ROUTES) {
    const m = r[0].exec(path);
    if (m) {
      match = r;
      try {
        params = m.slice(1).map(decodeURIComponent);
      } catch {
        params = m.slice(1);
      }
      break;
    }
  }
  if (!match) {
    const first = allowed[0];
    if (first) location.replace(`#/${first.key}`);
    else view.replaceChildren(h("div", { class: "refusal", "data-testid": "forbidden" }, `${me.user} holds no grant that this console has a page for.`));
    return;
  }
  for (const [key, link] of navLinks) link.classList.toggle("active", key === match[1]);
  const item = NAV.find((n) => n.key === match[1]) as NavItem;
  document.title = `${item.label} · tidings console`;
  const page = h("div", { class: "page", "data-testid": `page-${match[1]}` });
  view.replaceChildren(page);
  if (!item.visible(me)) {
    page.appendChild(h("div", { class: "refusal", "data-testid": "forbidden" }, h("strong", null, "Not allowed. "), `${me.user} may not use this page: ${item.why}.`));
    return;
  }
  scope = new Scope();
  try {
    match[2](page, { me, scope, params, query: new URLSearchParams(search) });
  } catch (exc) {
    showError(exc);
  }
}

async function logout(): Promise<void> {
  try {
    await client.logout();
  } catch (exc) {
    showError(exc);
    return;
  }
  await start();
}

function shell(who: Me): void {
  navLinks.clear();
  const links = NAV.filter((item) => item.visible(who)).map((item) => {
    const a = h("a", { href: `#/${item.key}`, "data-testid": `nav-${item.key}` }, item.label);
    navLinks.set(item.key, a);
    return a;
  });
  const account = who.anonymous
    ? h("button", { type: "button", class: "link", "data-testid": "login-open", onclick: () => login(true) }, "Log in")
    : h("button", { type: "button", class: "link", "data-testid": "logout", onclick: () => void logout() }, "Log out");
  const banner = h("div", { class: "banner", "data-testid": "banner" });
  view = h("div", { class: "view" });
  app.replaceChildren(
    h(
      "nav",
      { class: "sidebar", "data-testid": "nav" },
      h(
        "div",
        { class: "sidebar-inner" },
        h("div", { class: "brand" }, "tidings", h("span", null, "console")),
        h("div", { class: "links" }, links),
        h(
          "div",
          { class: "who" },
          h("div", { class: "user", "data-testid": "nav-user" }, who.anonymous ? "anonymous" : who.user),
          h("div", { class: "role", "data-testid": "nav-role" }, who.permissions.admin ? "admin" : "limited grants"),
          account,
        ),
      ),
    ),
    h("main", null, banner, view),
  );
  setupBanner(banner, () => login(false, "Your session ended: log in again."));
  route();
}

/** The login form; `cancel`: a way back (for an anonymous principal who may go on). */
function login(cancel: boolean, note = ""): void {
  leavePage();
  me = null;
  view = null;
  const user = h("input", { name: "username", autocomplete: "username", required: true, "data-testid": "login-user" });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true, "data-testid": "login-password" });
  const error = h("p", { class: "error", "data-testid": "login-error", role: "alert" }, note);
  const submit = h("button", { type: "submit", class: "primary", "data-testid": "login-submit" }, "Log in");
  const form = h(
    "form",
    { class: "login card", "data-testid": "login-form" },
    h("div", { class: "brand" }, "tidings", h("span", null, "console")),
    h("label", { class: "field" }, h("span", { class: "label" }, "User"), user),
    h("label", { class: "field" }, h("span", { class: "label" }, "Password"), password),
    error,
    h("div", { class: "row" }, submit, cancel ? h("button", { type: "button", class: "link", "data-testid": "login-cancel", onclick: () => void start() }, "Back") : null),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    submit.disabled = true;
    error.textContent = "";
    api("POST", "/v1/auth/login", { username: user.value, password: password.value })
      .then(() => start())
      .catch((exc) => {
        error.textContent = exc instanceof TidingsError && exc.status === 401 ? "Wrong user name or password." : describe(exc);
      })
      .finally(() => {
        submit.disabled = false;
      });
  });
  app.replaceChildren(h("div", { class: "login-page" }, form));
  user.focus();
}

async function start(): Promise<void> {
  try {
    me = (await client.me()) as unknown as Me;
  } catch (exc) {
    if (exc instanceof TidingsError && exc.status === 401) {
      login(false);
      return;
    }
    app.replaceChildren(
      h(
        "div",
        { class: "login-page" },
        h(
          "div",
          { class: "card refusal", "data-testid": "page-error" },
          h("p", null, "The server did not answer: ", describe(exc)),
          h("button", { type: "button", "data-testid": "retry-start", onclick: () => void start() }, "Try again"),
        ),
      ),
    );
    return;
  }
  shell(me);
}

// No promise rejection goes unhandled: whatever escaped a page is shown, not thrown.
window.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  showError(event.reason);
});
window.addEventListener("hashchange", route);
void start();
