// "auto" behind hostile middleboxes: a proxy that refuses WebSocket upgrades, and one that
// also holds back event streams (as a buffering proxy does). The subscription falls back
// WebSocket -> SSE -> long polling, says so, and loses nothing.
import assert from "node:assert/strict";
import http from "node:http";
import { after, before, describe, test } from "node:test";
import WebSocketPackage from "ws";

import { Tidings } from "../dist/tidings.js";
import { delay, startServer, take, until } from "./helpers.mjs";

const T = { timeout: 20_000 };
let server;

before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

/** A proxy to the server that refuses upgrades and, with `holdStreams`, sends an event
 * stream's head but keeps its body. */
async function proxy({ holdStreams }) {
  const upstream = new URL(server.url);
  const held = new Set();
  const srv = http.createServer((req, res) => {
    const forward = http.request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        res.flushHeaders();
        const stream = (answer.headers["content-type"] ?? "").startsWith("text/event-stream");
        if (holdStreams && stream) {
          held.add(answer);
          answer.on("data", () => {}); // read and drop: nothing reaches the client
          res.on("close", () => answer.destroy());
        } else {
          answer.pipe(res);
        }
      },
    );
    forward.on("error", () => res.destroy());
    req.pipe(forward);
  });
  srv.on("upgrade", (req, socket) => {
    socket.end("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
  });
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  return {
    url: `http://127.0.0.1:${srv.address().port}`,
    close: () =>
      new Promise((resolve) => {
        for (const a of held) a.destroy();
        srv.closeAllConnections();
        srv.close(resolve);
      }),
  };
}

describe("auto fallback", () => {
  test("upgrades refused: WebSocket gives way to SSE", T, async () => {
    const p = await proxy({ holdStreams: false });
    try {
      const statuses = [];
      const t = new Tidings({ url: p.url, WebSocket: WebSocketPackage, timeout: 5 });
      const sub = t.subscribe("fallback.ws", { onStatus: (s) => statuses.push(s) });
      await until(() => sub.status?.state === "open", 10_000, "a transport to open");
      await t.publish("fallback.ws", "through SSE");
      const [m] = await take(sub, 1);
      assert.equal(m.data, "through SSE");
      assert.equal(sub.via, "sse");
      const fallback = statuses.find((s) => s.state === "fallback");
      assert.equal(fallback.from, "ws");
      assert.equal(fallback.via, "sse");
      assert.ok(fallback.error, "the fallback says why");
      sub.close();
    } finally {
      await p.close();
    }
  });

  test("upgrades refused and streams held back: long polling takes over, nothing lost", T, async () => {
    const p = await proxy({ holdStreams: true });
    try {
      const statuses = [];
      const t = new Tidings({ url: p.url, WebSocket: WebSocketPackage, timeout: 5 });
      const sub = t.subscribe("fallback.buffered", { probeInterval: 0.3, onStatus: (s) => statuses.push(s) });
      await until(() => sub.status?.state === "open", 10_000, "SSE to open");
      assert.equal(sub.via, "sse");
      // Published straight to the server: the held stream never shows it.
      const direct = new Tidings({ url: server.url });
      await direct.publish("fallback.buffered", 1);
      await direct.publish("fallback.buffered", 2);
      const got = await take(sub, 2);
      assert.deepEqual(got.map((m) => m.data), [1, 2]);
      assert.equal(sub.via, "longpoll");
      const fallbacks = statuses.filter((s) => s.state === "fallback");
      assert.deepEqual(fallbacks.map((s) => [s.from, s.via]), [["ws", "sse"], ["sse", "longpoll"]]);
      assert.equal(fallbacks[1].error.code, "stream_buffered");
      await direct.publish("fallback.buffered", 3);
      assert.deepEqual((await take(sub, 1)).map((m) => m.data), [3]);
      sub.close();
    } finally {
      await p.close();
    }
  });

  test("a stream refused while a probe is on its way leaves no probe running", T, async () => {
    // A proxy that holds the event stream's request until a probe read is on its way, then
    // refuses the stream (503) while that read is still held.
    const upstream = new URL(server.url);
    const probes = [];
    let stream = null;
    const srv = http.createServer((req, res) => {
      const url = new URL(req.url, "http://proxy");
      if (url.pathname.endsWith("/events")) {
        stream = res;
        return;
      }
      const probe = url.searchParams.get("limit") === "1" && !url.searchParams.has("wait");
      const forward = () => {
        const f = http.request(
          { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
          (answer) => {
            res.writeHead(answer.statusCode, answer.headers);
            answer.pipe(res);
          },
        );
        f.on("error", () => res.destroy());
        req.pipe(f);
      };
      if (!probe) return forward();
      probes.push(Date.now());
      stream?.writeHead(503, { "content-type": "application/json" });
      stream?.end(JSON.stringify({ error: { code: "busy", message: "busy" } }));
      stream = null;
      setTimeout(forward, 500);
    });
    await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
    try {
      const t = new Tidings({ url: `http://127.0.0.1:${srv.address().port}`, WebSocket: null, timeout: 5 });
      const states = [];
      const sub = t.subscribe("fallback.probe", { after: "0", probeInterval: 0.2, onStatus: (s) => states.push(s.state) });
      await until(() => states.includes("fallback"), 10_000, "the refused stream to give way");
      const closedAt = Date.now();
      sub.close();
      await delay(1500);
      assert.ok(probes.length >= 1);
      assert.deepEqual(probes.filter((at) => at >= closedAt), [], "no probe read after close()");
    } finally {
      srv.closeAllConnections();
      await new Promise((resolve) => srv.close(resolve));
    }
  });
});
