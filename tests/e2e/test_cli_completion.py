"""Shell completion: `tidings --show-completion SHELL` prints a script, and the command
answers the completion protocol that script speaks (bash's COMP_WORDS / COMP_CWORD)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def complete(words: str) -> list[str]:
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    env = {
        **os.environ,
        "_TIDINGS_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
    }
    done = subprocess.run(
        [sys.executable, "-m", "tidings"],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_commands_and_subcommands_complete() -> None:
    assert complete("tidings jo") == ["jobs"]
    assert "submit" in complete("tidings jobs su")
    assert {"serve", "subscribe"} <= set(complete("tidings s"))


def test_options_complete() -> None:
    assert "--store" in complete("tidings serve --st")


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_show_completion_prints_a_script_for_the_shell(shell: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "--show-completion", shell],
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "_TIDINGS_COMPLETE" in done.stdout


def test_the_bash_script_completes_in_a_real_bash() -> None:
    bash = shutil.which("bash")
    assert bash is not None, "bash is needed to check the completion script"
    script = subprocess.run(
        [sys.executable, "-m", "tidings", "--show-completion", "bash"],
        capture_output=True,
        text=True,
        timeout=50,
        check=True,
    ).stdout
    # Bash passes the command as $1 and the script runs it: this venv's `tidings`.
    command = Path(sys.executable).parent / "tidings"
    assert command.exists(), f"{command}: the package's console script is not installed"
    program = (
        f"{script}\n"
        f"COMP_WORDS=(tidings jobs li); COMP_CWORD=2; _tidings_completion {command}\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        [bash, "-c", program], capture_output=True, text=True, timeout=50, check=False
    )
    assert sorted(done.stdout.split()) == ["limit", "list"], (done.stdout, done.stderr)
