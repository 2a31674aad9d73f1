"""Bridge URLs are checked when `tidings serve` starts: a mistake, or a missing driver,
stops the start (exit 2) with a message saying what to fix; TIDINGS_BRIDGES is the
--bridge options' twin; the admin view never shows a bridge's password."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest

from tests.conftest import ServerFactory, free_port
from tests.e2e.bridges.conftest import RABBITMQ, Rabbit, bridge, wait_for


def _serve(*bridges: str, prelude: str = "") -> subprocess.CompletedProcess[str]:
    args = [a for url in bridges for a in ("--bridge", url)]
    code = (
        f"import sys; {prelude}\nfrom tidings.cli import main\n"
        f"sys.argv = ['tidings', 'serve', '--store', 'memory://', '--port', '{free_port()}', "
        f"*{args!r}]\nmain()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        check=False,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("kafka://127.0.0.1:9092/?topic=t", "unknown kind kafka://; use one of amqp://"),
        (f"{RABBITMQ}?channel=x", "needs queue=NAME"),
        (f"{RABBITMQ}?queue=q", "channel= is missing"),
        (f"{RABBITMQ}?queue=q&channel=a.{{subject}}", "unknown placeholder {subject}"),
        (f"{RABBITMQ}?queue=q&channel=job.x", "channels job.* belong to the job system"),
        (f"{RABBITMQ}?queue=q&channel=a&prefetch=0", "prefetch=0 is out of range: use 1-10000"),
        (f"{RABBITMQ}?queue=q&channel=a&format=xml", "format='xml': use json"),
        ("postgresql://postgres@127.0.0.1/test?table=Drop;", "table='Drop;': use a lower-case"),
        ("postgresql://postgres@127.0.0.1/test?order=random", "order='random': use strict"),
    ],
)
def test_a_bridge_url_that_cannot_work_stops_the_start_saying_what_to_fix(
    url: str, said: str
) -> None:
    done = _serve(url)
    assert done.returncode == 2, done.stderr
    assert said in " ".join(done.stderr.split()), done.stderr
    assert "guest:guest" not in done.stderr


@pytest.mark.timeout(90)
def test_two_bridges_of_one_name_are_refused() -> None:
    url = f"{RABBITMQ}?queue=q&channel=a&name=same"
    done = _serve(url, url.replace("queue=q", "queue=r"))
    assert done.returncode == 2
    assert "two bridges are named 'same'" in done.stderr


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        (f"{RABBITMQ}?queue=q&channel=a", "aio_pika", "tidings[amqp]"),
        ("postgresql://postgres@127.0.0.1/test", "asyncpg", "tidings[postgres]"),
        ("nats://127.0.0.1:4222/?stream=S&channel=a", "nats", "tidings[nats]"),
        ("mqtt://127.0.0.1:1883/?topic=a/%23&channel=a", "aiomqtt", "tidings[mqtt]"),
    ],
)
def test_a_bridge_whose_driver_is_missing_names_the_extra_to_install(
    url: str, module: str, extra: str
) -> None:
    # The driver made unimportable in that process, as if it were not installed.
    done = _serve(url, prelude=f"sys.modules[{module!r}] = None")
    assert done.returncode == 2, done.stderr
    assert f"pip install '{extra}'" in " ".join(done.stderr.split()), done.stderr


@pytest.mark.timeout(120)
def test_tidings_bridges_holds_urls_separated_by_white_space_and_hides_passwords(
    rabbit: Rabbit, tidings_server: ServerFactory
) -> None:
    one, two = rabbit.queue(), rabbit.queue()
    urls = f"{RABBITMQ}?queue={one}&channel=a\n {RABBITMQ}?queue={two}&channel=b"
    srv = tidings_server(env={"TIDINGS_BRIDGES": urls})
    for queue in (one, two):
        wait_for(lambda q=queue: bridge(srv.url, f"amqp.{q}")["state"] == "running")
    settings = httpx.get(f"{srv.url}/v1/admin/server").json()["settings"]
    assert "guest:guest" not in settings["bridges"]
    assert settings["bridges"].count("guest:***@") == 2
