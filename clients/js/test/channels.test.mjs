// Publish and subscribe against a real server, on every transport Node can use.
import assert from "node:assert/strict";
import { getEventListeners } from "node:events";
import { after, before, describe, test } from "node:test";
import WebSocketPackage from "ws";

import { Tidings, TidingsError, idAfter } from "../dist/tidings.js";
import { delay, http, startServer, take, until } from "./helpers.mjs";

const T = { timeout: 20_000 };

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

// "ws" uses the ws package: Node 20 has no WebSocket of its own (Node 22 has).
const TRANSPORTS = ["sse", "longpoll", "poll", "ws"];
const fast = { pollInterval: 0.1, reconnectDelay: 0.1 };

function client(extra = {}) {
  return new Tidings({ url: server.url, WebSocket: WebSocketPackage, timeout: 10, ...extra });
}

let serial = 0;
const fresh = (name) => `${name}.${process.pid}.${++serial}`;

// Reported once the start cursors are known: what is published from then on is received.
async function started(sub) {
  await until(() => sub.status !== null, 10_000, `${sub.via} to start`);
}

async function opened(sub) {
  await until(() => sub.status?.state === "open", 10_000, `${sub.via} to open`);
}

describe("publish", () => {
  test("answers the durable message's id, channel and time", T, async () => {
    const t = client();
    const ack = await t.publish(fresh("pub"), { n: 1 });
    assert.match(ack.id, /^[0-9]+$/);
    assert.match(ack.time, /^\d{4}-\d\d-\d\dT/);
    const again = await t.publish(ack.channel, "x", { idempotencyKey: "k1" });
    const repeat = await t.publish(ack.channel, "y", { idempotencyKey: "k1" });
    assert.equal(repeat.id, again.id);
  });

  test("an invalid channel is a 400 TidingsError with the server's code and message", T, async () => {
    const err = await client().publish("bad name!", 1).catch((e) => e);
    assert.ok(err instanceof TidingsError);
    assert.equal(err.status, 400);
    assert.equal(err.code, "invalid_channel");
    assert.match(err.message, /channel/);
    assert.equal(err.body.error.code, "invalid_channel");
  });

  test("a server that is not there is status 0, code unreachable, saying where", T, async () => {
    const t = new Tidings({ url: "http://127.0.0.1:9", timeout: 5 });
    const err = await t.publish("news", 1).catch((e) => e);
    assert.ok(err instanceof TidingsError);
    assert.equal(err.status, 0);
    assert.equal(err.code, "unreachable");
    assert.match(err.message, /127\.0\.0\.1:9/);
    assert.equal(err.retryable, true);
  });

  test("a URL that is not http(s) is refused at once", T, () => {
    assert.throws(() => new Tidings({ url: "ftp://x" }), (e) => e instanceof TidingsError && e.code === "invalid_url");
    assert.throws(() => new Tidings({ url: "not a url" }), (e) => e.code === "invalid_url");
  });
});

describe("subscribe", () => {
  for (const via of TRANSPORTS) {
    test(`over ${via}: messages in order, each data of the type it was published with`, T, async () => {
      const t = client();
      const ch = fresh(`typed-${via}`);
      await t.publish(ch, "before: not wanted");
      const sub = t.subscribe(ch, { via, ...fast });
      await started(sub);
      const values = ["1", 1, 1.5, "true", true, null, "null", { a: [1, "2"] }, [1, 2], "", "line1\nline2"];
      for (const v of values) await t.publish(ch, v);
      await t.publish(ch, "named", { event: "greeting" });
      const got = await take(sub, values.length + 1);
      sub.close();
      assert.deepEqual(
        got.map((m) => m.data),
        [...values, "named"],
      );
      for (const m of got) {
        assert.equal(m.type, "message");
        assert.equal(m.channel, ch);
        assert.match(m.time, /^\d{4}-\d\d-\d\dT/);
      }
      assert.equal(got.at(-1).event, "greeting");
      assert.equal(got[0].event, null);
      for (let i = 1; i < got.length; i++) assert.ok(idAfter(got[i].id, got[i - 1].id));
      assert.equal(sub.lastId, got.at(-1).id);
      assert.equal(sub.via, via);
    });

    test(`over ${via}: after "0" replays what is kept; after an id resumes past it`, T, async () => {
      const t = client();
      const ch = fresh(`replay-${via}`);
      const acks = [];
      for (let i = 0; i < 4; i++) acks.push(await t.publish(ch, i));
      const all = t.subscribe(ch, { via, after: "0", ...fast });
      assert.deepEqual((await take(all, 4)).map((m) => m.data), [0, 1, 2, 3]);
      all.close();
      const rest = t.subscribe(ch, { via, after: acks[1].id, ...fast });
      assert.deepEqual((await take(rest, 2)).map((m) => m.data), [2, 3]);
      rest.close();
    });

    test(`over ${via}: a reset when retention dropped the history after the cursor`, T, async () => {
      const t = client();
      const ch = fresh(`reset-${via}`);
      const first = await t.publish(ch, 0);
      await http(server.url, "PUT", `/v1/channels/${ch}`, { retention: { max_messages: 2, max_age: 3600 } });
      for (let i = 1; i <= 5; i++) await t.publish(ch, i);
      const resets = [];
      const sub = t.subscribe(ch, { via, after: first.id, onReset: (r) => resets.push(r), ...fast });
      const got = await take(sub, 3);
      sub.close();
      assert.equal(got[0].type, "reset");
      assert.equal(got[0].channel, ch);
      assert.match(got[0].reason, /older than the retained history/);
      assert.deepEqual(got.slice(1).map((m) => m.data), [4, 5]);
      assert.equal(got[0].first, got[1].id);
      assert.equal(resets.length, 1);
    });
  }

  for (const via of TRANSPORTS) {
    test(`over ${via}: several channels on one subscription, each in order`, T, async () => {
      const t = client();
      const a = fresh("multi-a");
      const b = fresh("multi-b");
      const sub = t.subscribe([a, b], { via, ...fast });
      await started(sub);
      for (let i = 0; i < 3; i++) {
        await t.publish(a, `a${i}`);
        await t.publish(b, `b${i}`);
      }
      const got = await take(sub, 6);
      sub.close();
      assert.deepEqual(got.filter((m) => m.channel === a).map((m) => m.data), ["a0", "a1", "a2"]);
      assert.deepEqual(got.filter((m) => m.channel === b).map((m) => m.data), ["b0", "b1", "b2"]);
    });
  }

  test("no after means from now: what was published before is not given", T, async () => {
    const t = client();
    const ch = fresh("now");
    await t.publish(ch, "old");
    const sub = t.subscribe(ch, { via: "sse" });
    await opened(sub);
    await t.publish(ch, "new");
    const [m] = await take(sub, 1);
    sub.close();
    assert.equal(m.data, "new");
  });

  test("auto picks WebSocket when the runtime has one, else SSE", T, async () => {
    const ch = fresh("auto");
    const native = typeof globalThis.WebSocket === "function";
    const plain = new Tidings({ url: server.url });
    const sub = plain.subscribe(ch);
    await opened(sub);
    assert.equal(sub.via, native ? "ws" : "sse");
    await plain.publish(ch, 1);
    assert.deepEqual((await take(sub, 1)).map((m) => m.data), [1]);
    sub.close();

    const withWs = client().subscribe(ch);
    await opened(withWs);
    assert.equal(withWs.via, "ws");
    withWs.close();
  });

  test("via ws without a WebSocket is refused at once, saying what to do", T, () => {
    const t = new Tidings({ url: server.url, WebSocket: null });
    assert.throws(() => t.subscribe("x", { via: "ws" }), (e) => e.code === "unsupported" && /WebSocket/.test(e.message));
  });

  test("callbacks alone receive everything; close() stops them and reports closed", T, async () => {
    const t = client();
    const ch = fresh("callbacks");
    const got = [];
    const states = [];
    const sub = t.subscribe(ch, {
      via: "longpoll",
      onMessage: (m) => got.push(m.data),
      onStatus: (s) => states.push(s.state),
    });
    await started(sub);
    await t.publish(ch, "a");
    await t.publish(ch, "b");
    await until(() => got.length === 2, 10_000, "two messages");
    sub.close();
    assert.equal(await sub.ended, null);
    await t.publish(ch, "c");
    await delay(200);
    assert.deepEqual(got, ["a", "b"]);
    assert.deepEqual([states[0], states[1], states.at(-1)], ["connecting", "open", "closed"]);
  });

  test("breaking out of for-await closes the subscription", T, async () => {
    const t = client();
    const ch = fresh("break");
    const sub = t.subscribe(ch, { via: "sse", after: "0" });
    await t.publish(ch, 1);
    for await (const m of sub) {
      assert.equal(m.data, 1);
      break;
    }
    assert.equal(await sub.ended, null);
    assert.equal(sub.status.state, "closed");
  });

  for (const when of ["before", "while"]) {
    test(`close() ${when} a WebSocket connects leaves no socket and no stray error`, T, async () => {
      const t = client();
      const ch = fresh("ws-close");
      const sub = t.subscribe(ch, {
        via: "ws",
        after: "0",
        onStatus: (s) => {
          if (s.state !== "connecting") return;
          if (when === "before") sub.close();
          else setTimeout(() => sub.close(), 0);
        },
      });
      assert.equal(await sub.ended, null);
      await delay(300);
      const info = await http(server.url, "GET", `/v1/channels/${ch}`).catch(() => null);
      assert.equal(info?.subscribers?.ws ?? 0, 0);
    });
  }

  test("an AbortSignal ends a subscription", T, async () => {
    const controller = new AbortController();
    const sub = client().subscribe(fresh("abort"), { via: "sse", signal: controller.signal });
    await opened(sub);
    controller.abort();
    assert.equal(await sub.ended, null);
  });

  test("a subscription that ended lets go of the AbortSignal it shares with others", T, async () => {
    const controller = new AbortController();
    const t = client();
    const listeners = () => getEventListeners(controller.signal, "abort").length;
    const refused = t.subscribe("bad name!", { via: "longpoll", after: "0", signal: controller.signal });
    assert.equal((await refused.ended)?.status, 400);
    const closed = t.subscribe(fresh("shared-signal"), { via: "sse", signal: controller.signal });
    await opened(closed);
    closed.close();
    await closed.ended;
    assert.equal(listeners(), 0);
    const live = t.subscribe(fresh("shared-signal"), { via: "sse", signal: controller.signal });
    await opened(live);
    assert.equal(listeners(), 1);
    controller.abort();
    assert.equal(await live.ended, null);
  });

  test("a subscription to a server that went away says it reconnects, with growing delays", T, async () => {
    const t = new Tidings({ url: "http://127.0.0.1:9", timeout: 2 });
    const statuses = [];
    const sub = t.subscribe("news", {
      via: "longpoll",
      reconnectDelay: 0.05,
      maxReconnectDelay: 0.2,
      onStatus: (s) => statuses.push(s),
    });
    await until(() => statuses.filter((s) => s.state === "reconnecting").length >= 4, 10_000, "four reconnects");
    sub.close();
    const reconnects = statuses.filter((s) => s.state === "reconnecting");
    assert.deepEqual(reconnects.slice(0, 4).map((s) => s.attempt), [1, 2, 3, 4]);
    for (const s of reconnects) {
      assert.equal(s.error.code, "unreachable");
      assert.ok(s.delay > 0 && s.delay <= 0.2, `delay ${s.delay} within the cap`);
    }
  });
});

describe("read", () => {
  test("a short poll and a long poll", T, async () => {
    const t = client();
    const ch = fresh("read");
    const page = await t.read(ch, { after: "0" });
    assert.deepEqual(page, { messages: [], next: "0", reset: false });
    const waiting = t.read(ch, { after: "0", wait: 5 });
    await delay(100);
    await t.publish(ch, "late");
    const got = await waiting;
    assert.deepEqual(got.messages.map((m) => m.data), ["late"]);
    assert.equal(got.next, got.messages[0].id);
  });
});

test("idAfter orders decimal ids past 2^53 and tells other ids apart only by equality", T, () => {
  assert.ok(idAfter("10", "9"));
  assert.ok(!idAfter("9", "10"));
  assert.ok(idAfter("900719925474099300", "900719925474099299"));
  assert.ok(!idAfter("5", "5"));
  assert.ok(idAfter("anything", null));
  assert.ok(idAfter("b", "a") && idAfter("a", "b") && !idAfter("a", "a"));
});
