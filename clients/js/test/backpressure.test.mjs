// Readers slower than the stream: a subscription holds a bounded number of items for its
// reader, stops taking more until the reader catches up, and then goes on from where it
// stopped, on every transport and for every channel it follows.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocketPackage from "ws";

import { Tidings, idAfter } from "../dist/tidings.js";
import { delay, http, publishMany, startServer, take, until } from "./helpers.mjs";

const T = { timeout: 30_000 };
const fast = { pollInterval: 0.1, reconnectDelay: 0.1 };

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

function client() {
  return new Tidings({ url: server.url, WebSocket: WebSocketPackage, timeout: 10 });
}

let serial = 0;
const fresh = (name) => `${name}.${process.pid}.${++serial}`;

/** Every message of `channel` among `items`, checked to be in order and without gaps. */
function dataOf(items, channel) {
  const mine = items.filter((m) => m.channel === channel);
  for (const m of mine) assert.equal(m.type, "message");
  for (let i = 1; i < mine.length; i++) assert.ok(idAfter(mine[i].id, mine[i - 1].id), "ids increase");
  return mine.map((m) => m.data);
}

const range = (n) => Array.from({ length: n }, (_, i) => i);

describe("a reader that lags", () => {
  for (const via of ["longpoll", "poll", "ws", "sse"]) {
    test(`over ${via}: several channels behind a lagging reader each go on to their end`, T, async () => {
      const a = fresh(`lag-a-${via}`);
      const b = fresh(`lag-b-${via}`);
      // Together more than the subscription holds for its reader, each less than that.
      await publishMany(server.url, a, 800);
      await publishMany(server.url, b, 800);
      const sub = client().subscribe([a, b], { via, after: "0", ...fast });
      await until(() => sub.status?.state === "open", 10_000, `${via} to open`);
      await delay(1000); // the reader is busy elsewhere: the subscription's queue fills up
      const got = await take(sub, 1600, 15_000);
      sub.close();
      assert.deepEqual(dataOf(got, a), range(800));
      assert.deepEqual(dataOf(got, b), range(800));
    });
  }

  test("over ws: the socket of a reader that lags far behind is closed, and the subscription resumes from its cursor", T, async () => {
    const ch = fresh("lag-ws");
    const n = 2500; // more than a WebSocket subscription holds for its reader
    await publishMany(server.url, ch, n);
    const statuses = [];
    const sub = client().subscribe(ch, { via: "ws", after: "0", ...fast, onStatus: (s) => statuses.push(s) });
    await until(() => sub.status?.state === "open", 10_000, "ws to open");
    // Nothing is read meanwhile: the client lets go of the socket rather than queue it all.
    await until(
      async () => ((await http(server.url, "GET", `/v1/channels/${ch}`)).subscribers?.ws ?? 0) === 0,
      10_000,
      "the server to see the WebSocket closed",
    );
    const got = await take(sub, n, 15_000);
    assert.deepEqual(dataOf(got, ch), range(n));
    const reconnects = statuses.filter((s) => s.state === "reconnecting");
    assert.equal(reconnects.length, 1, "one reconnect, once the reader caught up");
    assert.equal(reconnects[0].error, undefined, "closed on purpose, not failed");
    await publishMany(server.url, ch, 1);
    assert.deepEqual((await take(sub, 1)).map((m) => m.data), [0]);
    sub.close();
  });

  test("over sse: time spent waiting for a slow reader does not count as a stalled stream", T, async () => {
    const ch = fresh("lag-sse");
    const n = 1200; // more than the subscription holds for its reader: it stops reading the stream
    await publishMany(server.url, ch, n);
    const statuses = [];
    const sub = client().subscribe(ch, {
      via: "sse",
      after: "0",
      stallTimeout: 2,
      ...fast,
      onStatus: (s) => statuses.push(s),
    });
    await until(() => sub.status?.state === "open", 10_000, "sse to open");
    await delay(3000); // longer than stallTimeout, with the stream paused for the reader
    const got = await take(sub, n, 10_000);
    assert.deepEqual(dataOf(got, ch), range(n));
    assert.deepEqual(
      statuses.filter((s) => s.state === "reconnecting").map((s) => s.error?.message),
      [],
      "the stream was not taken for a stalled one",
    );
    sub.close();
  });
});
