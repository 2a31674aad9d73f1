// Jobs followed to their end: submit, events over every transport, wait, cancel. The
// worker is this test itself, speaking the worker protocol over HTTP (lease, heartbeat,
// complete), as a worker in any language would.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import WebSocketPackage from "ws";

import { Tidings, TidingsError } from "../dist/tidings.js";
import { delay, http, startServer } from "./helpers.mjs";

const T = { timeout: 20_000 };

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

/** Lease one job of `type`, report two progress steps, then complete it with `result(payload)`. */
async function work(type, result) {
  const { jobs } = await http(server.url, "POST", "/v1/workers/lease", { types: [type], max: 1, wait: 10 });
  assert.equal(jobs.length, 1, "a job to work on");
  const [job] = jobs;
  for (const progress of [0.25, 0.75]) {
    await http(server.url, "POST", `/v1/jobs/${job.id}/heartbeat`, {
      lease_token: job.lease_token,
      progress,
      message: `at ${progress}`,
    });
    await delay(30);
  }
  await http(server.url, "POST", `/v1/jobs/${job.id}/complete`, {
    lease_token: job.lease_token,
    result: result(job.payload),
  });
  return job;
}

async function collect(iterable, ms = 15_000) {
  const events = [];
  const timer = setTimeout(() => iterable.close(), ms);
  try {
    for await (const e of iterable) events.push(e);
  } finally {
    clearTimeout(timer);
  }
  return events;
}

describe("jobs", () => {
  for (const via of ["sse", "longpoll", "poll", "ws", "auto"]) {
    test(`events over ${via}: queued, running, progress, succeeded, then the iteration ends`, T, async () => {
      const t = client();
      const type = `double.${via}`;
      const job = await t.submit(type, { x: 21 }, { maxAttempts: 2, priority: 1 });
      assert.equal(job.job.status, "queued");
      assert.equal(job.job.max_attempts, 2);
      assert.equal(job.served, false); // no worker has asked for this type yet
      const events = job.events({ via });
      const worked = work(type, (p) => ({ doubled: p.x * 2 }));
      const got = await collect(events);
      await worked;
      assert.deepEqual(
        got.map((e) => e.event),
        ["queued", "running", "progress", "progress", "succeeded"],
      );
      assert.deepEqual(
        got.filter((e) => e.event === "progress").map((e) => e.job.progress),
        [0.25, 0.75],
      );
      const last = got.at(-1);
      assert.equal(last.type, "job");
      assert.equal(last.job.status, "succeeded");
      assert.deepEqual(last.job.result, { doubled: 42 });
      assert.deepEqual(last.job.payload, { x: 21 }); // carried over from the submit answer
      assert.equal(job.job.status, "succeeded");
      assert.equal(events.via, via === "auto" ? "ws" : via); // the ws package is given
      assert.equal(await events.ended, null);
      // Following a finished job replays its events and ends.
      const again = await collect(job.events({ via }));
      assert.equal(again.length, 5);
    });
  }

  test("wait() long-polls until the job has ended and answers it", T, async () => {
    const t = client();
    const job = await t.submit("double.wait", { x: 5 });
    const waiting = job.wait(10);
    await work("double.wait", (p) => p.x * 2);
    const done = await waiting;
    assert.equal(done.status, "succeeded");
    assert.equal(done.result, 10);
    assert.equal(await job.wait(), done); // already finished: no request
  });

  test("wait(timeout) gives up with job_timeout while the job goes on", T, async () => {
    const job = await client().submit("nobody.works.this");
    const err = await job.wait(0.3).catch((e) => e);
    assert.ok(err instanceof TidingsError);
    assert.equal(err.code, "job_timeout");
    assert.equal((await job.refresh()).status, "queued");
  });

  test("cancel() cancels a queued job and its events end with cancelled", T, async () => {
    const t = client();
    const job = await t.submit("nobody.works.this.either", [1, 2]);
    const cancelled = await job.cancel();
    assert.equal(cancelled.status, "cancelled");
    const events = await collect(job.events({ via: "sse" }));
    assert.deepEqual(events.map((e) => e.event), ["queued", "cancelled"]);
    assert.equal((await job.wait()).status, "cancelled");
  });

  test("a job that does not exist is a 404 TidingsError, and so are its events", T, async () => {
    const t = client();
    const err = await t.job("999999999").catch((e) => e);
    assert.equal(err.status, 404);
    assert.equal(err.code, "not_found");
    const handle = await t.submit("nobody.here");
    const missing = Object.assign(Object.create(Object.getPrototypeOf(handle)), handle, { id: "999999999" });
    for (const via of ["sse", "longpoll", "ws"]) {
      const events = missing.events({ via });
      const thrown = await collect(events).catch((e) => e);
      assert.ok(thrown instanceof TidingsError, `${via}: ${thrown}`);
      assert.ok([403, 404].includes(thrown.status), `${via}: ${thrown.status} ${thrown.message}`);
    }
  });
});
