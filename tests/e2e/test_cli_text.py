"""The `tidings` command's own text: --version, help that keeps its square brackets, and
errors that keep theirs (rich markup would swallow `[env TIDINGS_PORT]` or `[redis]`)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tidings import __version__

pytestmark = pytest.mark.timeout(60)


def tidings(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "tidings", *args],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        env=env,
    )


def test_version_prints_the_package_version() -> None:
    done = tidings("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"tidings {__version__}"


def test_serve_help_shows_each_env_twin_in_brackets() -> None:
    done = tidings("serve", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # help is wrapped: a hint may span two lines
    for hint in ("[env TIDINGS_HOST]", "[env TIDINGS_PORT]", "[env TIDINGS_STORE]"):
        assert hint in text


def test_an_error_keeps_its_square_brackets() -> None:
    # A --via value is echoed back in the error: its brackets must survive.
    done = tidings("subscribe", "news", "--via", "[bogus]", "--url", "http://127.0.0.1:9")
    assert done.returncode != 0
    assert "'[bogus]'" in done.stderr
