// Type-checked by package.test.mjs against dist/tidings.d.ts, as a user's code would be.
import { Tidings, TidingsError, type Job, type Message, type Reset, type JobEvent, type ScheduleInfo, type Status } from "../dist/tidings.js";

export async function use(): Promise<void> {
  const t = new Tidings({ url: "http://127.0.0.1:8000", token: "tdt_x", timeout: 5 });
  const ack: { id: string; channel: string; time: string } = await t.publish("news", { a: 1 }, { event: "e" });
  const sub = t.subscribe(["a", "b"], { via: "auto", after: { a: "0" }, onStatus: (s: Status) => s.delay });
  for await (const item of sub) {
    const m: Message | Reset = item;
    if (item.type === "message") {
      const id: string = item.id;
      const data: unknown = item.data;
      void [id, data];
    } else {
      const first: string | null = item.first;
      void first;
    }
    void m;
  }
  sub.close();
  const last: string | null = sub.lastId;
  const job = await t.submit("transcode", { v: 1 }, { maxAttempts: 2, idempotencyKey: "k" });
  for await (const e of job.events()) {
    const ev: JobEvent = e;
    const progress: number | null = e.job.progress;
    void [ev, progress];
  }
  const done = await job.wait(10);
  const status: "waiting" | "queued" | "running" | "succeeded" | "failed" | "cancelled" = done.status;
  const child = await t.submit("merge", null, { after: [job.id], group: "g", uniqueKey: "u" });
  const deduplicated: boolean = child.deduplicated;
  const parents: string[] | undefined = child.job.after;
  const batch: Map<string, Job> = await t.submitBatch([{ ref: "a", type: "x" }, { ref: "b", type: "y", after: ["a"], maxAttempts: 1 }]);
  const schedule: ScheduleInfo = await t.putSchedule("nightly", "report", null, { cron: "0 2 * * *", timezone: "Europe/Paris", catchUp: "skip" });
  const next: string = schedule.next_run_at;
  const schedules: ScheduleInfo[] = await t.listSchedules({ limit: 10 });
  const lastJob: string | null = (await t.getSchedule("nightly")).last_job_id;
  await t.deleteSchedule("nightly");
  void [deduplicated, parents, batch, next, schedules, lastJob];
  try {
    await t.login("ann", "pw");
  } catch (exc) {
    if (exc instanceof TidingsError) {
      const s: number = exc.status;
      const c: string = exc.code;
      void [s, c];
    }
  }
  void [ack, last, status];
}
