// Subscribers ride out a server restart on the same port and SQLite file: killed outright
// (SIGKILL), then stopped cleanly (SIGTERM). Every message arrives once, in order.
import assert from "node:assert/strict";
import fs from "node:fs";
import { after, test } from "node:test";
import WebSocketPackage from "ws";

import { Tidings } from "../dist/tidings.js";
import { delay, sqliteStore, startServer, take, tempDir, until } from "./helpers.mjs";

const dir = tempDir();
let server;
after(async () => {
  await server?.stop();
  fs.rmSync(dir, { recursive: true, force: true });
});

test("every transport resumes after the server restarts: nothing lost, nothing twice", { timeout: 45_000 }, async () => {
  server = await startServer({ store: sqliteStore(dir) });
  const { port, store } = server;
  const t = new Tidings({ url: server.url, WebSocket: WebSocketPackage, timeout: 5 });
  const ch = "restart.news";
  const vias = ["sse", "longpoll", "poll", "ws"];
  const statuses = Object.fromEntries(vias.map((v) => [v, []]));
  const subs = vias.map((via) =>
    t.subscribe(ch, {
      via,
      pollInterval: 0.1,
      reconnectDelay: 0.1,
      maxReconnectDelay: 0.5,
      onStatus: (s) => statuses[via].push(s),
    }),
  );
  const collected = subs.map((sub) => take(sub, 6, 40_000));
  await until(() => subs.every((s) => s.status !== null), 10_000, "subscriptions to start");

  await t.publish(ch, 1);
  await t.publish(ch, 2);
  await delay(200);
  await server.kill();
  server = await startServer({ port, store });
  await t.publish(ch, 3);
  await t.publish(ch, 4);
  await until(
    () => subs.every((s) => s.lastId !== null && s.status?.state === "open"),
    15_000,
    "every subscription to reconnect",
  );
  await server.stop();
  server = await startServer({ port, store });
  await t.publish(ch, 5);
  await t.publish(ch, 6);

  const results = await Promise.all(collected);
  for (const [i, via] of vias.entries()) {
    assert.deepEqual(results[i].map((m) => m.data), [1, 2, 3, 4, 5, 6], via);
    const ids = results[i].map((m) => m.id);
    assert.equal(new Set(ids).size, 6, `${via}: no id twice`);
    const reconnecting = statuses[via].filter((s) => s.state === "reconnecting");
    assert.ok(reconnecting.length >= 2, `${via} said it reconnects: ${JSON.stringify(statuses[via])}`);
    for (const s of reconnecting) {
      assert.ok(s.delay > 0 && s.delay <= 0.5, `${via}: delay ${s.delay} within the cap`);
    }
    assert.ok(reconnecting.some((s) => s.error?.code === "unreachable"), `${via}: a failure was reported`);
  }
  // Nothing more arrives: a later message is the only next item.
  await t.publish(ch, 7);
  for (const sub of subs) {
    const [next] = await take(sub, 1, 10_000);
    assert.equal(next.data, 7, sub.via);
    sub.close();
  }
});
