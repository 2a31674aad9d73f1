// What the suites share: a real tidings server on a free loopback port, started from the
// project's virtualenv (or TIDINGS_BIN), stopped by its PID; and small waiting helpers.

import { spawn, spawnSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";

const here = path.dirname(fileURLToPath(import.meta.url));
export const TIDINGS = process.env.TIDINGS_BIN ?? path.resolve(here, "../../../.venv/bin/tidings");

const live = new Set();
process.on("exit", () => {
  // A suite that failed before its own cleanup still leaves no server behind.
  for (const child of live) {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
});

/** The environment without TIDINGS_* variables (`make` exports some; the server would
 * take them, and reports unknown ones). */
export function cleanEnv(extra = {}) {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("TIDINGS_")) env[k] = v;
  return { ...env, ...extra };
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function tempDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), "tidings-js-"));
}

export function sqliteStore(dir) {
  return `sqlite:///${path.join(dir, "tidings.db")}`;
}

/** Run the tidings command to its end (users add, ...); throws with its output on failure. */
export function tidingsCommand(args, input) {
  const result = spawnSync(TIDINGS, args, { input, env: cleanEnv(), encoding: "utf8", timeout: 30_000 });
  if (result.status !== 0) {
    throw new Error(`tidings ${args.join(" ")} failed (${result.status}): ${result.stdout}${result.stderr}`);
  }
  return result.stdout;
}

/**
 * Start `tidings serve` and wait until /readyz answers 200.
 * Returns {url, port, store, stop(), kill(), restart()}.
 */
export async function startServer({ port, store = "memory://", args = [] } = {}) {
  if (!fs.existsSync(TIDINGS)) {
    throw new Error(`no tidings command at ${TIDINGS}: run \`make dev\` first, or set TIDINGS_BIN`);
  }
  port ??= await freePort();
  const argv = ["serve", "--host", "127.0.0.1", "--port", String(port), "--store", store, ...args];
  const child = spawn(TIDINGS, argv, { env: cleanEnv(), stdio: ["ignore", "pipe", "pipe"] });
  live.add(child);
  let output = "";
  child.stdout.on("data", (b) => (output += b));
  child.stderr.on("data", (b) => (output += b));
  const exited = new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal })));
  exited.then(() => live.delete(child));
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`tidings serve exited before it was ready:\n${output}`);
    }
    try {
      const r = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(1000) });
      if (r.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      process.kill(child.pid, "SIGKILL");
      throw new Error(`tidings serve was not ready within 20 s:\n${output}`);
    }
    await delay(50);
  }
  const end = async (signal) => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    process.kill(child.pid, signal);
    const timer = setTimeout(() => {
      try {
        process.kill(child.pid, "SIGKILL");
      } catch {
        // gone meanwhile
      }
    }, 5000);
    await exited;
    clearTimeout(timer);
  };
  return {
    url,
    port,
    store,
    output: () => output,
    /** SIGTERM: the server ends its streams and exits. */
    stop: () => end("SIGTERM"),
    /** SIGKILL: the server vanishes mid-stream. */
    kill: () => end("SIGKILL"),
  };
}

export function delay(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Wait until `predicate()` is true, checking every 20 ms; throws after `ms`. */
export async function until(predicate, ms = 10_000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await delay(20);
  }
}

/** The first `n` items of an async iterable, or an error after `ms`. */
export async function take(iterable, n, ms = 10_000) {
  const items = [];
  const iterator = iterable[Symbol.asyncIterator]();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => {
      const shown = items.length > 10 ? `the last 10: ${JSON.stringify(items.slice(-10))}` : JSON.stringify(items);
      reject(new Error(`got ${items.length} of ${n} items within ${ms} ms; ${shown}`));
    }, ms);
  });
  try {
    while (items.length < n) {
      const next = await Promise.race([iterator.next(), timeout]);
      if (next.done) break;
      items.push(next.value);
    }
  } finally {
    clearTimeout(timer);
  }
  return items;
}

/** Plain HTTP against the server, outside the client under test. */
export async function http(url, method, path, body, headers = {}) {
  const init = { method, headers: { ...headers } };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(url + path, init);
  const text = await r.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON
  }
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return json;
}

/** Publish `n` messages (data 0, 1, ... n-1, in that order) to a channel through one
 * WebSocket, outside the client under test: quicker than a request each. */
export async function publishMany(url, channel, n) {
  const ws = new WebSocket(`${url.replace(/^http/, "ws")}/v1/channels/${encodeURIComponent(channel)}/ws`);
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  try {
    await new Promise((resolve, reject) => {
      let acks = 0;
      ws.on("message", (raw) => {
        const frame = JSON.parse(raw.toString());
        if (frame.type === "error") reject(new Error(`publishing to ${channel}: ${raw}`));
        else if (frame.type === "ack" && ++acks === n) resolve();
      });
      ws.once("close", (code) => reject(new Error(`the publishing socket closed (${code}) after ${acks} of ${n}`)));
      for (let i = 0; i < n; i++) ws.send(JSON.stringify({ data: i, ref: i }));
    });
  } finally {
    ws.close();
  }
}
