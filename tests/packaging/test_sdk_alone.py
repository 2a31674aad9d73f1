"""`pip install tidings` (no extra) is the SDK: Client and Worker import and work without
any of the server's libraries, which are the `server` extra."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The server extra's top-level modules: none may be importable in the SDK's venv.
SERVER_ONLY = ("starlette", "uvicorn", "argon2", "jwt", "prometheus_client", "typer", "rich")

PROBE = f"""
import importlib.util, sys
import tidings
from tidings import AsyncClient, Client, Reset, Worker
present = [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m) is not None]
assert not present, f"server libraries installed with the SDK: {{present}}"
loaded = sorted(m for m in sys.modules if m.startswith(("tidings.server", "tidings.cli")))
assert not loaded, f"the SDK imported {{loaded}}"
worker = Worker(concurrency=2)

@worker.handler("echo")
def echo(job):
    return job.payload

print("sdk ok", tidings.__version__)
"""


@pytest.mark.timeout(300)
def test_sdk_installs_and_imports_without_the_server_extra(tmp_path: Path) -> None:
    env_dir = tmp_path / "sdk-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run(
        [str(python), "-c", PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,  # not the checkout: import the installed package, not ./src
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert "sdk ok" in probe.stdout
    # The command says what to install rather than failing with a traceback.
    cli = subprocess.run(
        [str(env_dir / "bin" / "tidings"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert cli.returncode != 0
    assert "pip install 'tidings[server]'" in cli.stderr
    assert "Traceback" not in cli.stderr
