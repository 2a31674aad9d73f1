"""A finished job's streams end, and say so in the way each client understands.

The breakage: after a job's terminal event and `event: close`, an EventSource reconnects
by itself with `Last-Event-ID` of that event; the server answered 200 and then pinged
forever (the same for `/ws?after=`), so every client that followed a job held a
connection for good; a long poll after the terminal event waited its whole `wait`.

Now a job stream resumed at or after its terminal event answers 204 No Content (SSE: the
EventSource standard's "stop reconnecting") or closes its WebSocket at once with 1000 and
the job's status; long polls answer at once; a job that is gone answers 404 (WebSocket:
1008). Each test runs on every store.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

pytestmark = pytest.mark.timeout(60)

# Long enough that a poll which waited it out is told from one answered at once, on a
# loaded machine.
WAIT = 20
AT_ONCE = WAIT / 2
NO_JOB = "0123456789abcdef01234567"


def _events(body: str) -> list[tuple[str | None, str]]:
    """(id, event) of each SSE event in `body` (comments and `retry:` lines skipped)."""
    out = []
    for block in body.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and line[0] != ":"
        )
        if "event" in fields:
            out.append((fields.get("id"), fields["event"]))
    return out


def _finished_job(http: httpx.Client, fail: bool = False) -> tuple[str, list[str]]:
    """A job that ran and ended (succeeded, or failed for good): its id and event ids."""
    job_id = http.post("/v1/jobs", json={"type": "end"}).json()["id"]
    token = http.post("/v1/workers/lease", json={"types": ["end"]}).json()["jobs"][0]["lease_token"]
    if fail:
        body = {"lease_token": token, "error": "boom", "retry": False}
        assert http.post(f"/v1/jobs/{job_id}/fail", json=body).json()["status"] == "failed"
    else:
        body = {"lease_token": token, "result": 1}
        assert http.post(f"/v1/jobs/{job_id}/complete", json=body).json()["status"] == "succeeded"
    page = http.get(f"/v1/channels/job.{job_id}/messages", params={"after": "0"}).json()
    return job_id, [m["id"] for m in page["messages"]]


def _sse(http: httpx.Client, path: str, last_event_id: str | None = None) -> httpx.Response:
    """GET an SSE stream; its whole body is read, so the stream must end by itself."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    with http.stream("GET", path, headers=headers) as response:
        response.read()  # a stream that never ends times this read out: the test fails
    return response


def test_an_event_stream_resumed_at_a_finished_jobs_last_event_answers_204(
    tidings_server, store_url
):
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job_id, ids = _finished_job(http)
        path = f"/v1/jobs/{job_id}/events"
        last = ids[-1]
        ahead = str(int(last) + 5)
        for response in (
            _sse(http, path, last_event_id=last),  # what an EventSource sends on reconnect
            _sse(http, f"{path}?after={last}"),
            _sse(http, path, last_event_id=ahead),
        ):
            assert response.status_code == 204
            assert response.content == b""


def test_an_event_stream_resumed_before_the_terminal_event_replays_the_rest_and_ends(
    tidings_server, store_url
):
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job_id, ids = _finished_job(http)
        path = f"/v1/jobs/{job_id}/events"
        response = _sse(http, path, last_event_id=ids[0])
        assert response.status_code == 200
        events = _events(response.text)
        assert events == [(ids[1], "running"), (ids[2], "succeeded"), (None, "close")]
        # The EventSource then reconnects with the terminal event's id: told to stop.
        assert _sse(http, path, last_event_id=ids[2]).status_code == 204


def test_an_event_stream_with_no_cursor_on_a_finished_job_replays_every_event_and_ends(
    tidings_server, store_url
):
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job_id, ids = _finished_job(http, fail=True)
        response = _sse(http, f"/v1/jobs/{job_id}/events")
        assert response.status_code == 200
        assert _events(response.text) == [
            (ids[0], "queued"),
            (ids[1], "running"),
            (ids[2], "failed"),
            (None, "close"),
        ]


def test_a_socket_resumed_after_a_finished_jobs_last_event_closes_at_once_with_1000(
    tidings_server, store_url
):
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job_id, ids = _finished_job(http)

    async def close_of(query: str) -> tuple[list[str], int | None, str]:
        frames: list[str] = []
        async with websockets.connect(f"{srv.ws_url}/v1/jobs/{job_id}/ws{query}") as ws:
            try:
                async with asyncio.timeout(10):
                    async for frame in ws:
                        frames.append(str(frame))
            except ConnectionClosed:
                pass
            assert ws.close_code is not None, "the socket was not closed"
            return frames, ws.close_code, ws.close_reason or ""

    frames, code, reason = asyncio.run(close_of(f"?after={ids[-1]}"))
    assert frames == []
    assert code == 1000
    assert reason == f"job {job_id} succeeded: the stream is complete"
    # Resumed before the terminal event: the rest, then the stream's own end.
    frames, code, _ = asyncio.run(close_of(f"?after={ids[0]}"))
    assert [f'"id":"{i}"' in f for f, i in zip(frames, ids[1:], strict=False)] == [True, True]
    assert '"type":"close"' in frames[-1]
    assert code == 1000  # complete, not "going away": the job ended, nothing will follow


def test_a_long_poll_after_a_finished_jobs_last_event_answers_at_once(tidings_server, store_url):
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=WAIT + 10) as http:
        job_id, ids = _finished_job(http)
        start = time.monotonic()
        page = http.get(
            f"/v1/channels/job.{job_id}/messages", params={"after": ids[-1], "wait": WAIT}
        )
        assert time.monotonic() - start < AT_ONCE
        assert page.status_code == 200
        assert page.json() == {"messages": [], "next": ids[-1], "reset": False}
        start = time.monotonic()
        job = http.get(f"/v1/jobs/{job_id}", params={"wait": WAIT})
        assert time.monotonic() - start < AT_ONCE
        assert job.json()["status"] == "succeeded"


def test_a_job_that_does_not_exist_answers_404_on_its_streams_and_polls(tidings_server, store_url):
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=WAIT + 10) as http:
        path = f"/v1/jobs/{NO_JOB}/events"
        for response in (_sse(http, path), _sse(http, path, last_event_id="3")):
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"
        start = time.monotonic()
        poll = http.get(f"/v1/channels/job.{NO_JOB}/messages", params={"after": "3", "wait": WAIT})
        assert poll.status_code == 404
        assert http.get(f"/v1/jobs/{NO_JOB}", params={"wait": WAIT}).status_code == 404
        assert time.monotonic() - start < AT_ONCE

    async def close_of() -> tuple[int | None, str]:
        async with websockets.connect(f"{srv.ws_url}/v1/jobs/{NO_JOB}/ws?after=3") as ws:
            async with asyncio.timeout(10):
                await ws.wait_closed()
            return ws.close_code, ws.close_reason or ""

    code, reason = asyncio.run(close_of())
    assert code == 1008
    assert reason.startswith(f"no job '{NO_JOB}'")


def test_a_retried_job_resumed_at_its_old_terminal_event_follows_its_new_life(
    tidings_server, store_url
):
    srv = tidings_server(store=store_url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job_id, ids = _finished_job(http, fail=True)
        assert http.post(f"/v1/jobs/{job_id}/retry").json()["status"] == "queued"
        headers = {"Accept": "text/event-stream", "Last-Event-ID": ids[-1]}
        with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            seen: list[str] = []
            while "event: queued" not in seen:
                seen.append(next(lines))
            leased = http.post("/v1/workers/lease", json={"types": ["end"]}).json()["jobs"]
            done = {"lease_token": leased[0]["lease_token"], "result": 2}
            assert http.post(f"/v1/jobs/{job_id}/complete", json=done).status_code == 200
            seen.extend(lines)  # to the stream's end, which the server makes
        events = [e for _, e in _events("\n".join(seen))]
        assert events == ["queued", "running", "succeeded", "close"]
