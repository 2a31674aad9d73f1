"""The `tidings` command: serve, publish and subscribe, jobs and workers, users, doctor."""

from __future__ import annotations

import sys

# Top-level modules of the `server` extra's packages (pyproject.toml).
_SERVER_EXTRA = frozenset(
    {"typer", "click", "rich", "starlette", "uvicorn", "prometheus_client", "argon2", "jwt"}
)


def main() -> None:
    """Run the command, or say which extra to install when its libraries are missing."""
    try:
        from tidings.cli.main import main as run
    except ModuleNotFoundError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing in _SERVER_EXTRA:
            sys.exit(f"the tidings command needs {missing}: pip install 'tidings[server]'")
        raise
    run()
