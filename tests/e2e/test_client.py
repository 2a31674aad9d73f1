"""The Python SDK against the real server: publish, read, and subscribe over every transport.

Each test starts `tidings serve` through the `tidings_server` factory (tests/conftest.py)
and talks to it only through `tidings.sdk.client`. Publishers run in a background thread
while the test iterates a subscription; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import aclosing, closing
from typing import Any

import pytest

from tidings.protocol.messages import Message, Reset
from tidings.sdk.client import AsyncClient, Client, TidingsHTTPError

VIAS = ["sse", "ws", "longpoll", "poll"]

# Values whose exact type survives every transport (SSE streams are asked for format=json).
EXACT_VALUES: list[Any] = [
    "plain text",
    "123",
    "",
    "ünïcødé ✓ 🚀",
    "line one\nline two",
    {"a": 1, "b": [1, 2, {"c": None}], "d": "x"},
    [1, "two", 3.5, None],
    {},
    [],
    42,
    3.25,
    True,
    False,
    None,
]
FAST = {"poll_interval": 0.05, "reconnect_delay": 0.1}


class Background:
    """Run `fn` in a daemon thread; `join()` re-raises what it raised."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # reported by join()
            self._error = exc

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.join()

    def join(self, timeout: float = 15.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "background thread did not finish"
        if self._error is not None:
            raise self._error


def take(it: Iterator[Message | Reset], n: int) -> list[Message | Reset]:
    """The first `n` items of a subscription, which is then closed."""
    out: list[Message | Reset] = []
    with closing(it):
        for item in it:
            out.append(item)
            if len(out) == n:
                break
    return out


async def atake(ait: Any, n: int) -> list[Message | Reset]:
    out: list[Message | Reset] = []
    async with aclosing(ait):
        async for item in ait:
            out.append(item)
            if len(out) == n:
                break
    return out


def messages_only(items: list[Message | Reset]) -> list[Message]:
    assert not any(isinstance(i, Reset) for i in items), f"unexpected reset in {items}"
    return [i for i in items if isinstance(i, Message)]


@pytest.fixture
def server(tidings_server: Any) -> Any:
    return tidings_server(store="memory://")


# --- publish and read --------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_publish_then_read_returns_every_value_with_its_type(server: Any) -> None:
    """A str stays a str (even "123"), any other JSON value keeps its type, in order."""
    with Client(server.url) as client:
        before = time.time()
        acks = [client.publish("rt", v) for v in EXACT_VALUES]
        evented = client.publish("rt", {"x": 1}, event="greeting")
        page = client.read("rt")
    assert all(a.channel == "rt" for a in acks)
    assert len({a.id for a in acks}) == len(acks)
    assert before - 5 < acks[0].time < time.time() + 5
    assert [m.data for m in page.messages] == [*EXACT_VALUES, {"x": 1}]
    assert [type(m.data) for m in page.messages[: len(EXACT_VALUES)]] == [
        type(v) for v in EXACT_VALUES
    ]
    assert [m.id for m in page.messages] == [a.id for a in acks] + [evented.id]
    assert page.messages[-1].event == "greeting"
    assert page.messages[0].event is None
    assert all(m.channel == "rt" for m in page.messages)
    assert abs(page.messages[0].time - acks[0].time) < 0.01
    assert page.next == evented.id
    assert page.reset is False


@pytest.mark.timeout(20)
def test_read_pages_with_limit_and_cursor(server: Any) -> None:
    with Client(server.url) as client:
        ids = [client.publish("pages", i).id for i in range(5)]
        first = client.read("pages", limit=2)
        second = client.read("pages", after=first.next, limit=2)
        third = client.read("pages", after=second.next, limit=2)
        empty = client.read("pages", after=third.next)
    assert [m.id for m in first.messages] == ids[:2]
    assert first.next == ids[1]
    assert [m.data for m in second.messages] == [2, 3]
    assert [m.id for m in third.messages] == ids[4:]
    assert empty.messages == []
    assert empty.next == ids[4]


@pytest.mark.timeout(20)
def test_read_with_wait_answers_as_soon_as_a_message_exists(server: Any) -> None:
    with Client(server.url) as client:
        last = client.publish("lp", "before").id

        def publish_later() -> None:
            time.sleep(0.3)
            with Client(server.url) as other:
                other.publish("lp", "after")

        with Background(publish_later):
            started = time.monotonic()
            page = client.read("lp", after=last, wait=10)
            elapsed = time.monotonic() - started
    assert [m.data for m in page.messages] == ["after"]
    assert 0.2 < elapsed < 5


@pytest.mark.timeout(20)
def test_read_with_wait_answers_empty_after_the_wait(server: Any) -> None:
    with Client(server.url) as client:
        last = client.publish("lp-empty", "only").id
        started = time.monotonic()
        page = client.read("lp-empty", after=last, wait=0.5)
        elapsed = time.monotonic() - started
    assert page.messages == []
    assert page.next == last
    assert 0.4 < elapsed < 5


@pytest.mark.timeout(20)
def test_repeated_idempotency_key_returns_the_first_id(server: Any) -> None:
    with Client(server.url) as client:
        first = client.publish("idem", "once", idempotency_key="k-1")
        again = client.publish("idem", "once", idempotency_key="k-1")
        page = client.read("idem")
    assert again.id == first.id
    assert [m.data for m in page.messages] == ["once"]


@pytest.mark.timeout(20)
def test_publish_errors_carry_the_server_code(server: Any) -> None:
    with Client(server.url) as client:
        with pytest.raises(TidingsHTTPError) as bad_name:
            client.publish("no spaces allowed", "x")
        with pytest.raises(TidingsHTTPError) as too_big:
            client.publish("big", "x" * (1024 * 1024 + 1))
    assert bad_name.value.status == 400
    assert "invalid_channel" in str(bad_name.value)
    assert too_big.value.status == 413
    assert too_big.value.code == "payload_too_large"


# --- subscribe ---------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", VIAS)
def test_subscribe_receives_later_messages_in_order_with_exact_data(server: Any, via: str) -> None:
    values = EXACT_VALUES
    with Client(server.url) as client:
        marker = client.publish("sub", "marker")
        it = client.subscribe("sub", via=via, after=marker.id, **FAST)

        def publish_all() -> None:
            with Client(server.url) as pub:
                for v in values:
                    pub.publish("sub", v, event="ev" if v == "plain text" else None)

        with Background(publish_all):
            got = messages_only(take(it, len(values)))
    assert [m.data for m in got] == values
    assert [type(m.data) for m in got] == [type(v) for v in values]
    assert [m.event for m in got] == ["ev" if v == "plain text" else None for v in values]
    assert all(m.channel == "sub" for m in got)
    assert all(abs(m.time - time.time()) < 60 for m in got)  # every transport carries the time
    assert len({m.id for m in got}) == len(got)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", VIAS)
def test_subscribe_without_cursor_gets_a_contiguous_run_of_new_messages(
    server: Any, via: str
) -> None:
    """after=None: nothing from before the subscription, then every message, no gaps."""
    stop = threading.Event()

    def publish_numbers() -> None:
        with Client(server.url) as pub:
            for n in range(400):
                if stop.is_set():
                    return
                pub.publish("tail", {"n": n})
                time.sleep(0.02)

    with Client(server.url) as client:
        client.publish("tail", {"old": True})
        it = client.subscribe("tail", via=via, **FAST)
        with Background(publish_numbers):
            try:
                got = messages_only(take(it, 10))
            finally:
                stop.set()
    numbers = [m.data["n"] for m in got]
    assert numbers == list(range(numbers[0], numbers[0] + 10))


@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", VIAS)
def test_subscribe_after_an_id_resumes_right_after_it(server: Any, via: str) -> None:
    with Client(server.url) as client:
        ids = [client.publish("resume", {"n": n}).id for n in range(5)]
        got = messages_only(take(client.subscribe("resume", via=via, after=ids[1], **FAST), 3))
        from_start = messages_only(take(client.subscribe("resume", via=via, after="0", **FAST), 5))
    assert [m.id for m in got] == ids[2:]
    assert [m.data for m in got] == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert [m.id for m in from_start] == ids


@pytest.mark.timeout(20)
def test_sse_keeps_scalars_apart_from_their_text(server: Any) -> None:
    """The SDK's SSE stream carries whole messages (format=json): `123` the number and
    "123" the text arrive as they were published."""
    values: list[Any] = [123, "123", True, "true", None, "null", '"quoted"']
    with Client(server.url) as client:
        for v in values:
            client.publish("scalars", v)
        got = messages_only(take(client.subscribe("scalars", via="sse", after="0"), len(values)))
    assert [m.data for m in got] == values
    assert [type(m.data) for m in got] == [type(v) for v in values]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", VIAS)
def test_subscribe_to_an_invalid_channel_raises_instead_of_retrying(server: Any, via: str) -> None:
    with Client(server.url) as client:
        it = client.subscribe("no spaces allowed", via=via, after="0", **FAST)
        with closing(it), pytest.raises(TidingsHTTPError) as err:
            next(it)
    assert 400 <= err.value.status < 500


@pytest.mark.slow
@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("via", "how"),
    [
        ("sse", "sigterm"),
        ("ws", "sigterm"),
        ("longpoll", "sigterm"),
        ("poll", "sigterm"),
        ("sse", "kill"),
        ("ws", "kill"),
    ],
)
def test_subscription_survives_a_server_restart_without_loss_or_duplicates(
    tidings_server: Any, tmp_path: Any, via: str, how: str
) -> None:
    srv = tidings_server(store=f"sqlite:///{tmp_path}/t.db")
    with Client(srv.url) as client:
        ids_before = [client.publish("durable", {"n": n}).id for n in range(3)]
    three_seen = threading.Event()
    ids_after: list[str] = []

    def restart_and_publish() -> None:
        assert three_seen.wait(10), "the subscriber never saw the first three messages"
        if how == "kill":
            srv.kill()
        else:
            srv.stop(signal.SIGTERM)
        srv.start()
        with Client(srv.url) as pub:
            ids_after.extend(pub.publish("durable", {"n": n}).id for n in range(3, 6))

    got: list[Message | Reset] = []
    with Client(srv.url, timeout=5) as client:
        it = client.subscribe("durable", via=via, after="0", **FAST)
        with Background(restart_and_publish), closing(it):
            for item in it:
                got.append(item)
                if len(got) == 3:
                    three_seen.set()
                if len(got) == 6:
                    break
    messages = messages_only(got)
    assert [m.data for m in messages] == [{"n": n} for n in range(6)]
    assert [m.id for m in messages] == ids_before + ids_after


# --- AsyncClient -------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_async_publish_then_read_round_trip(server: Any) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as client:
            acks = [await client.publish("art", v) for v in EXACT_VALUES]
            again = await client.publish("art", "dup", idempotency_key="a")
            same = await client.publish("art", "dup", idempotency_key="a")
            page = await client.read("art", limit=len(EXACT_VALUES) + 5)
            with pytest.raises(TidingsHTTPError) as err:
                await client.publish("bad name", 1)
        assert [m.data for m in page.messages] == [*EXACT_VALUES, "dup"]
        assert [m.id for m in page.messages] == [a.id for a in acks] + [again.id]
        assert same.id == again.id
        assert err.value.status == 400

    asyncio.run(main())


@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", VIAS)
def test_async_subscribe_receives_later_messages_in_order(server: Any, via: str) -> None:
    values = EXACT_VALUES

    async def main() -> list[Message | Reset]:
        async with AsyncClient(server.url) as client:
            marker = await client.publish("asub", "marker")
            ait = client.subscribe("asub", via=via, after=marker.id, **FAST)

            def publish_all() -> None:
                with Client(server.url) as pub:
                    for v in values:
                        pub.publish("asub", v)

            with Background(publish_all):
                return await atake(ait, len(values))

    got = messages_only(asyncio.run(main()))
    assert [m.data for m in got] == values
    assert [type(m.data) for m in got] == [type(v) for v in values]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", VIAS)
def test_async_subscribe_without_cursor_skips_old_messages(server: Any, via: str) -> None:
    stop = threading.Event()

    def publish_numbers() -> None:
        with Client(server.url) as pub:
            for n in range(400):
                if stop.is_set():
                    return
                pub.publish("atail", {"n": n})
                time.sleep(0.02)

    async def main() -> list[Message | Reset]:
        async with AsyncClient(server.url) as client:
            await client.publish("atail", {"old": True})
            ait = client.subscribe("atail", via=via, **FAST)
            with Background(publish_numbers):
                try:
                    return await atake(ait, 5)
                finally:
                    stop.set()

    numbers = [m.data["n"] for m in messages_only(asyncio.run(main()))]
    assert numbers == list(range(numbers[0], numbers[0] + 5))


@pytest.mark.slow
@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", VIAS)
def test_async_subscription_survives_a_server_restart(
    tidings_server: Any, tmp_path: Any, via: str
) -> None:
    srv = tidings_server(store=f"sqlite:///{tmp_path}/t.db")
    with Client(srv.url) as client:
        ids = [client.publish("adurable", {"n": n}).id for n in range(2)]
    two_seen = threading.Event()

    def restart_and_publish() -> None:
        assert two_seen.wait(10), "the subscriber never saw the first two messages"
        srv.stop(signal.SIGTERM)
        srv.start()
        with Client(srv.url) as pub:
            ids.extend(pub.publish("adurable", {"n": n}).id for n in range(2, 4))

    async def main() -> list[Message | Reset]:
        got: list[Message | Reset] = []
        async with AsyncClient(srv.url, timeout=5) as client:
            ait = client.subscribe("adurable", via=via, after="0", **FAST)
            with Background(restart_and_publish):
                async with aclosing(ait):
                    async for item in ait:
                        got.append(item)
                        if len(got) == 2:
                            two_seen.set()
                        if len(got) == 4:
                            break
        return got

    messages = messages_only(asyncio.run(main()))
    assert [m.data for m in messages] == [{"n": n} for n in range(4)]
    assert [m.id for m in messages] == ids


# --- resets ------------------------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", VIAS)
def test_subscribe_behind_retained_history_yields_a_reset_then_what_is_left(
    tidings_server: Any, via: str
) -> None:
    srv = tidings_server(store="memory://", args=["--max-messages", "3"])
    with Client(srv.url) as client:
        ids = [client.publish("short", {"n": n}).id for n in range(6)]
        page = client.read("short", after=ids[0])
        got = take(client.subscribe("short", via=via, after=ids[0], **FAST), 4)
    assert page.reset is True
    assert [m.id for m in page.messages] == ids[3:]
    reset, *rest = got
    assert isinstance(reset, Reset)
    assert reset.channel == "short"
    assert reset.first == ids[3]
    assert [m.id for m in messages_only(rest)] == ids[3:]
    assert [m.data for m in messages_only(rest)] == [{"n": 3}, {"n": 4}, {"n": 5}]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("via", ["sse", "ws"])
def test_async_subscribe_behind_retained_history_yields_a_reset(
    tidings_server: Any, via: str
) -> None:
    srv = tidings_server(store="memory://", args=["--max-messages", "2"])

    async def main() -> list[Message | Reset]:
        async with AsyncClient(srv.url) as client:
            ids.extend([(await client.publish("ashort", n)).id for n in range(4)])
            return await atake(client.subscribe("ashort", via=via, after=ids[0], **FAST), 3)

    ids: list[str] = []
    reset, *rest = asyncio.run(main())
    assert isinstance(reset, Reset)
    assert reset.first == ids[2]
    assert [m.id for m in messages_only(rest)] == ids[2:]


# --- channels ----------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_list_get_set_retention_and_delete_channels(tidings_server: Any) -> None:
    """The channel calls against the server: ids and counts, creation time as epoch
    seconds, a retention of its own and back, and a delete that makes it 404."""
    srv = tidings_server(store="memory://", args=["--max-messages", "100", "--max-age", "3600"])
    before = time.time()
    with Client(srv.url) as client:
        ids = [client.publish("orders.eu", n).id for n in range(3)]
        client.publish("orders.us", "x")
        client.publish("news", "y")
        listed = client.list_channels(prefix="orders.")
        assert [c.name for c in listed] == ["orders.eu", "orders.us"]
        assert [c.name for c in client.list_channels(limit=1)] == ["news"]
        info = client.channel_info("orders.eu")
        assert (info.first_id, info.last_id, info.messages) == (ids[0], ids[-1], 3)
        assert info.created is not None
        assert before - 5 < info.created < time.time() + 5
        assert info.retention is not None
        assert (info.retention.max_messages, info.retention.max_age) == (100, 3600)
        assert info.retention.custom is False
        assert info.subscribers == {} or all(v == 0 for v in info.subscribers.values())

        own = client.set_retention("orders.eu", max_messages=2, max_age=60)
        assert own.retention is not None
        assert (own.retention.max_messages, own.retention.max_age, own.retention.custom) == (
            2, 60, True,
        )  # fmt: skip
        assert client.channel_info("orders.eu").messages == 2  # trimmed to the new cap
        back = client.set_retention("orders.eu")
        assert back.retention is not None
        assert (back.retention.max_messages, back.retention.custom) == (100, False)
        with pytest.raises(ValueError, match="both"):
            client.set_retention("orders.eu", max_messages=5)
        with pytest.raises(TidingsHTTPError) as bad:
            client.set_retention("orders.eu", max_messages=0, max_age=60)
        assert bad.value.status in (400, 422)

        client.delete_channel("orders.eu")
        with pytest.raises(TidingsHTTPError) as gone:
            client.channel_info("orders.eu")
        assert gone.value.status == 404
        with pytest.raises(TidingsHTTPError) as again:
            client.delete_channel("orders.eu")
        assert again.value.status == 404
        assert [c.name for c in client.list_channels()] == ["news", "orders.us"]


@pytest.mark.timeout(20)
def test_async_channel_calls_match_the_blocking_ones(server: Any) -> None:
    async def main() -> None:
        async with AsyncClient(server.url) as client:
            first = await client.publish("alpha", 1)
            await client.publish("alpha", 2)
            (listed,) = await client.list_channels(prefix="al")
            assert (listed.name, listed.first_id, listed.messages) == ("alpha", first.id, 2)
            assert listed.created is not None
            info = await client.channel_info("alpha")
            assert info.last_id == listed.last_id
            own = await client.set_retention("alpha", max_messages=1, max_age=10)
            assert own.retention is not None
            assert own.retention.custom
            assert (await client.channel_info("alpha")).messages == 1
            await client.delete_channel("alpha")
            assert await client.list_channels() == []

    asyncio.run(main())
