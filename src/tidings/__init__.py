"""tidings: one server for every way a backend answers its clients."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "ClientError",
    "Page",
    "TidingsApp",
    "TidingsConnectionError",
    "TidingsHTTPError",
    "__version__",
    "create_app",
]

_CLIENT = {
    "Client",
    "AsyncClient",
    "ClientError",
    "Page",
    "TidingsConnectionError",
    "TidingsHTTPError",
}


def __getattr__(name: str) -> object:
    # Lazy: `import tidings` stays cheap for the CLI and the SDK alike.
    if name in ("TidingsApp", "create_app"):
        from tidings import app

        return getattr(app, name)
    if name in _CLIENT:
        from tidings import client

        return getattr(client, name)
    raise AttributeError(f"module 'tidings' has no attribute {name!r}")
