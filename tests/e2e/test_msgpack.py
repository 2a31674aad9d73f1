"""MessagePack by content negotiation on the channel endpoints, against a real server.

Publish bodies in `application/msgpack` (or `application/x-msgpack`) have the JSON shape;
answers are MessagePack when `Accept` prefers it (q-values honoured), JSON otherwise, and
carry `Vary: Accept`. Errors follow `Accept` too. One server per store for the module;
each test uses its own channels.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest

from tests.conftest import ServerProcess

MP = "application/msgpack"
MP_HEADERS = {"Content-Type": MP, "Accept": MP}


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp(f"msgpack-{request.param}")
    store = "memory://" if request.param == "memory" else f"sqlite:///{tmp / 'tidings.db'}"
    srv = ServerProcess(store, tmp / "server.log", ["--max-message-bytes", "4096"], {})
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def mp(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


def unmp(r: httpx.Response) -> Any:
    assert r.headers["content-type"] == MP, r.headers
    return msgspec.msgpack.decode(r.content)


def publish_mp(http: httpx.Client, channel: str, body: Any, ctype: str = MP) -> httpx.Response:
    return http.post(
        f"/v1/channels/{channel}/messages",
        content=mp(body),
        headers={"Content-Type": ctype, "Accept": MP},
    )


VALUES: list[Any] = [
    "text",
    "ünïcødé ✓",
    42,
    -(2**63),
    2**64 - 1,
    1.5,
    True,
    None,
    [1, "two", [3.0, None]],
    {"a": {"b": [True, False]}, "n": 0},
]


@pytest.mark.timeout(30)
def test_publish_msgpack_read_both_codecs(http: httpx.Client) -> None:
    ch = "mp-roundtrip"
    ids = []
    for i, value in enumerate(VALUES):
        body = {"data": value, "event": "ev"} if i % 2 else {"data": value}
        r = publish_mp(http, ch, body)
        assert r.status_code == 201, r.content
        ack = unmp(r)
        assert set(ack) == {"id", "channel", "time"} and ack["channel"] == ch
        assert isinstance(ack["time"], str) and ack["time"].endswith("Z")
        assert r.headers["vary"] == "Accept"
        ids.append(ack["id"])
    # x-msgpack is accepted too
    r = publish_mp(http, ch, {"data": "x"}, "application/x-msgpack; charset=binary")
    assert r.status_code == 201, r.content

    as_mp = http.get(f"/v1/channels/{ch}/messages?after=0", headers={"Accept": MP})
    as_json = http.get(f"/v1/channels/{ch}/messages?after=0")
    assert as_mp.status_code == as_json.status_code == 200
    assert as_json.headers["content-type"] == "application/json"
    assert as_mp.headers["vary"] == as_json.headers["vary"] == "Accept"
    page_mp, page_json = unmp(as_mp), as_json.json()
    assert page_mp == page_json  # same fields, ids, times and values in both codecs
    assert [m["id"] for m in page_mp["messages"]][: len(ids)] == ids
    got = [m["data"] for m in page_mp["messages"]][: len(VALUES)]
    assert got == VALUES
    for value, m_mp, m_json in zip(
        VALUES, page_mp["messages"], page_json["messages"], strict=False
    ):
        assert type(m_mp["data"]) is type(value) is type(m_json["data"])
    assert [m["event"] for m in page_mp["messages"]][:4] == [None, "ev", None, "ev"]


@pytest.mark.timeout(30)
def test_json_publish_msgpack_read_and_text(http: httpx.Client) -> None:
    ch = "mp-mixed"
    r = http.post(
        f"/v1/channels/{ch}/messages", json={"data": {"k": [1, 2]}}, headers={"Accept": MP}
    )
    assert r.status_code == 201 and unmp(r)["channel"] == ch
    r = http.post(f"/v1/channels/{ch}/messages", content=b"plain text")
    assert r.status_code == 201 and r.headers["content-type"] == "application/json"
    page = unmp(http.get(f"/v1/channels/{ch}/messages?after=0", headers={"Accept": MP}))
    assert [m["data"] for m in page["messages"]] == [{"k": [1, 2]}, "plain text"]
    assert page["next"] == page["messages"][-1]["id"] and page["reset"] is False


@pytest.mark.timeout(30)
def test_long_poll_and_stats_in_msgpack(http: httpx.Client) -> None:
    ch = "mp-longpoll"
    ack = unmp(publish_mp(http, ch, {"data": "first"}))
    r = http.get(
        f"/v1/channels/{ch}/messages",
        params={"after": ack["id"], "wait": "0.2"},
        headers={"Accept": MP},
    )
    assert r.status_code == 200 and unmp(r) == {"messages": [], "next": ack["id"], "reset": False}
    info = unmp(http.get(f"/v1/channels/{ch}", headers={"Accept": MP}))
    assert info == http.get(f"/v1/channels/{ch}").json()
    assert info["name"] == ch and info["messages"] == 1 and info["last_id"] == ack["id"]
    listed = unmp(
        http.get("/v1/channels", params={"prefix": "mp-longpoll"}, headers={"Accept": MP})
    )
    assert [c["name"] for c in listed["channels"]] == [ch]
    r = http.put(
        f"/v1/channels/{ch}",
        content=mp({"retention": {"max_messages": 5, "max_age": 60.0}}),
        headers=MP_HEADERS,
    )
    assert r.status_code == 200, r.content
    assert unmp(r)["retention"]["max_messages"] == 5


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("accept", "msgpack"),
    [
        (None, False),
        ("*/*", False),
        ("application/json", False),
        (MP, True),
        ("application/x-msgpack", True),
        ("application/msgpack, application/json", True),
        ("application/json, application/msgpack", True),
        ("application/json;q=0.9, application/msgpack;q=0.5", False),
        ("application/json;q=0.5, application/msgpack;q=0.9", True),
        ("application/msgpack;q=0", False),
        ("application/msgpack;q=0.8, */*;q=0.1", True),
        ("application/msgpack;q=0.8, */*", False),
        ("application/msgpack;q=0.8, application/json;q=0.1, */*", True),
        ("text/html, application/msgpack;q=0.2", True),
    ],
)
def test_accept_q_values(http: httpx.Client, accept: str | None, msgpack: bool) -> None:
    headers = {} if accept is None else {"Accept": accept}
    r = http.get("/v1/channels/mp-q/messages", headers=headers)
    assert r.status_code == 200
    assert r.headers["vary"] == "Accept"
    if msgpack:
        assert unmp(r)["messages"] == []
    else:
        assert r.headers["content-type"] == "application/json" and r.json()["messages"] == []


@pytest.mark.timeout(30)
def test_errors_follow_accept(http: httpx.Client) -> None:
    r = http.get("/v1/channels/bad$name/messages", headers={"Accept": MP})
    assert r.status_code == 400 and unmp(r)["error"]["code"] == "invalid_channel"
    r = http.get("/v1/channels/mp-err/messages?after=zzz", headers={"Accept": MP})
    assert r.status_code == 400 and unmp(r)["error"]["code"] == "invalid_cursor"
    r = http.get("/v1/channels/mp-never-created", headers={"Accept": MP})
    assert r.status_code == 404 and unmp(r)["error"]["code"] == "not_found"
    assert r.headers["vary"] == "Accept"
    # the same errors stay JSON for a client that does not ask for MessagePack
    r = http.get("/v1/channels/mp-never-created")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = http.post(
        "/v1/channels/mp-err/messages", content=mp({"data": "x" * 5000}), headers=MP_HEADERS
    )
    assert r.status_code == 413 and unmp(r)["error"]["code"] == "payload_too_large"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # never used in MessagePack
        b"\x82\xa4data",  # truncated
        mp({"data": 1}) + b"\x00",  # trailing bytes
        b"\x81\xa4data\xa2\xff\xfe",  # str that is not UTF-8
    ],
)
def test_malformed_msgpack_is_400(http: httpx.Client, body: bytes) -> None:
    r = http.post("/v1/channels/mp-bad/messages", content=body, headers=MP_HEADERS)
    assert r.status_code == 400, r.content
    err = unmp(r)["error"]
    assert err["code"] == "bad_request" and "MessagePack" in err["message"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("body", "says"),
    [
        ([1, 2], "body does not fit"),
        ("data", "body does not fit"),
        ({"event": "e"}, "publish body is a map"),
        ({"data": 1, "other": 2}, "body does not fit"),
        ({"data": 1, "event": 5}, "body does not fit"),
        ({"data": b"\x00\x01"}, "bin"),
        ({"data": {"nested": [b"x"]}}, "data.nested[0]"),
        ({"data": {1: "int key"}}, "not a string"),
        ({"data": float("nan")}, "NaN"),
        ({"data": float("inf")}, "infinity"),
        ({"data": msgspec.msgpack.Ext(5, b"ext")}, "Ext"),
    ],
)
def test_wrong_shape_is_422(http: httpx.Client, body: Any, says: str) -> None:
    ch = "mp-shape"
    before = http.get(f"/v1/channels/{ch}/messages?after=0").json()["messages"]
    r = http.post(f"/v1/channels/{ch}/messages", content=mp(body), headers=MP_HEADERS)
    assert r.status_code == 422, r.content
    err = unmp(r)["error"]
    assert err["code"] == "invalid_body" and says in err["message"], err
    assert http.get(f"/v1/channels/{ch}/messages?after=0").json()["messages"] == before
