// Users (admins): the users and their grants, a form to create or change one, and per
// user the tokens and sessions, with revoke buttons and a form that makes a token.

import { TidingsError, api, seg } from "./api.js";
import { add, fill, h, when } from "./dom.js";
import type { Ctx } from "./main.js";
import type { Permissions } from "./perms.js";
import { type Scope, confirmButton, emptyRow, field, refusal, section, table, title } from "./ui.js";

interface User {
  name: string;
  password: boolean;
  permissions: Permissions;
  created: number;
}

interface Credential {
  key: string;
  kind: "token" | "session";
  name: string;
  created: string;
  expires: string | null;
}

const ACTIONS = ["publish", "subscribe", "submit", "work"] as const;
const userHref = (name: string): string => `#/users/${seg(name)}`;

const globs = (list: string[]): string => list.join(", ");
const parseGlobs = (text: string): string[] =>
  text
    .split(",")
    .map((x) => x.trim())
    .filter((x) => x !== "");

/** The create/edit form; `user` null: a new user. `saved` gets the stored user. */
function userForm(scope: Scope, user: User | null, saved: (user: User) => void): HTMLElement {
  const name = h("input", { required: true, value: user?.name ?? "", readonly: user !== null, autocomplete: "username", "data-testid": "user-name", pattern: "[A-Za-z0-9_@\\-]{1,64}" });
  const inputs = Object.fromEntries(
    ACTIONS.map((a) => [a, h("input", { value: user ? globs(user.permissions[a]) : "", placeholder: a === "subscribe" ? "e.g. news.*, user.{sub}.*" : "", "data-testid": `user-${a}` })]),
  ) as Record<(typeof ACTIONS)[number], HTMLInputElement>;
  const admin = h("input", { type: "checkbox", checked: user?.permissions.admin ?? false, "data-testid": "user-admin" });
  const password = h("input", { type: "password", autocomplete: "new-password", minlength: 8, placeholder: user ? "leave empty to keep" : "optional: tokens only without", "data-testid": "user-password" });
  const result = h("p", { class: "muted", "data-testid": "user-result", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "user-form", "data-testid": "user-form" },
    field("Name", name, "1-64 of A-Z a-z 0-9 _ @ -"),
    h("div", { class: "row" }, field("Publish", inputs.publish), field("Subscribe", inputs.subscribe)),
    h("div", { class: "row" }, field("Submit", inputs.submit), field("Work", inputs.work)),
    h("p", { class: "hint" }, "Grants are comma-separated globs over channel names or job types: *, news.*, user.{sub}.* ({sub} is the user's own name)."),
    h("div", { class: "row" }, h("label", { class: "check" }, admin, " Admin (may do everything)"), field("Password", password)),
    h("div", { class: "row" }, h("button", { type: "submit", class: "primary", "data-testid": "user-save" }, user ? "Save changes" : "Create user"), result),
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body: { permissions: Permissions; password?: string } = {
      permissions: {
        publish: parseGlobs(inputs.publish.value),
        subscribe: parseGlobs(inputs.subscribe.value),
        submit: parseGlobs(inputs.submit.value),
        work: parseGlobs(inputs.work.value),
        admin: admin.checked,
      },
    };
    if (password.value) body.password = password.value;
    void scope.act(() => api<User>("PUT", `/v1/admin/users/${seg(name.value.trim())}`, body)).then((stored) => {
      if (!stored) return;
      password.value = "";
      result.textContent = user ? `Saved ${stored.name}.` : `Created ${stored.name}.`;
      saved(stored);
    });
  });
  return form;
}

export function usersPage(view: HTMLElement, ctx: Ctx): void {
  const { scope } = ctx;
  const { table: t, body } = table("users-table", ["User", "Password", ...ACTIONS.map((a) => a[0].toUpperCase() + a.slice(1)), "Admin", "Created", ""]);
  const load = async () => {
    const { users } = await api<{ users: User[] }>("GET", "/v1/admin/users", undefined, scope.signal);
    users.sort((a, b) => a.name.localeCompare(b.name));
    fill(
      body,
      users.length === 0
        ? emptyRow(9, "No users: create one below.", "users-empty")
        : users.map((u) =>
            h(
              "tr",
              { "data-testid": "user-row", "data-name": u.name },
              h("td", null, h("a", { href: userHref(u.name), "data-testid": "user-link" }, u.name)),
              h("td", null, u.password ? "yes" : h("span", { class: "muted" }, "no")),
              ACTIONS.map((a) => h("td", { class: "mono small", "data-testid": `user-row-${a}` }, globs(u.permissions[a]) || h("span", { class: "muted" }, "—"))),
              h("td", { "data-testid": "user-row-admin" }, u.permissions.admin ? h("span", { class: "badge admin" }, "admin") : ""),
              h("td", { class: "nowrap" }, when(u.created)),
              h(
                "td",
                { class: "actions" },
                confirmButton("Delete", `Delete ${u.name}?`, "user-delete", async () => {
                  // Reloaded only when the delete went through: a reload would clear its error.
                  const done = await scope.act(async () => (await api("DELETE", `/v1/admin/users/${seg(u.name)}`), true));
                  if (done) await scope.act(load);
                }),
              ),
            ),
          ),
    );
  };
  add(view, 
    title("Users"),
    h("section", { class: "card", "data-testid": "users-card" }, h("h2", null, "Users and their grants"), h("div", { class: "scroll" }, t)),
    section("New user", "user-create-card", userForm(scope, null, (u) => (location.hash = userHref(u.name)))),
  );
  void scope.act(load);
}

export function userPage(view: HTMLElement, ctx: Ctx): void {
  const { scope } = ctx;
  const name = ctx.params[0];
  const formBox = h("div", null, h("p", { class: "muted" }, "Loading…"));
  const { table: ct, body: cbody } = table("credentials-table", ["Kind", "Name", "Key", "Created", "Expires", ""]);
  const secret = h("div", { "data-testid": "token-secret-box" });

  const loadCredentials = async () => {
    const { credentials } = await api<{ credentials: Credential[] }>("GET", `/v1/admin/users/${seg(name)}/credentials`, undefined, scope.signal);
    fill(
      cbody,
      credentials.length === 0
        ? emptyRow(6, "No token and no session.", "credentials-empty")
        : credentials.map((c) =>
            h(
              "tr",
              { "data-testid": "credential-row", "data-key": c.key, "data-kind": c.kind },
              h("td", null, h("span", { class: `badge kind-${c.kind}` }, c.kind)),
              h("td", null, c.name || h("span", { class: "muted" }, "—")),
              h("td", { class: "mono small", title: c.key }, `${c.key.slice(0, 12)}…`),
              h("td", { class: "nowrap" }, when(c.created)),
              h("td", { class: "nowrap" }, c.expires ? when(c.expires) : "never"),
              h(
                "td",
                { class: "actions" },
                confirmButton("Revoke", `Revoke this ${c.kind}?`, "credential-revoke", async () => {
                  const done = await scope.act(async () => (await api("DELETE", `/v1/admin/tokens/${seg(c.key)}`), true));
                  if (done) await scope.act(loadCredentials);
                }),
              ),
            ),
          ),
    );
  };

  const tokenName = h("input", { placeholder: "e.g. ci", "data-testid": "token-name" });
  const tokenExpires = h("input", { type: "number", min: 1, step: "any", placeholder: "never", "data-testid": "token-expires" });
  const tokenForm = h(
    "form",
    { "data-testid": "token-form" },
    h("div", { class: "row" }, field("Token name", tokenName), field("Expires in (s)", tokenExpires), h("button", { type: "submit", "data-testid": "token-create" }, "Create token")),
    secret,
  );
  tokenForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const body = { name: tokenName.value.trim(), expires: tokenExpires.value ? Number(tokenExpires.value) : null };
    void scope.act(() => api<{ token: string; key: string }>("POST", `/v1/admin/users/${seg(name)}/tokens`, body)).then((made) => {
      if (!made) return;
      fill(
        secret,
        h(
          "div",
          { class: "secret" },
          h("p", null, h("strong", null, "The token, shown this once: "), "copy it now."),
          h("code", { "data-testid": "token-secret" }, made.token),
        ),
      );
      tokenName.value = "";
      tokenExpires.value = "";
      void scope.act(loadCredentials);
    });
  });

  add(view, 
    title(name, h("a", { href: "#/users", class: "back", "data-testid": "back" }, "‹ All users")),
    h(
      "div",
      { class: "grid" },
      section("User and grants", "user-edit-card", formBox),
      section("Tokens and sessions", "credentials-card", h("div", { class: "scroll" }, ct), h("h3", null, "New token"), tokenForm),
    ),
  );
  void (async () => {
    try {
      const { users } = await api<{ users: User[] }>("GET", "/v1/admin/users", undefined, scope.signal);
      const user = users.find((u) => u.name === name);
      if (!user) throw new TidingsError(404, "not_found", `no user ${name}`);
      fill(
        formBox,
        userForm(scope, user, () => undefined),
        h(
          "div",
          { class: "row danger-zone" },
          confirmButton("Delete user", `Delete ${name}, their tokens and sessions?`, "user-delete", async () => {
            const done = await scope.act(async () => {
              await api("DELETE", `/v1/admin/users/${seg(name)}`);
              return true;
            });
            if (done) location.hash = "#/users";
          }),
        ),
      );
      await loadCredentials();
    } catch (exc) {
      if (!scope.closed) fill(formBox, refusal(exc));
    }
  })();
}
