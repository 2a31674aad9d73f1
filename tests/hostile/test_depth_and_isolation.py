"""Values nested too deep are refused at every door, and nothing poisons a channel or a job.

Reproduces issue 13's first breakage against a real server: a publish ~970 arrays deep was
acknowledged and then killed every read and the channel's live delivery; the same depth as
a job payload made `POST /v1/workers/lease` answer 500 after leasing the batch; deeper
values answered 500 with a traceback, and a WebSocket died without a close code. Now the
server's `--max-depth` (64 by default) is enforced on bodies (JSON and MessagePack),
WebSocket frames and job payloads, results and errors: 400 `nested_too_deep`, saying the
limit and how to raise it; and a lease answer that cannot be built hands no job to nobody.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerFactory
from tidings.protocol.jobs import Job
from tidings.server.settings import Settings
from tidings.server.stores import open_store
from tidings.server.stores.base import Retention

pytestmark = pytest.mark.timeout(60)

LIMIT = 64
NO_TOKEN = "no-such-lease"  # noqa: S105 - a lease token that holds nothing
Json = dict[str, Any]


def nested(depth: int, leaf: Any = 1) -> Any:
    """A value `depth` arrays deep (0: the leaf itself)."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def deep_json(depth: int, key: str = "data", **extra: Any) -> bytes:
    """`{key: <arrays, depth - 1 deep>, ...extra}`: a body nesting `depth` deep in all,
    built as text (json.dumps would itself run out of recursion)."""
    inner = b"[" * (depth - 1) + b"1" + b"]" * (depth - 1)
    head = json.dumps({**extra, key: None})[:-5].encode()  # up to `"key": `
    return head + inner + b"}"


def deep_msgpack(depth: int) -> bytes:
    """`{"data": <arrays, depth - 1 deep>}` in MessagePack, built as bytes."""
    return b"\x81\xa4data" + b"\x91" * (depth - 1) + b"\x01"


def assert_too_deep(r: httpx.Response) -> None:
    """A 400 `nested_too_deep` JSON error naming the limit and how to raise it."""
    assert r.status_code == 400, (r.status_code, r.text)
    err = r.json()["error"]
    assert err["code"] == "nested_too_deep", err
    assert str(LIMIT) in err["message"], err
    assert "--max-depth" in err["message"], err


def messages(http: httpx.Client, channel: str) -> list[Any]:
    r = http.get(f"/v1/channels/{channel}/messages", params={"after": "0"})
    assert r.status_code == 200, r.text
    return [m["data"] for m in r.json()["messages"]]


def sse_until(r: httpx.Response, want: str) -> list[str]:
    """`data:` lines of an open SSE answer, read until one equals `want`."""
    seen = []
    for line in r.iter_lines():
        if line.startswith("data: "):
            seen.append(line[6:])
            if line[6:] == want:
                return seen
    raise AssertionError(f"stream ended before {want!r}: {seen}")


@pytest.mark.timeout(90)
def test_a_publish_nested_too_deep_is_refused_and_the_channel_keeps_working(
    tidings_server: ServerFactory, store_url: str
) -> None:
    """The 970-deep publish that poisoned a channel is now a 400; a value at the limit is
    accepted; and the channel's SSE and WebSocket subscribers, opened before, and its polls
    still get every message after it."""
    srv = tidings_server(store_url)
    ch = "deep.poison"
    with (
        httpx.Client(base_url=srv.url, timeout=10) as http,
        http.stream("GET", f"/v1/channels/{ch}/events?after=0") as sse,
        ws_connect(f"{srv.ws_url}/v1/channels/{ch}/ws?after=0") as ws,
    ):
        assert sse.status_code == 200
        r = http.post(f"/v1/channels/{ch}/messages", json={"data": "before"})
        assert r.status_code == 201, r.text
        for depth in (970, LIMIT + 1):
            assert_too_deep(
                http.post(
                    f"/v1/channels/{ch}/messages",
                    content=deep_json(depth),
                    headers={"content-type": "application/json"},
                )
            )
        # The body is measured whole: {"data": ...} is one level, its data 63 more.
        at_limit = http.post(
            f"/v1/channels/{ch}/messages",
            content=deep_json(LIMIT),
            headers={"content-type": "application/json"},
        )
        assert at_limit.status_code == 201, at_limit.text
        r = http.post(f"/v1/channels/{ch}/messages", json={"data": "after"})
        assert r.status_code == 201, r.text

        assert messages(http, ch) == ["before", nested(LIMIT - 1), "after"]
        assert sse_until(sse, "after") == ["before", json.dumps(nested(LIMIT - 1)), "after"]
        got: list[Any] = []
        while not got or got[-1] != "after":
            frame = json.loads(ws.recv(timeout=10))
            if "id" in frame and frame.get("type") is None:
                got.append(frame["data"])
        assert got == ["before", nested(LIMIT - 1), "after"]
    assert "Traceback" not in srv.log()


@pytest.mark.timeout(60)
def test_a_body_100000_deep_is_a_400_not_a_500_everywhere(tidings_server: ServerFactory) -> None:
    """Deep enough to exhaust the decoder's recursion: a clear 400, never a 500 with a
    traceback, in JSON and MessagePack, on channels, jobs, workers and JSON-RPC."""
    srv = tidings_server()
    depth = 100_000
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        arrays = b"[" * depth + b"]" * depth
        outcome = b'{"results":[{"id":"x","lease_token":"t","result":' + arrays + b"}]}"
        json_bodies = {
            "/v1/channels/deep.big/messages": deep_json(depth),
            "/v1/jobs": deep_json(depth, "payload", type="deep"),
            "/v1/workers/lease": outcome,
            "/v1/workers/report": outcome,
            "/v1/jobs/nope/complete": deep_json(depth, "result", lease_token=NO_TOKEN),
            "/v1/jobs/nope/fail": deep_json(depth, "error", lease_token=NO_TOKEN),
        }
        for path, body in json_bodies.items():
            r = http.post(path, content=body, headers={"content-type": "application/json"})
            assert_too_deep(r)
        r = http.post(
            "/v1/channels/deep.big/messages",
            content=deep_msgpack(depth),
            headers={"content-type": "application/msgpack"},
        )
        assert_too_deep(r)
        r = http.post("/v1/rpc", content=b"[" * depth + b"]" * depth)
        assert r.status_code == 200, r.text
        assert r.json()["error"]["code"] == -32600
        assert r.json()["error"]["data"]["error"]["code"] == "nested_too_deep"
        assert http.get("/healthz").status_code == 200
    assert "Traceback" not in srv.log()


@pytest.mark.timeout(60)
def test_msgpack_nested_past_the_limit_is_refused_and_at_the_limit_accepted(
    tidings_server: ServerFactory,
) -> None:
    srv = tidings_server()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        mp = {"content-type": "application/msgpack"}
        r = http.post("/v1/channels/deep.mp/messages", content=deep_msgpack(LIMIT + 1), headers=mp)
        assert_too_deep(r)
        r = http.post("/v1/channels/deep.mp/messages", content=deep_msgpack(LIMIT), headers=mp)
        assert r.status_code == 201, r.text
        assert messages(http, "deep.mp") == [nested(LIMIT - 1)]


@pytest.mark.timeout(60)
def test_a_deep_websocket_frame_gets_an_error_frame_and_the_socket_stays_usable(
    tidings_server: ServerFactory,
) -> None:
    """A publish frame nested too deep (even 100,000 deep) is answered like any bad
    publish frame — an error frame, `nested_too_deep` — and the socket goes on."""
    srv = tidings_server()
    ch = "deep.ws"
    with ws_connect(f"{srv.ws_url}/v1/channels/{ch}/ws", max_size=None) as ws:
        for depth in (LIMIT + 1, 970, 100_000):
            ws.send(deep_json(depth, ref="r").decode())
            reply = json.loads(ws.recv(timeout=10))
            assert reply["type"] == "error", reply
            assert reply["error"]["code"] == "nested_too_deep", reply
            assert str(LIMIT) in reply["error"]["message"]
        ws.send(json.dumps({"data": "good", "ref": "ok"}))
        frames = [json.loads(ws.recv(timeout=10)) for _ in range(2)]
        assert any(f.get("type") == "ack" and f["ref"] == "ok" for f in frames), frames
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert messages(http, ch) == ["good"]
    assert "Traceback" not in srv.log()


def submit(http: httpx.Client, type_: str, payload: Any = None) -> Json:
    r = http.post("/v1/jobs", json={"type": type_, "payload": payload})
    assert r.status_code == 202, r.text
    job: Json = r.json()
    return job


@pytest.mark.timeout(90)
def test_deep_job_payloads_results_and_errors_are_refused_and_innocent_jobs_run(
    tidings_server: ServerFactory, store_url: str
) -> None:
    """A deep payload is refused at submit; the innocent jobs lease, and a deep result or
    error is refused (the job stays running, its lease intact), after which the worker
    completes it and its followers see `succeeded`."""
    srv = tidings_server(store_url)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert_too_deep(
            http.post(
                "/v1/jobs",
                content=deep_json(970, "payload", type="deep"),
                headers={"content-type": "application/json"},
            )
        )
        innocent = [submit(http, "deep", {"n": n}) for n in range(3)]
        r = http.post("/v1/workers/lease", json={"types": ["deep"], "max": 3, "lease": 30})
        assert r.status_code == 200, r.text
        leased = r.json()["jobs"]
        assert sorted(j["id"] for j in leased) == sorted(j["id"] for j in innocent)
        a, b, c = leased
        assert_too_deep(
            http.post(
                f"/v1/jobs/{a['id']}/complete",
                content=deep_json(LIMIT + 1, "result", lease_token=a["lease_token"]),
                headers={"content-type": "application/json"},
            )
        )
        assert_too_deep(
            http.post(
                f"/v1/jobs/{b['id']}/fail",
                content=deep_json(LIMIT + 1, "error", lease_token=b["lease_token"]),
                headers={"content-type": "application/json"},
            )
        )
        # Progress is a number: nested arrays there do not fit (422), deep or not.
        r = http.post(
            f"/v1/jobs/{c['id']}/heartbeat",
            content=deep_json(100_000, "progress", lease_token=c["lease_token"]),
            headers={"content-type": "application/json"},
        )
        assert r.status_code in (400, 422), r.text
        for job in (a, b, c):
            assert http.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
        r = http.post(
            "/v1/workers/report",
            json={
                "results": [
                    {"id": a["id"], "lease_token": a["lease_token"], "result": nested(LIMIT)},
                    {"id": b["id"], "lease_token": b["lease_token"], "result": "fine"},
                ]
            },
        )
        assert_too_deep(r)  # the body nests past the limit: nothing applied
        assert http.get(f"/v1/jobs/{b['id']}").json()["status"] == "running"
        for job in (a, b, c):
            r = http.post(
                f"/v1/jobs/{job['id']}/complete",
                json={"lease_token": job["lease_token"], "result": nested(LIMIT - 2)},
            )
            assert r.status_code == 200, r.text
            r = http.get(f"/v1/jobs/{job['id']}", params={"wait": 5})
            assert r.json()["status"] == "succeeded"
            assert r.json()["result"] == nested(LIMIT - 2)
    assert "Traceback" not in srv.log()


@pytest.mark.timeout(60)
def test_max_depth_raises_the_limit_for_bodies_and_jobs(tidings_server: ServerFactory) -> None:
    srv = tidings_server(args=["--max-depth", "100"])
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        json_ct = {"content-type": "application/json"}
        r = http.post("/v1/channels/deep.flag/messages", content=deep_json(90), headers=json_ct)
        assert r.status_code == 201, r.text
        r = http.post("/v1/jobs", content=deep_json(90, "payload", type="t"), headers=json_ct)
        assert r.status_code == 202, r.text
        r = http.post("/v1/channels/deep.flag/messages", content=deep_json(101), headers=json_ct)
        assert r.status_code == 400
        assert "100" in r.json()["error"]["message"]


async def _poison_sqlite(path: Path) -> list[str]:
    """Queue three jobs in a SQLite file, the second with a payload JSON cannot encode (a
    MessagePack ext value, as a store written before payloads were checked could hold)."""
    store = open_store(f"sqlite:///{path}", Retention(1000, 3600.0), "FULL")
    await store.start()
    ids = []
    try:
        for n in range(3):
            now = time.time()
            payload: Any = {"n": n} if n != 1 else msgspec.msgpack.Ext(1, b"x")
            job = Job(
                id=f"{n:024x}",
                type="t",
                payload=payload,
                created_at=now,
                updated_at=now,
                run_at=now,
            )
            await store.jobs.submit_job(job, "queued")
            ids.append(job.id)
    finally:
        await store.close()
    return ids


@pytest.mark.timeout(60)
def test_a_job_whose_payload_cannot_be_encoded_fails_and_the_rest_are_handed_over(
    tidings_server: ServerFactory, tmp_path: Path
) -> None:
    """The lease answer is built job by job before any is handed over: the one that
    cannot be encoded is failed for good (not leased to nobody, not leased again), the
    innocent ones reach the worker."""
    db = tmp_path / "poisoned.db"
    good1, bad, good2 = asyncio.run(_poison_sqlite(db))
    srv = tidings_server(f"sqlite:///{db}")
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        r = http.post("/v1/workers/lease", json={"types": ["t"], "max": 3, "lease": 30})
        assert r.status_code == 200, r.text
        assert sorted(j["id"] for j in r.json()["jobs"]) == sorted([good1, good2])
        r = http.post("/v1/workers/lease", json={"types": ["t"], "max": 3, "wait": 0})
        assert r.status_code == 200, r.text
        assert r.json()["jobs"] == [], "the poisoned job was queued again"
        counts = http.get("/v1/queues").json()["queues"]["t"]
        assert counts.get("running") == 2, counts
        assert counts.get("failed") == 1, counts
    assert bad not in (good1, good2)


def test_settings_default_depth_is_the_documented_64() -> None:
    assert Settings().max_depth == LIMIT
