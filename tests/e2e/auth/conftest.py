"""Fixtures of the authentication tests.

Every test runs a real `tidings serve --require-auth` on a real SQLite file. The users
(alice: publish/subscribe `news.*`; bob: publish/subscribe `other.*`) are made once for the
whole folder by `tidings users add ... --password-stdin` and the file is copied for each
test, so each test starts from the same store without paying for the CLI again.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.auth.helpers import ALICE_PASSWORD, BOB_PASSWORD
from tests.e2e.helpers import cli_ok


@pytest.fixture(scope="package")
def users_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite store holding alice and bob, made with `tidings users add`."""
    folder = tmp_path_factory.mktemp("auth-users")
    url = f"sqlite:///{folder / 't.db'}"
    out = cli_ok(
        "users", "add", "alice", "--store", url, "--password-stdin",
        "--publish", "news.*", "--subscribe", "news.*",
        stdin=ALICE_PASSWORD + "\n",
    )  # fmt: skip
    assert "alice" in out
    cli_ok(
        "users", "add", "bob", "--store", url, "--password-stdin",
        "--publish", "other.*", "--subscribe", "other.*",
        stdin=BOB_PASSWORD + "\n",
    )  # fmt: skip
    listed = cli_ok("users", "list", "--store", url)
    assert "alice" in listed
    assert "bob" in listed
    assert ALICE_PASSWORD not in listed
    return folder


@pytest.fixture
def store(users_store: Path, tmp_path: Path) -> str:
    """This test's own copy of the users' store, as a URL."""
    for f in users_store.glob("t.db*"):
        shutil.copy(f, tmp_path / f.name)
    return f"sqlite:///{tmp_path / 't.db'}"
