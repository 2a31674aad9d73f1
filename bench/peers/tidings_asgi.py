"""tidings' ASGI app on a memory store, for servers other than `tidings serve`.

`bench/h2_servers.py` runs it under Hypercorn and Granian, with `bench/peers` on the
import path (`tidings_asgi:app`). The store, hub and background loops start in the app's
ASGI lifespan, so the server must run lifespan (both do by default; `/readyz` answers 503
until it has).

`app_coro_send` is the same app handed a `send` that is a coroutine function. The hub
starts each `send(message)` by hand (`.send(None)`) so that a writable socket costs no
task; Granian's own `send` returns an awaitable that is not a coroutine, which the hub
cannot start that way, so under Granian every live delivery fails without this wrapper.
"""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from tidings.server.app import create_app
from tidings.server.settings import Settings

app = create_app(Settings(store="memory://"))


async def app_coro_send(scope: Scope, receive: Receive, send: Send) -> None:
    """`app`, its `send` wrapped in a coroutine function."""

    async def send_coro(message: Message) -> None:
        await send(message)

    await app(scope, receive, send_coro)
