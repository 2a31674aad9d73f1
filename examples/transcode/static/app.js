// Submit a "transcode" job to tidings, then follow it over Server-Sent Events.
// Plain JavaScript: no build step, no library. The server's address is http://127.0.0.1:8000
// unless the page's URL says otherwise: index.html?api=http://127.0.0.1:9000

const API = new URLSearchParams(location.search).get("api") || "http://127.0.0.1:8000";

const form = document.getElementById("upload");
const bar = document.getElementById("progress");
const percent = document.getElementById("percent");
const statusLine = document.getElementById("status");
const result = document.getElementById("result");
const log = document.getElementById("log");

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const file = form.video.files[0];
  show({ status: "submitting", progress: 0, message: null });
  result.textContent = "";
  log.replaceChildren();
  // The job carries what the worker needs to find the video. The file's bytes would go to
  // your storage (S3, a shared disk…), not through tidings: a job is a small JSON value.
  let answer;
  try {
    answer = await fetch(`${API}/v1/jobs`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ type: "transcode", payload: { name: file.name, size: file.size } }),
    });
  } catch (error) {
    fail(`tidings at ${API} did not answer: ${error}`);
    return;
  }
  const job = await answer.json();
  if (!answer.ok) {
    fail(job.error.message); // every error is {"error": {"code", "message"}}
    return;
  }
  follow(job.id);
});

// Each event of /v1/jobs/{id}/events is named after what happened (queued, running,
// progress, succeeded, failed, cancelled) and carries the whole job as JSON. After the
// last one the server sends "close"; closing the EventSource then stops its reconnecting.
function follow(id) {
  const events = new EventSource(`${API}/v1/jobs/${id}/events`);
  for (const name of ["queued", "running", "progress"]) {
    events.addEventListener(name, (e) => show(JSON.parse(e.data), name));
  }
  events.addEventListener("succeeded", (e) => {
    const job = show(JSON.parse(e.data), "succeeded");
    result.textContent = `Done: ${job.result.url}`;
  });
  events.addEventListener("failed", (e) => {
    const job = show(JSON.parse(e.data), "failed");
    fail(`failed: ${job.error && job.error.message}`);
  });
  events.addEventListener("cancelled", (e) => show(JSON.parse(e.data), "cancelled"));
  events.addEventListener("close", () => events.close());
  // On a dropped connection the browser reconnects by itself, with Last-Event-ID: nothing
  // is missed.
  events.onerror = () => {
    if (events.readyState === EventSource.CONNECTING) statusLine.textContent = "reconnecting…";
  };
}

function show(job, name) {
  if (job.progress !== null) {
    bar.value = job.progress;
    percent.textContent = `${Math.round(job.progress)} %`;
  }
  statusLine.className = "";
  statusLine.textContent = job.status === "running" && job.message ? job.message : job.status;
  if (name) {
    const item = document.createElement("li");
    item.textContent = job.progress === null ? name : `${name} ${Math.round(job.progress)} %`;
    log.append(item);
  }
  return job;
}

function fail(message) {
  statusLine.className = "error";
  statusLine.textContent = message;
}
