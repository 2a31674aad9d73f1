"""A real uvicorn server with tidings' protocols, on a thread, for the protocol tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from tidings.server.http.protocol import TidingsHttpProtocol


@contextlib.contextmanager
def uvicorn_thread(app: Any, host: str = "127.0.0.1", **config: Any) -> Iterator[uvicorn.Server]:
    """Serve `app` on a free port of `host` (uvloop, tidings' HTTP protocol, and what
    `config` adds) until the block ends; the running server (its `config.port`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.bind((host, 0))
        port = probe.getsockname()[1]
    settings = {"http": TidingsHttpProtocol, "loop": "uvloop", "log_level": "error", **config}
    cfg = uvicorn.Config(app, host=host, port=port, **settings)
    server = uvicorn.Server(cfg)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        yield server
    finally:
        server.should_exit = True
        thread.join(10)


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A WebSocket app that sends back each text frame."""
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", "text": message["text"]})
