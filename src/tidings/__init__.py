"""tidings: one server for every way a backend answers its clients."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings._version import __version__

if TYPE_CHECKING:
    # What the lazy names below resolve to, for type checkers (users' mypy included).
    from tidings.protocol.messages import Message, Reset
    from tidings.sdk.client import (
        AsyncClient,
        AsyncJobHandle,
        ChannelInfo,
        ChannelRetention,
        Client,
        ClientError,
        JobHandle,
        JobInfo,
        JobTimeout,
        Page,
        ScheduleInfo,
        TidingsConnectionError,
        TidingsHTTPError,
    )
    from tidings.sdk.worker import JobCancelled, JobContext, Worker, WorkerRefused
    from tidings.server.app import TidingsApp, create_app

__all__ = [
    "AsyncClient",
    "AsyncJobHandle",
    "ChannelInfo",
    "ChannelRetention",
    "Client",
    "ClientError",
    "JobCancelled",
    "JobContext",
    "JobHandle",
    "JobInfo",
    "JobTimeout",
    "Message",
    "Page",
    "Reset",
    "ScheduleInfo",
    "TidingsApp",
    "TidingsConnectionError",
    "TidingsHTTPError",
    "Worker",
    "WorkerRefused",
    "__version__",
    "create_app",
]

_CLIENT = {
    "Client",
    "AsyncClient",
    "ChannelInfo",
    "ChannelRetention",
    "ClientError",
    "Page",
    "TidingsConnectionError",
    "TidingsHTTPError",
    "JobHandle",
    "AsyncJobHandle",
    "JobInfo",
    "JobTimeout",
    "ScheduleInfo",
}
_WORKER = {"Worker", "JobContext", "JobCancelled", "WorkerRefused"}
_WIRE = {"Message", "Reset"}


def __getattr__(name: str) -> object:
    # Lazy: `import tidings` stays cheap for the CLI and the SDK alike.
    if name in ("TidingsApp", "create_app"):
        from tidings.server import app

        return getattr(app, name)
    if name in _CLIENT:
        from tidings.sdk import client

        return getattr(client, name)
    if name in _WORKER:
        from tidings.sdk import worker

        return getattr(worker, name)
    if name in _WIRE:
        from tidings.protocol import messages

        return getattr(messages, name)
    raise AttributeError(f"module 'tidings' has no attribute {name!r}")
