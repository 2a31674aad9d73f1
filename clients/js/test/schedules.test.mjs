// Schedules (put, get, list paged, delete), a submit's `after`, `group` and `uniqueKey`,
// and batch submits, against a real server: the names mirror the Python SDK's.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { Tidings, TidingsError } from "../dist/tidings.js";
import { http, startServer } from "./helpers.mjs";

const T = { timeout: 20_000 };

let server;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server?.stop();
});

function client() {
  return new Tidings({ url: server.url, timeout: 10 });
}

async function refused(promise, status) {
  try {
    await promise;
  } catch (exc) {
    assert.ok(exc instanceof TidingsError, String(exc));
    assert.equal(exc.status, status, exc.message);
    return exc;
  }
  assert.fail(`no ${status}`);
}

describe("schedules", () => {
  test("put, get, list (following pages), replace, delete", T, async () => {
    const t = client();
    const made = await t.putSchedule("nightly", "report", { full: true }, { cron: "30 2 * * *", timezone: "Europe/Paris", maxAttempts: 2 });
    assert.equal(made.name, "nightly");
    assert.equal(made.cron, "30 2 * * *");
    assert.equal(made.timezone, "Europe/Paris");
    assert.equal(made.every, null);
    assert.equal(made.max_attempts, 2);
    assert.ok(Date.parse(made.next_run_at) > Date.now());
    for (const name of ["a1", "a2", "a3"]) await t.putSchedule(name, "tick", null, { every: 3600 });
    const got = await t.getSchedule("nightly");
    assert.deepEqual(got.payload, { full: true });
    // By name; `limit` cuts the listing short.
    const two = await t.listSchedules({ limit: 2 });
    assert.deepEqual(two.map((s) => s.name), ["a1", "a2"]);
    const all = await t.listSchedules();
    assert.deepEqual(all.map((s) => s.name), ["a1", "a2", "a3", "nightly"]);
    const replaced = await t.putSchedule("nightly", "report", null, { every: 60, catchUp: "skip" });
    assert.equal(replaced.cron, null);
    assert.equal(replaced.every, 60);
    assert.equal(replaced.catch_up, "skip");
    await t.deleteSchedule("nightly");
    await refused(t.getSchedule("nightly"), 404);
    await refused(t.deleteSchedule("nightly"), 404);
  });

  test("a bad cron, an unknown zone: 422 saying what to fix; neither or both of cron and every: refused here", T, async () => {
    const t = client();
    const cron = await refused(t.putSchedule("bad", "tick", null, { cron: "61 * * * *" }), 422);
    assert.match(cron.message, /cron/);
    const zone = await refused(t.putSchedule("bad", "tick", null, { cron: "* * * * *", timezone: "Mars/Olympus" }), 422);
    assert.match(zone.message, /Mars\/Olympus/);
    await refused(t.putSchedule("bad", "tick", null, {}), 0);
    await refused(t.putSchedule("bad", "tick", null, { cron: "* * * * *", every: 5 }), 0);
    await refused(t.getSchedule("bad"), 404);
  });
});

describe("dependencies, groups, unique keys, batches", () => {
  test("submit with after waits; group and uniqueKey are the job's; a second submit is deduplicated", T, async () => {
    const t = client();
    const parent = await t.submit("fetch.js", 1);
    const child = await t.submit("merge.js", null, { after: [parent.id], group: "tenant-7", uniqueKey: "merge-7" });
    assert.equal(child.job.status, "waiting");
    assert.deepEqual(child.job.after, [parent.id]);
    assert.equal(child.job.group, "tenant-7");
    assert.equal(child.job.unique_key, "merge-7");
    assert.equal(child.deduplicated, false);
    const again = await t.submit("merge.js", null, { uniqueKey: "merge-7" });
    assert.equal(again.deduplicated, true);
    assert.equal(again.id, child.id);
    await parent.cancel();
    const ended = await child.refresh();
    assert.equal(ended.status, "cancelled");
    assert.equal(ended.error.type, "ParentCancelled");
    await refused(t.submit("merge.js", null, { after: ["no-such-job"] }), 422);
  });

  test("submitBatch makes the graph, by ref in order; a cycle is 422 and makes nothing", T, async () => {
    const t = client();
    const jobs = await t.submitBatch([
      { ref: "a", type: "fetch.batch", payload: 1 },
      { ref: "b", type: "fetch.batch", payload: 2, group: "g" },
      { ref: "sum", type: "add.batch", after: ["a", "b"], maxAttempts: 1 },
    ]);
    assert.deepEqual([...jobs.keys()], ["a", "b", "sum"]);
    const sum = jobs.get("sum");
    assert.equal(sum.job.status, "waiting");
    assert.deepEqual(sum.job.after, [jobs.get("a").id, jobs.get("b").id]);
    assert.equal(sum.job.max_attempts, 1);
    assert.equal(jobs.get("b").job.group, "g");
    const cycle = await refused(
      t.submitBatch([
        { ref: "x", type: "cycle.batch", after: ["y"] },
        { ref: "y", type: "cycle.batch", after: ["x"] },
      ]),
      422,
    );
    assert.match(cycle.message, /cycle/);
    const { queues } = await http(server.url, "GET", "/v1/queues");
    assert.equal(queues["cycle.batch"], undefined);
  });
});
