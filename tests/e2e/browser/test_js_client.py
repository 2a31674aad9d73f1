"""The JavaScript client in a real browser: Debian's chromium, driven by Playwright, against
real tidings servers on loopback.

Each page is served by tidings (`--static`) and loads the client from the server's own
`/client/tidings.js`: every transport receives the same values, resumes after a restart,
yields a reset when retention dropped history, falls back when a proxy refuses WebSocket
upgrades, follows a job with its progress; over HTTPS the server speaks HTTP/2 and one
page holds 20 EventSources, where over HTTP/1.1 the seventh waits for a connection; the
example page (examples/upload) works end to end.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, FilePayload, expect

from tests.conftest import ServerProcess
from tests.e2e.browser.harness import (
    ROOT,
    Harness,
    Nginx,
    serve,
    start_worker,
    stop_process,
)
from tests.hostile.browser import LoopbackPage

pytestmark = pytest.mark.timeout(60)

VIAS = ["ws", "sse", "longpoll", "poll"]
# Short pauses, so that the poll transport and reconnects keep the tests quick.
FAST: dict[str, Any] = {"pollInterval": 0.2, "reconnectDelay": 0.2, "maxReconnectDelay": 1}
WORKER = "examples.transcode.workers:worker"

PageFactory = Callable[..., LoopbackPage]


# ---------------------------------------------------------------------------------------
# Fixtures: one browser and the servers per module, a fresh browser context per page


@pytest.fixture
def new_page(browser: Browser) -> Iterator[PageFactory]:
    """Factory of loopback-only pages, each in its own context (own cookies, own
    connections); the test fails if one tried to leave loopback."""
    pages: list[LoopbackPage] = []

    def factory(**context_options: Any) -> LoopbackPage:
        page = LoopbackPage(browser.new_context(**context_options))
        pages.append(page)
        return page

    yield factory
    for page in pages:
        page.context.close()
    for page in pages:
        page.check()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def api(folder: Path) -> Iterator[ServerProcess]:
    """Cleartext HTTP (HTTP/1.1 to a browser), memory store, the test page at /static/."""
    server = serve(folder, "api")
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def http(api: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.url, timeout=10) as client:
        yield client


def publish(client: httpx.Client, channel: str, data: Any, **body: Any) -> str:
    answer = client.post(f"/v1/channels/{channel}/messages", json={"data": data, **body})
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def messages(items: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """(id, data) of each message item, resets left out."""
    return [(i["id"], i["data"]) for i in items if i["type"] == "message"]


# ---------------------------------------------------------------------------------------
# Every transport


def test_every_transport_gives_the_same_values_in_order_once(
    api: ServerProcess, http: httpx.Client, new_page: PageFactory
) -> None:
    """The text "1", the number 1, an object, text sent as text/plain over two lines and a
    message with an event name arrive over ws, sse, longpoll and poll as the same values of
    the same types, in order, each once."""
    page = Harness(new_page(), api.url)
    for via in VIAS:
        page.follow(via, f"types.{via}", via=via, **FAST)
    for via in VIAS:
        page.until_started(via)
    values: list[Any] = ["1", 1, {"n": 1, "list": [1, "1", None, True], "nested": {"x": 1.5}}]
    sent: dict[str, list[tuple[str, Any]]] = {}
    for via in VIAS:
        channel = f"types.{via}"
        ids = [publish(http, channel, v) for v in values]
        text = http.post(
            f"/v1/channels/{channel}/messages",
            content="two\nlines",
            headers={"content-type": "text/plain"},
        )
        assert text.status_code == 201, text.text
        named = publish(http, channel, None, event="ping")
        sent[via] = [
            *zip(ids, values, strict=True),
            (text.json()["id"], "two\nlines"),
            (named, None),
        ]
    for via in VIAS:
        items = page.until_items(via, len(sent[via]))
        # A late duplicate would come before a message published after it: wait for one.
        last = publish(http, f"types.{via}", "last")
        items = page.until_items(via, len(sent[via]) + 1)
        assert messages(items) == [*sent[via], (last, "last")], via
        assert [type(i["data"]) for i in items[:3]] == [str, int, dict], via
        assert [i["event"] for i in items[-2:]] == ["ping", None], via
        assert {i["channel"] for i in items} == {f"types.{via}"}, via
        assert all(i["time"].endswith("Z") for i in items), via
    for via in VIAS:
        run = page.run(via)
        assert run["error"] is None, run
        assert [s["via"] for s in run["statuses"] if s["state"] == "open"] == [via], run


def test_several_channels_on_one_subscription(
    api: ServerProcess, http: httpx.Client, new_page: PageFactory
) -> None:
    """One subscription of two channels (SSE multiplexes them on /v1/events, WebSocket and
    polls open one per channel): each channel's messages in their order, each once."""
    page = Harness(new_page(), api.url)
    for via in VIAS:
        page.follow(via, [f"multi.a.{via}", f"multi.b.{via}"], via=via, **FAST)
    for via in VIAS:
        page.until_started(via)
    for via in VIAS:
        for n in range(3):
            publish(http, f"multi.a.{via}", f"a{n}")
            publish(http, f"multi.b.{via}", n)
    for via in VIAS:
        items = page.until_items(via, 6)
        time.sleep(0.3)
        items = page.items(via)
        assert [i["data"] for i in items if i["channel"] == f"multi.a.{via}"] == ["a0", "a1", "a2"]
        assert [i["data"] for i in items if i["channel"] == f"multi.b.{via}"] == [0, 1, 2]
        assert len(items) == 6, (via, items)


# ---------------------------------------------------------------------------------------
# Resume after a restart


@pytest.mark.timeout(90)
def test_every_transport_resumes_after_the_server_restarts(
    folder: Path, tmp_path: Path, new_page: PageFactory
) -> None:
    """A server on SQLite stops and starts again on its port: each subscription reconnects
    by itself and gets what was published before, during its reconnect and after, once
    each and in order."""
    server = serve(tmp_path, "restart", store=f"sqlite:///{tmp_path / 'tidings.db'}")
    try:
        page = Harness(new_page(), server.url)
        for via in VIAS:
            page.follow(via, f"restart.{via}", via=via, **FAST)
        for via in VIAS:
            page.until_started(via)
        sent: dict[str, list[tuple[str, Any]]] = {via: [] for via in VIAS}

        def publish_all(label: str) -> None:
            with httpx.Client(base_url=server.url, timeout=10) as client:
                for via in VIAS:
                    for n in range(3):
                        data = f"{label}{n}"
                        sent[via].append((publish(client, f"restart.{via}", data), data))

        publish_all("before")
        for via in VIAS:
            page.until_items(via, 3)
        server.stop(signal.SIGTERM)
        for via in VIAS:
            page.until("run.statuses.some((s) => s.state === 'reconnecting')", via)
        server.start()
        # Right away, while the pages are still between their tries (a quick one may be
        # back already): they must fetch these from where they left off.
        publish_all("during")
        for via in VIAS:
            page.until(
                "run.statuses.filter((s) => s.state === 'open').length >= 2", via, timeout=20
            )
        publish_all("after")
        for via in VIAS:
            items = page.until_items(via, 9, timeout=20)
            time.sleep(0.3)
            items = page.items(via)
            assert messages(items) == sent[via], (via, page.run(via)["statuses"])
            assert page.run(via)["error"] is None
    finally:
        server.kill()


# ---------------------------------------------------------------------------------------
# Reset


def test_a_cursor_older_than_the_history_yields_a_reset_first(
    api: ServerProcess, http: httpx.Client, new_page: PageFactory
) -> None:
    """A channel keeps 3 messages; a subscriber asking for what follows the first of 10
    gets a reset naming the oldest kept id, then the 3 kept, then live ones."""
    page = Harness(new_page(), api.url)
    first_kept: dict[str, str] = {}
    kept: dict[str, list[tuple[str, Any]]] = {}
    oldest: dict[str, str] = {}
    for via in VIAS:
        channel = f"reset.{via}"
        answer = http.put(
            f"/v1/channels/{channel}", json={"retention": {"max_messages": 3, "max_age": 3600}}
        )
        assert answer.status_code == 200, answer.text
        ids = [publish(http, channel, n) for n in range(10)]
        page_ = http.get(f"/v1/channels/{channel}/messages", params={"after": "0"}).json()
        assert [m["data"] for m in page_["messages"]] == [7, 8, 9], page_
        oldest[via], first_kept[via] = ids[0], ids[7]
        kept[via] = list(zip(ids[7:], [7, 8, 9], strict=True))
    for via in VIAS:
        page.follow(via, f"reset.{via}", via=via, after=oldest[via], **FAST)
    for via in VIAS:
        items = page.until_items(via, 4)
        assert items[0]["type"] == "reset", (via, items)
        assert items[0]["channel"] == f"reset.{via}"
        assert items[0]["first"] == first_kept[via], (via, items[0])
        assert messages(items[1:]) == kept[via], (via, items)
        live = publish(http, f"reset.{via}", "live")
        items = page.until_items(via, 5)
        assert messages(items[4:]) == [(live, "live")], (via, items)
        assert sum(i["type"] == "reset" for i in items) == 1, (via, items)


# ---------------------------------------------------------------------------------------
# Fallback behind a proxy that refuses upgrades


@pytest.fixture(scope="module")
def proxy(api: ServerProcess, folder: Path) -> Iterator[Nginx]:
    where = folder / "nginx"
    where.mkdir()
    front = Nginx(where, api)
    try:
        yield front
    finally:
        front.stop()


def test_auto_falls_back_when_a_proxy_refuses_websocket_upgrades(
    proxy: Nginx, http: httpx.Client, new_page: PageFactory
) -> None:
    """Behind nginx that does not forward the upgrade, tidings answers the WebSocket
    request 426; "auto" says it falls back from ws and receives over SSE."""
    page = Harness(new_page(), proxy.url)
    page.follow("auto", "fallback.ws", via="auto", **FAST)
    page.until_open("auto")
    statuses = page.run("auto")["statuses"]
    fallbacks = [(s["from"], s["via"], s["code"]) for s in statuses if s["state"] == "fallback"]
    assert fallbacks == [("ws", "sse", "unreachable")], statuses
    assert [s["via"] for s in statuses if s["state"] == "open"] == ["sse"], statuses
    ids = [publish(http, "fallback.ws", n) for n in range(3)]
    items = page.until_items("auto", 3)
    assert messages(items) == list(zip(ids, [0, 1, 2], strict=True))
    # The upgrade reached tidings without its headers and was refused there.
    refused = [
        line for line in proxy.access_log().splitlines() if "/v1/channels/fallback.ws/ws" in line
    ]
    assert refused and all('" 426 ' in line for line in refused), refused


def test_auto_falls_back_to_long_polling_when_a_proxy_holds_event_streams(
    proxy: Nginx, http: httpx.Client, new_page: PageFactory
) -> None:
    """Behind nginx that also buffers and compresses event streams, an SSE request gets
    no answer, not even its head: "auto" sees a message waiting (a short poll finds it)
    while the stream sent nothing, well before any request timeout, says so, and moves to
    long polling, which delivers what was published meanwhile and after."""
    page = Harness(new_page(), proxy.buffering_url)
    page.follow("auto", "fallback.held", {}, via="auto", **FAST)
    page.until("run.statuses.some((s) => s.state === 'connecting' && s.via === 'sse')", "auto")
    held = publish(http, "fallback.held", "held")
    items = page.until_items("auto", 1)
    assert messages(items) == [(held, "held")]
    statuses = page.run("auto")["statuses"]
    fallbacks = [(s["from"], s["via"], s["code"]) for s in statuses if s["state"] == "fallback"]
    assert fallbacks == [("ws", "sse", "unreachable"), ("sse", "longpoll", "stream_buffered")], (
        statuses
    )
    assert [s["via"] for s in statuses if s["state"] == "open"] == ["longpoll"], statuses
    later = publish(http, "fallback.held", "later")
    items = page.until_items("auto", 2)
    assert messages(items) == [(held, "held"), (later, "later")]


# ---------------------------------------------------------------------------------------
# Jobs


@pytest.fixture(scope="module")
def worker(api: ServerProcess, folder: Path) -> Iterator[None]:
    """The tutorial's worker (examples/transcode) serving `api`."""
    proc = start_worker(api, folder / "worker.log", WORKER)
    try:
        yield
        assert proc.poll() is None, (folder / "worker.log").read_text()
    finally:
        stop_process(proc)


@pytest.mark.usefixtures("worker")
def test_a_job_is_followed_to_succeeded_with_its_progress(
    api: ServerProcess, new_page: PageFactory
) -> None:
    """submit() then job.events() over each streaming transport: queued, running, progress
    rising to 100, succeeded with the result; job.wait() answers the finished job."""
    page = Harness(new_page(), api.url)
    transports = ["auto", "sse", "longpoll"]
    for via in transports:
        page.submit(via, "transcode", {"name": f"{via}.mov", "size": 3}, via=via)
    for via in transports:
        page.until("run.done", via, timeout=30)
        run = page.run(via)
        assert run["error"] is None, run
        events = run["events"]
        names = [e["event"] for e in events]
        assert names[0] == "queued" and names[-1] == "succeeded", names
        assert "running" in names, names
        progress = [e["progress"] for e in events if e["event"] == "progress"]
        assert len(progress) >= 2 and progress == sorted(set(progress)), progress
        assert progress[-1] == 100, progress
        assert events[-1]["result"] == {"url": f"/videos/{via}.mp4", "source": f"{via}.mov"}
        finished = run["finished"]
        assert finished["status"] == "succeeded" and finished["progress"] == 100, finished
        assert finished["result"] == events[-1]["result"]


# ---------------------------------------------------------------------------------------
# HTTP/2 against HTTP/1.1: 20 EventSources on one origin

OPEN_EVENT_SOURCES = """
([channel, count]) => {
  window.sources = [];
  window.opened = 0;
  window.received = new Array(count).fill(null);
  for (let i = 0; i < count; i++) {
    const source = new EventSource(`/v1/channels/${channel}/events`);
    source.onopen = () => { window.opened += 1; };
    source.onmessage = (e) => { window.received[i] = e.data; };
    window.sources.push(source);
  }
}
"""


@pytest.fixture(scope="module")
def tls_api(folder: Path, self_signed: tuple[Path, Path]) -> Iterator[ServerProcess]:
    cert, key = self_signed
    server = serve(folder, "tls", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key))
    try:
        yield server
    finally:
        server.kill()


def test_over_http2_twenty_event_sources_on_one_origin_are_all_live(
    tls_api: ServerProcess, new_page: PageFactory
) -> None:
    """Over HTTPS (a self-signed certificate) the server speaks HTTP/2: the page's 20
    EventSources are streams of one connection, and all open and receive."""
    loopback = new_page(ignore_https_errors=True)
    page = Harness(loopback, tls_api.url).page
    protocol = page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
    assert protocol == "h2", protocol
    page.evaluate(OPEN_EVENT_SOURCES, ["h2.twenty", 20])
    page.wait_for_function("window.opened === 20", timeout=10_000)
    with httpx.Client(base_url=tls_api.url, verify=tls_api.verify, timeout=10) as client:
        publish(client, "h2.twenty", "to all")
    page.wait_for_function("window.received.every((d) => d === 'to all')", timeout=10_000)


def test_over_http11_the_seventh_event_source_waits_for_a_connection(
    api: ServerProcess, http: httpx.Client, new_page: PageFactory
) -> None:
    """The same page over cleartext HTTP/1.1: the browser opens 6 connections per origin,
    so 6 streams open and receive while the 7th and later wait; closing one lets the next
    in."""
    page = Harness(new_page(), api.url).page
    protocol = page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
    assert protocol == "http/1.1", protocol
    page.evaluate(OPEN_EVENT_SOURCES, ["h1.twenty", 20])
    page.wait_for_function("window.opened >= 6", timeout=10_000)
    time.sleep(4)  # ample time for a seventh to open, were it able to
    assert page.evaluate("window.opened") == 6
    publish(http, "h1.twenty", "to all")
    page.wait_for_function(
        "window.received.filter((d) => d === 'to all').length === 6", timeout=10_000
    )
    time.sleep(0.5)
    received = page.evaluate("window.received")
    assert received.count("to all") == 6 and received.count(None) == 14, received
    # Free one connection: one waiting stream takes it.
    page.evaluate("window.sources[window.received.findIndex((d) => d === 'to all')].close()")
    page.wait_for_function("window.opened === 7", timeout=10_000)
    time.sleep(0.5)
    assert page.evaluate("window.opened") == 7


# ---------------------------------------------------------------------------------------
# Errors


@pytest.fixture(scope="module")
def locked_api(folder: Path) -> Iterator[ServerProcess]:
    server = serve(folder, "locked", "--require-auth")
    try:
        yield server
    finally:
        server.kill()


def test_a_wrong_token_is_a_tidings_error_with_the_servers_status_and_code(
    locked_api: ServerProcess, new_page: PageFactory
) -> None:
    with httpx.Client(base_url=locked_api.url, timeout=10) as client:
        answer = client.post(
            "/v1/channels/news/messages",
            json={"data": 1},
            headers={"Authorization": "Bearer tdt_wrong"},
        )
    assert answer.status_code == 401
    server_error = answer.json()["error"]
    page = Harness(new_page(), locked_api.url)
    error = page.page.evaluate(
        """async () => {
          const client = new tidings.Tidings({ url: location.origin, token: "tdt_wrong" });
          try { await client.publish("news", 1); return null; }
          catch (e) { return { ...errorOf(e), isTidingsError: e instanceof tidings.TidingsError }; }
        }"""
    )
    assert error == {
        "name": "TidingsError",
        "status": 401,
        "code": server_error["code"],
        "message": server_error["message"],
        "isTidingsError": True,
    }
    # A subscription refused the same way ends with that error instead of retrying.
    for via in ["sse", "longpoll", "poll"]:
        page.follow(via, "news", {"token": "tdt_wrong"}, via=via, **FAST)
    for via in ["sse", "longpoll", "poll"]:
        page.until("run.done", via)
        run = page.run(via)
        assert run["items"] == [], run
        assert (run["error"]["status"], run["error"]["code"]) == (401, server_error["code"]), run
        assert run["statuses"][-1]["state"] == "closed", run


# ---------------------------------------------------------------------------------------
# The example page


@pytest.fixture(scope="module")
def example(folder: Path) -> Iterator[ServerProcess]:
    """`tidings serve --static examples/upload` with the example's worker."""
    server = serve(folder, "example", static=ROOT / "examples" / "upload")
    proc = start_worker(server, folder / "example-worker.log", WORKER)
    try:
        yield server
        assert proc.poll() is None, (folder / "example-worker.log").read_text()
    finally:
        stop_process(proc)
        server.kill()


def test_the_example_page_shows_progress_and_result(
    example: ServerProcess, new_page: PageFactory
) -> None:
    loopback = new_page()
    page = loopback.page
    page.goto(f"{example.url}/static/")
    video: FilePayload = {
        "name": "holiday.mov",
        "mimeType": "video/quicktime",
        "buffer": b"\0" * 64,
    }
    page.set_input_files("#video", files=[video])
    # Record each value the bar takes, to see it advance rather than jump to the end.
    page.evaluate(
        """() => {
          window.seen = [];
          const bar = document.querySelector("progress");
          new MutationObserver(() => window.seen.push(bar.value))
            .observe(bar, { attributes: true, attributeFilter: ["value"] });
        }"""
    )
    page.click("button[type=submit]")
    expect(page.locator("#result")).to_contain_text("/videos/holiday.mp4", timeout=20_000)
    expect(page.locator("#status")).to_have_text("succeeded")
    assert page.locator("progress").evaluate("bar => bar.value") == 100
    seen = page.evaluate("window.seen")
    assert len(set(seen)) >= 3 and seen == sorted(seen) and seen[-1] == 100, seen
    assert loopback.requests_to("/client/tidings.js"), loopback.requests
    assert loopback.requests_to("/v1/jobs"), loopback.requests
