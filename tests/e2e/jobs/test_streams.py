"""A job's events as a stream: its WebSocket sends each event and closes after the
last; its channel is read like any other and written only by the job system."""

from __future__ import annotations

import json

import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerProcess
from tests.e2e.jobs.helpers import (
    Json,
    complete,
    get,
    lease_one,
    recv_until_closed,
    submit,
)


@pytest.mark.timeout(30)
def test_job_websocket_streams_events_refuses_publishes_and_closes_after_the_end(
    server: ServerProcess, http, jtype
):
    """/v1/jobs/{id}/ws sends each job event as a JSON frame, answers a client publish with
    an error frame, and closes after the terminal event."""
    job = submit(http, jtype)
    job_id = job["id"]
    frames: list[Json] = []
    with ws_connect(f"{server.ws_url}/v1/jobs/{job_id}/ws", open_timeout=10) as ws:
        first = json.loads(ws.recv(timeout=10))
        assert first["event"] == "queued"
        assert first["channel"] == f"job.{job_id}"
        assert first["data"]["status"] == "queued"
        frames.append(first)

        ws.send(json.dumps({"data": {"status": "succeeded"}, "ref": "r1"}))
        refused = json.loads(ws.recv(timeout=10))
        assert refused["type"] == "error", refused
        assert refused["ref"] == "r1", refused  # answers carry the frame's ref, as on channels
        assert refused["error"]["code"] == "forbidden"

        leased = lease_one(http, jtype)
        token = leased["lease_token"]
        http.post(
            f"/v1/jobs/{job_id}/heartbeat",
            json={"lease_token": token, "progress": 75.5, "message": "almost"},
        ).raise_for_status()
        complete(http, job_id, token, [1, 2]).raise_for_status()
        frames += recv_until_closed(ws)
    events = [f for f in frames if "event" in f and "type" not in f]
    assert [f["event"] for f in events] == ["queued", "running", "progress", "succeeded"]
    assert events[2]["data"]["progress"] == 75.5
    assert events[2]["data"]["message"] == "almost"
    assert events[3]["data"]["result"] == [1, 2]
    # Nothing but the close notice follows the terminal event.
    after = frames[frames.index(events[-1]) + 1 :]
    assert all(f.get("type") == "close" for f in after), after
    assert get(http, job_id)["status"] == "succeeded"


@pytest.mark.timeout(30)
def test_clients_cannot_publish_to_job_channels(http, jtype):
    """Job channels are written only by the job system: publishing to job.* → 403."""
    r = http.post("/v1/channels/job.x/messages", json={"data": "forged"})
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "forbidden"
    job = submit(http, jtype)
    r = http.post(f"/v1/channels/job.{job['id']}/messages", json={"data": {"status": "x"}})
    assert r.status_code == 403, r.text
    assert get(http, job["id"])["status"] == "queued"
    # The job's channel is still readable like any other.
    r = http.get(f"/v1/channels/job.{job['id']}/messages", params={"after": "0"})
    assert r.status_code == 200, r.text
    assert [m["event"] for m in r.json()["messages"]] == ["queued"]
