"""`tidings serve` refuses unsafe or malformed configurations before it binds anything."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tidings.server.settings import Settings

pytestmark = pytest.mark.timeout(30)


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--store", "memory://", *args],
        capture_output=True,
        text=True,
        timeout=20,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_a_non_loopback_address_without_auth_is_refused_with_a_way_out():
    done = _serve("--host", "0.0.0.0", "--port", "1")
    assert done.returncode != 0
    message = " ".join(done.stderr.split())
    assert "refusing to serve anonymous clients on 0.0.0.0" in message
    assert "--allow-anonymous" in message


def test_a_malformed_boolean_variable_is_refused():
    done = _serve("--port", "1", env={"TIDINGS_ALLOW_ANONYMOUS": "maybe"})
    assert done.returncode == 2
    assert "TIDINGS_ALLOW_ANONYMOUS" in done.stderr


def test_an_unknown_store_url_is_refused():
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--store", "postgres://x", "--port", "1"],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown store URL" in " ".join(done.stderr.split())


def test_settings_read_booleans_and_numbers_from_the_environment():
    s = Settings.from_env({"TIDINGS_ALLOW_ANONYMOUS": "TRUE", "TIDINGS_PORT": "9001"})
    assert s.allow_anonymous is True
    assert s.port == 9001
    assert Settings.from_env({"TIDINGS_ALLOW_ANONYMOUS": "off"}).allow_anonymous is False
    assert Settings(host="::1").loopback
    assert not Settings(host="10.0.0.1").loopback
