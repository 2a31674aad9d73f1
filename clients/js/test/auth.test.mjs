// Login, logout and refusals against a server started with --require-auth.
import assert from "node:assert/strict";
import fs from "node:fs";
import { after, before, describe, test } from "node:test";
import WebSocketPackage from "ws";

import { Tidings, TidingsError } from "../dist/tidings.js";
import { sqliteStore, startServer, take, tempDir, tidingsCommand } from "./helpers.mjs";

const T = { timeout: 20_000 };
const PASSWORD = "a long enough passphrase";
const dir = tempDir();
let server;

before(async () => {
  const store = sqliteStore(dir);
  tidingsCommand(
    ["users", "add", "ann", "--store", store, "--password-stdin", "--publish", "news.*", "--subscribe", "news.*"],
    `${PASSWORD}\n`,
  );
  server = await startServer({ store, args: ["--require-auth"] });
});
after(async () => {
  await server?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

function client() {
  return new Tidings({ url: server.url, WebSocket: WebSocketPackage, timeout: 10 });
}

describe("auth", () => {
  test("anonymous calls get a 401 TidingsError saying how to log in", T, async () => {
    const err = await client().publish("news.a", 1).catch((e) => e);
    assert.ok(err instanceof TidingsError);
    assert.equal(err.status, 401);
    assert.equal(err.code, "unauthorized");
    assert.match(err.message, /login/);
    assert.equal(err.retryable, false);
  });

  test("a wrong password is a 401 and leaves the client anonymous", T, async () => {
    const t = client();
    const err = await t.login("ann", "wrong password").catch((e) => e);
    assert.equal(err.status, 401);
    assert.equal(t.token, null);
  });

  test("login, then publish and subscribe as the user; logout ends the session", T, async () => {
    const t = client();
    const answer = await t.login("ann", PASSWORD);
    assert.equal(answer.user, "ann");
    assert.match(answer.token, /.+/);
    assert.equal(t.token, answer.token);
    const me = await t.me();
    assert.equal(me.user, "ann");
    assert.equal(me.anonymous, false);

    for (const via of ["sse", "ws", "longpoll"]) {
      const ch = `news.${via}`;
      const sub = t.subscribe(ch, { via, after: "0" });
      await t.publish(ch, via);
      assert.deepEqual((await take(sub, 1)).map((m) => m.data), [via]);
      sub.close();
    }

    // The session's token works from another client too, until logout.
    const other = new Tidings({ url: server.url, token: answer.token });
    assert.equal((await other.me()).user, "ann");
    await t.logout();
    assert.equal(t.token, null);
    const after = await other.me().catch((e) => e);
    assert.equal(after.status, 401);
  });

  test("a forbidden channel is a 403 that ends a subscription at once, on every transport", T, async () => {
    const t = client();
    await t.login("ann", PASSWORD);
    const err = await t.publish("secret.x", 1).catch((e) => e);
    assert.equal(err.status, 403);
    assert.equal(err.code, "forbidden");
    for (const via of ["sse", "ws", "longpoll", "poll", "auto"]) {
      const statuses = [];
      const errors = [];
      const sub = t.subscribe("secret.x", { via, after: "0", onStatus: (s) => statuses.push(s), onError: (e) => errors.push(e) });
      const thrown = await take(sub, 1).catch((e) => e);
      assert.ok(thrown instanceof TidingsError, `${via}: ${thrown}`);
      assert.equal(thrown.status, 403, `${via}: ${thrown.message}`);
      assert.equal(await sub.ended, thrown);
      assert.deepEqual(errors, [thrown]);
      assert.equal(statuses.filter((s) => s.state === "reconnecting").length, 0, `${via} did not retry`);
      assert.equal(statuses.at(-1).state, "closed");
    }
    await t.logout();
  });

  test("a subscription without credentials ends with the 401", T, async () => {
    const sub = client().subscribe("news.x", { via: "sse" });
    const thrown = await take(sub, 1).catch((e) => e);
    assert.equal(thrown.status, 401);
  });
});
