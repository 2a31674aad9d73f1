"""tidings: one server for every way a backend answers its clients."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["AsyncClient", "Client", "TidingsApp", "__version__", "create_app"]


def __getattr__(name: str) -> object:
    # Lazy: `import tidings` stays cheap for the CLI and the SDK alike.
    if name in ("TidingsApp", "create_app"):
        from tidings import app

        return getattr(app, name)
    if name in ("Client", "AsyncClient"):
        from tidings import client

        return getattr(client, name)
    raise AttributeError(f"module 'tidings' has no attribute {name!r}")
