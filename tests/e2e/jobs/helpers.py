"""What the jobs API tests share: the calls a client and a worker make over HTTP, a thread
runner, SSE and WebSocket readers, and a test-side worker (`HttpWorker`) for RPC and
submit-and-wait."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed

Json = dict[str, Any]


def submit(http: httpx.Client, type_: str, payload: Any = None, **fields: Any) -> Json:
    r = http.post("/v1/jobs", json={"type": type_, "payload": payload, **fields})
    assert r.status_code == 202, r.text
    return r.json()


def lease(
    http: httpx.Client, type_: str, *, max_: int = 1, wait: float = 5.0, seconds: float = 30.0
) -> list[Json]:
    r = http.post(
        "/v1/workers/lease",
        json={"types": [type_], "max": max_, "wait": wait, "lease": seconds},
        timeout=wait + 10,
    )
    assert r.status_code == 200, r.text
    jobs: list[Json] = r.json()["jobs"]
    return jobs


def lease_one(http: httpx.Client, type_: str, **kw: Any) -> Json:
    jobs = lease(http, type_, **kw)
    assert len(jobs) == 1, jobs
    return jobs[0]


def get(http: httpx.Client, job_id: str) -> Json:
    r = http.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 200, r.text
    return r.json()


def complete(http: httpx.Client, job_id: str, token: str, result: Any) -> httpx.Response:
    return http.post(f"/v1/jobs/{job_id}/complete", json={"lease_token": token, "result": result})


class InThread:
    """Run `fn` in a thread; `join()` returns its value or re-raises its exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None

        def target() -> None:
            try:
                self.value = fn()
            except BaseException as exc:
                self.error = exc
            finally:
                self.ended_at = time.monotonic()

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float = 15.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call did not finish in time"
        if self.error is not None:
            raise self.error
        return self.value


def read_sse(url: str, timeout: float = 20.0) -> list[tuple[str | None, str | None, str]]:
    """Read an SSE stream to its end: (id, event, data) per frame, comments dropped.

    Returns only when the server ends the response; a read timeout fails the caller.
    """
    frames: list[tuple[str | None, str | None, str]] = []
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("GET", url, headers={"Accept": "text/event-stream"}) as r,
    ):
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        id_: str | None = None
        event: str | None = None
        data: list[str] = []
        for line in r.iter_lines():
            if line == "":
                if data:
                    frames.append((id_, event, "\n".join(data)))
                id_, event, data = None, None, []
            elif line.startswith(":"):
                continue
            else:
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "id":
                    id_ = value
                elif field == "event":
                    event = value
                elif field == "data":
                    data.append(value)
    return frames


def job_events(frames: list[tuple[str | None, str | None, str]]) -> list[tuple[str, Json]]:
    """The job's own events (frames with an id), as (event, data)."""
    return [(ev or "", json.loads(data)) for id_, ev, data in frames if id_ is not None]


def recv_until_closed(ws: Any, timeout: float = 10.0) -> list[Json]:
    """Every frame until the server closes the socket; a timeout fails the caller."""
    frames: list[Json] = []
    try:
        while True:
            frames.append(json.loads(ws.recv(timeout=timeout)))
    except ConnectionClosed:
        return frames


class HttpWorker:
    """A worker thread speaking the worker protocol: leases `type_` jobs and answers each
    with `handle(job) -> ("complete", result) | ("fail", error)`."""

    def __init__(self, url: str, type_: str, handle: Callable[[Json], tuple[str, Any]]) -> None:
        self.url = url
        self.type = type_
        self.handle = handle
        self.stop = threading.Event()
        self.done: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        # Set once its first lease request was answered: the type is served from then on.
        self.ready = threading.Event()

    def _run(self) -> None:
        try:
            with httpx.Client(base_url=self.url, timeout=10) as http:
                wait = 0.0
                while not self.stop.is_set():
                    leased = lease(http, self.type, max_=10, wait=wait)
                    self.ready.set()
                    wait = 0.5
                    for job in leased:
                        verb, value = self.handle(job)
                        key = "result" if verb == "complete" else "error"
                        body = {"lease_token": job["lease_token"], key: value}
                        if verb == "fail":
                            body["retry"] = False
                        r = http.post(f"/v1/jobs/{job['id']}/{verb}", json=body)
                        assert r.status_code == 200, r.text
                        self.done.append(job["id"])
        except BaseException as exc:
            self.error = exc
            self.ready.set()

    def __enter__(self) -> HttpWorker:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def rpc_handler(job: Json) -> tuple[str, Any]:
    """Sum a list of numbers; `{"fail": msg}` fails; `{"sleep": s}` sleeps then echoes."""
    p = job["payload"]
    if isinstance(p, dict) and "fail" in p:
        return "fail", {"message": p["fail"]}
    if isinstance(p, dict) and "sleep" in p:
        time.sleep(p["sleep"])
        return "complete", p
    if isinstance(p, list):
        return "complete", sum(p)
    return "complete", p
