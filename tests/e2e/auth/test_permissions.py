"""Permissions end to end: a user reads only the channels its subscribe grants cover, on
every way of reading them; HEAD is checked like GET; job channels follow the job rule, not
the subscribe grants."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as ws_connect

from tests.conftest import ServerFactory
from tests.e2e.auth.helpers import (
    BOB_PASSWORD,
    assert_error,
    auth_server,
    bearer,
    login,
    next_event,
    send,
)
from tests.e2e.helpers import cli_ok
from tests.e2e.test_channels_api import RawSSE


@pytest.mark.timeout(30)
def test_a_subscriber_without_permission_receives_none_of_a_channels_messages(
    tidings_server: ServerFactory, store: str
) -> None:
    """bob (subscribe other.*) is refused news.a on every way of reading it: poll, long
    poll, SSE, multiplexed SSE, WebSocket, channel info and listing; alice's SSE on news.a
    gets the replayed and the live messages."""
    srv = auth_server(tidings_server, store, "database")
    alice, bob = login(srv), login(srv, "bob", BOB_PASSWORD)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        ids = []
        for n in range(3):
            r = send(http, "news.a", {"n": n}, bearer(alice))
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        assert send(http, "other.a", "bob's", bearer(bob)).status_code == 201

        assert_error(http.get("/v1/channels/news.a/messages", headers=bearer(bob)), 403)
        long_poll = http.get(
            "/v1/channels/news.a/messages",
            params={"after": ids[-1], "wait": "2"},
            headers=bearer(bob),
        )
        assert_error(long_poll, 403)
        assert_error(http.get("/v1/channels/news.a", headers=bearer(bob)), 403)
        listed = http.get("/v1/channels", headers=bearer(bob))
        assert listed.status_code == 200, listed.text
        assert [c["name"] for c in listed.json()["channels"]] == ["other.a"]
        own = http.get("/v1/channels/other.a/messages?after=0", headers=bearer(bob))
        assert [m["data"] for m in own.json()["messages"]] == ["bob's"]

        sse_headers = {**bearer(bob), "Accept": "text/event-stream"}
        with http.stream(
            "GET", "/v1/channels/news.a/events", params={"after": "0"}, headers=sse_headers
        ) as r:
            r.read()
            assert_error(r, 403)
        with http.stream(
            "GET",
            "/v1/events",
            params=[("channel", "other.a"), ("channel", "news.a")],
            headers=sse_headers,
        ) as r:
            r.read()
            assert_error(r, 403)

    with ws_connect(
        f"{srv.ws_url}/v1/channels/news.a/ws?after=0", additional_headers=bearer(bob)
    ) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008

    sse = RawSSE(srv.port, "/v1/channels/news.a/events?after=0", headers=bearer(alice))
    try:
        assert sse.status == 200
        got = [next_event(sse, 5) for _ in range(3)]
        assert [f["id"] for f in got] == ids
        assert [json.loads(f["data"]) for f in got] == [{"n": 0}, {"n": 1}, {"n": 2}]
        with httpx.Client(base_url=srv.url, timeout=10) as http:
            live = send(http, "news.a", {"n": 3}, bearer(alice))
            assert live.status_code == 201
        frame = next_event(sse, 5)
        assert frame["id"] == live.json()["id"]
        assert json.loads(frame["data"]) == {"n": 3}
    finally:
        sse.close()


@pytest.mark.timeout(30)
def test_head_requests_are_authenticated_like_get(
    tidings_server: ServerFactory, store: str
) -> None:
    """HEAD is answered by the GET endpoint with the same checks (no handler is reachable
    around authentication), and without a body."""
    srv = auth_server(tidings_server, store, "database")
    token = login(srv)
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        assert http.head("/v1/channels/news.h/messages").status_code == 401
        assert http.head("/metrics").status_code == 401
        assert http.head("/v1/channels/other.h/messages", headers=bearer(token)).status_code == 403
        ok = http.head("/v1/channels/news.h/messages?after=0", headers=bearer(token))
        assert ok.status_code == 200
        assert ok.content == b""
        assert http.head("/healthz").status_code == 200


@pytest.mark.timeout(30)
def test_a_subscribe_grant_of_everything_does_not_read_other_peoples_jobs(
    tidings_server: ServerFactory, store: str
) -> None:
    """Job channels follow the job rule only: `--subscribe '*'` reads no job channel it did
    not submit or work, and lists none."""
    cli_ok("users", "grant", "bob", "--store", store, "--subscribe", "*")
    cli_ok("users", "grant", "alice", "--store", store, "--submit", "report")
    srv = auth_server(tidings_server, store, "database")
    alice, bob = bearer(login(srv)), bearer(login(srv, "bob", BOB_PASSWORD))
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        job = http.post("/v1/jobs", json={"type": "report", "payload": 1}, headers=alice).json()
        channel = f"job.{job['id']}"
        assert (
            http.get(f"/v1/channels/{channel}/messages?after=0", headers=alice).status_code == 200
        )
        assert_error(http.get(f"/v1/channels/{channel}/messages?after=0", headers=bob), 403)
        assert_error(http.get(f"/v1/channels/{channel}", headers=bob), 403)
        assert_error(http.get(f"/v1/events?channel={channel}", headers=bob), 403)
        listed = http.get("/v1/channels?prefix=job.", headers=bob).json()["channels"]
        assert listed == []
