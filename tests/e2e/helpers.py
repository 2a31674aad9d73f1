"""Helpers shared by end-to-end tests: running the `tidings` command line."""

from __future__ import annotations

import os
import subprocess
import sys


def tidings_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m tidings ARGS` (a wide terminal, so tables do not wrap)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "COLUMNS": "200"},
        check=False,
    )


def cli_ok(*args: str, stdin: str | None = None) -> str:
    """Run `python -m tidings ARGS`, assert it succeeded and return its output."""
    done = tidings_cli(*args, stdin=stdin)
    assert done.returncode == 0, f"tidings {' '.join(args)}: {done.stdout}\n{done.stderr}"
    return done.stdout
