"""The auth contract: every store keeps users and credentials the same way.

Each test runs against the memory store and a real SQLite file. Credentials are keyed by
the SHA-256 of a secret in production; here any unique string serves as the key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tidings.protocol.errors import StoreClosed
from tidings.server.principals import (
    KIND_REVOKED,
    KIND_SESSION,
    KIND_TOKEN,
    Credential,
    Permissions,
    User,
)
from tidings.server.stores.base import Retention, Store
from tidings.server.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.timeout(30)

DEFAULT = Retention(max_messages=100, max_age=3600.0)

Body = Callable[[Store], Coroutine[Any, Any, None]]


def run(make_store: Callable[[], Store], body: Body) -> None:
    """Start a store, run `body`, close it."""

    async def main() -> None:
        store = make_store()
        await store.start()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


def user(name: str, *, publish: tuple[str, ...] = (), admin: bool = False) -> User:
    return User(
        name=name,
        password_hash=f"$argon2id$v=19$fake${name}" if not admin else None,
        permissions=Permissions(publish=publish, subscribe=("news.*", "user.{sub}.*"), admin=admin),
        created=1_700_000_000.0,
    )


def cred(
    key: str,
    owner: str,
    *,
    created: float | None = None,
    expires: float | None = None,
    kind: str = KIND_SESSION,
    name: str = "",
) -> Credential:
    return Credential(
        key=key,
        kind=kind,
        user=owner,
        created=time.time() if created is None else created,
        expires=expires,
        name=name,
    )


# -- users --------------------------------------------------------------------------------


def test_put_user_then_get_returns_it_unchanged(make_store):
    """A stored user comes back equal, permissions and password hash included; an unknown
    name is None."""

    async def body(store: Store) -> None:
        alice = user("alice", publish=("news.*", "user.{sub}.*"))
        root = user("root", admin=True)
        await store.auth.put_user(alice)
        await store.auth.put_user(root)
        assert await store.auth.get_user("alice") == alice
        got = await store.auth.get_user("root")
        assert got == root
        assert got is not None and got.password_hash is None and got.permissions.admin
        assert await store.auth.get_user("nobody") is None
        assert await store.auth.get_user("Alice") is None  # names are case-sensitive

    run(make_store, body)


def test_put_user_replaces_a_user_of_the_same_name(make_store):
    """Putting a user again replaces it: one user, the new permissions."""

    async def body(store: Store) -> None:
        await store.auth.put_user(user("alice", publish=("a",)))
        newer = user("alice", publish=("a", "b"), admin=True)
        await store.auth.put_user(newer)
        assert await store.auth.get_user("alice") == newer
        assert await store.auth.list_users() == [newer]

    run(make_store, body)


def test_list_users_is_by_name(make_store):
    """list_users returns every user sorted by name, whatever the order they were added in."""

    async def body(store: Store) -> None:
        assert await store.auth.list_users() == []
        for name in ("carol", "alice", "bob", "Zed", "alice.b"):
            await store.auth.put_user(user(name))
        assert [u.name for u in await store.auth.list_users()] == [
            "Zed",
            "alice",
            "alice.b",
            "bob",
            "carol",
        ]

    run(make_store, body)


def test_delete_user_removes_the_user_and_only_their_credentials(make_store):
    """delete_user: True once, then False; the user's sessions and tokens go with them, and
    other users' credentials stay."""

    async def body(store: Store) -> None:
        await store.auth.put_user(user("alice"))
        await store.auth.put_user(user("bob"))
        a1 = cred("a1", "alice", created=1.0)
        a2 = cred("a2", "alice", created=2.0, kind=KIND_TOKEN, name="ci")
        b1 = cred("b1", "bob", created=3.0)
        for c in (a1, a2, b1):
            await store.auth.put_credential(c)

        assert await store.auth.delete_user("alice") is True
        assert await store.auth.get_user("alice") is None
        assert await store.auth.get_credential("a1") is None
        assert await store.auth.get_credential("a2") is None
        assert await store.auth.list_credentials("alice") == []
        assert await store.auth.list_credentials() == [b1]
        assert await store.auth.get_user("bob") == user("bob")
        assert await store.auth.get_credential("b1") == b1
        assert [u.name for u in await store.auth.list_users()] == ["bob"]

        assert await store.auth.delete_user("alice") is False
        assert await store.auth.delete_user("nobody") is False

    run(make_store, body)


# -- credentials --------------------------------------------------------------------------


def test_put_and_get_credential_round_trip_and_replace(make_store):
    """A credential comes back equal by key (every kind, with and without expiry); putting
    the same key again replaces it."""

    async def body(store: Store) -> None:
        now = time.time()
        session = cred("s", "alice", expires=now + 3600)
        token = cred("t", "alice", kind=KIND_TOKEN, name="deploy")  # never expires
        revoked = cred("jti:abc", "bob", kind=KIND_REVOKED, expires=now + 60)
        for c in (session, token, revoked):
            await store.auth.put_credential(c)
        assert await store.auth.get_credential("s") == session
        assert await store.auth.get_credential("t") == token
        assert await store.auth.get_credential("jti:abc") == revoked
        assert await store.auth.get_credential("missing") is None

        longer = cred("s", "alice", created=session.created, expires=now + 7200)
        await store.auth.put_credential(longer)
        assert await store.auth.get_credential("s") == longer
        assert [c.key for c in await store.auth.list_credentials("alice")].count("s") == 1

    run(make_store, body)


def test_list_credentials_is_oldest_first_and_filters_by_user(make_store):
    """list_credentials: live credentials by `created`, oldest first, of one user or all."""

    async def body(store: Store) -> None:
        later = time.time() + 3600
        c3 = cred("k-3", "alice", created=300.0, expires=later)
        c1 = cred("k-1", "bob", created=100.0)
        c2 = cred("k-2", "alice", created=200.0, kind=KIND_TOKEN)
        c4 = cred("k-0", "bob", created=400.0, expires=later)
        for c in (c3, c1, c4, c2):
            await store.auth.put_credential(c)
        assert await store.auth.list_credentials() == [c1, c2, c3, c4]
        assert await store.auth.list_credentials(None) == [c1, c2, c3, c4]
        assert await store.auth.list_credentials("alice") == [c2, c3]
        assert await store.auth.list_credentials("bob") == [c1, c4]
        assert await store.auth.list_credentials("nobody") == []

    run(make_store, body)


def test_delete_credential(make_store):
    """delete_credential: True when it existed, then False; the others stay."""

    async def body(store: Store) -> None:
        keep = cred("keep", "alice", created=1.0)
        await store.auth.put_credential(keep)
        await store.auth.put_credential(cred("gone", "alice", created=2.0))
        assert await store.auth.delete_credential("gone") is True
        assert await store.auth.get_credential("gone") is None
        assert await store.auth.delete_credential("gone") is False
        assert await store.auth.delete_credential("never") is False
        assert await store.auth.list_credentials() == [keep]

    run(make_store, body)


def test_live_credentials_answers_many_keys_at_once(make_store):
    """live_credentials: the given keys that exist and are live at `now`, in one call
    (more keys than one SQLite statement may bind)."""

    async def body(store: Store) -> None:
        now = time.time()
        await store.auth.put_credential(cred("live", "alice"))
        await store.auth.put_credential(cred("later", "alice", expires=now + 60))
        await store.auth.put_credential(cred("expired", "alice", expires=now - 1))
        many = [f"k{i}" for i in range(1200)]
        for key in many[::300]:
            await store.auth.put_credential(cred(key, "bob"))
        asked = ["live", "later", "expired", "never", *many]
        assert await store.auth.live_credentials(asked, now) == {"live", "later", *many[::300]}
        assert await store.auth.live_credentials(["later"], now + 61) == set()
        assert await store.auth.live_credentials([], now) == set()

    run(make_store, body)


def test_expired_credential_is_invisible_and_swept(make_store):
    """A credential past its expiry is None to get_credential and absent from
    list_credentials; sweep_credentials(now) deletes those with expires <= now, counts them,
    and leaves live and never-expiring ones."""

    async def body(store: Store) -> None:
        now = time.time()
        expired = cred("old", "alice", created=now - 100, expires=now - 1)
        revoked = cred("jti:x", "alice", created=now - 50, expires=now - 10, kind=KIND_REVOKED)
        live = cred("live", "alice", created=now - 20, expires=now + 3600)
        token = cred("tok", "alice", created=now - 10, kind=KIND_TOKEN)
        for c in (expired, revoked, live, token):
            await store.auth.put_credential(c)

        assert await store.auth.get_credential("old") is None
        assert await store.auth.get_credential("jti:x") is None
        assert await store.auth.get_credential("live") == live
        assert await store.auth.list_credentials() == [live, token]
        assert await store.auth.list_credentials("alice") == [live, token]

        # The cut-off is the argument, not the store's clock: an expiry at exactly `now`
        # goes, one after it stays.
        assert await store.auth.sweep_credentials(now - 10) == 1  # jti:x (expires == now - 10)
        assert await store.auth.sweep_credentials(now) == 1  # old
        assert await store.auth.sweep_credentials(now) == 0  # already gone
        assert await store.auth.list_credentials() == [live, token]
        assert await store.auth.get_credential("live") == live

        # Deleted, not just hidden: putting nothing back, deleting the key finds no row.
        assert await store.auth.delete_credential("old") is False
        assert await store.auth.delete_credential("jti:x") is False

        # Far in the future, the expiring one goes; the token without expiry never does.
        assert await store.auth.sweep_credentials(now + 7200) == 1
        assert await store.auth.list_credentials() == [token]

    run(make_store, body)


def test_a_credential_expiring_while_stored_disappears(make_store):
    """Expiry is judged at read time: a credential live when stored is gone once its time
    passes, before any sweep."""

    async def body(store: Store) -> None:
        short = cred("short", "alice", expires=time.time() + 0.3)
        await store.auth.put_credential(short)
        assert await store.auth.get_credential("short") == short
        assert await store.auth.list_credentials() == [short]
        await asyncio.sleep(0.4)
        assert await store.auth.get_credential("short") is None
        assert await store.auth.list_credentials() == []

    run(make_store, body)


def test_closed_store_refuses_auth_calls(make_store):
    """After close, auth calls raise StoreClosed rather than answer from stale state."""

    async def main() -> None:
        store = make_store()
        await store.start()
        await store.auth.put_user(user("alice"))
        await store.close()
        with pytest.raises(StoreClosed):
            await store.auth.get_user("alice")
        with pytest.raises(StoreClosed):
            await store.auth.put_credential(cred("k", "alice"))

    asyncio.run(main())


# -- SQLite: shared file, durability ------------------------------------------------------


def test_sqlite_sees_users_written_by_another_store_on_the_same_file(tmp_path):
    """A server's started store sees users and credentials that a second store on the same
    file (as `tidings users add` opens it) writes, including replacements and deletions:
    nothing is cached."""
    path = str(tmp_path / "shared.db")

    async def main() -> None:
        server = SQLiteStore(path, DEFAULT)
        await server.start()
        try:
            await server.auth.put_user(user("alice", publish=("a",)))
            assert await server.auth.get_user("bob") is None  # looked up before the CLI adds it
            assert [u.name for u in await server.auth.list_users()] == ["alice"]

            cli = SQLiteStore(path, DEFAULT)
            await cli.start()
            try:
                bob = user("bob")
                await cli.auth.put_user(bob)
                alice2 = user("alice", publish=("a", "b"))
                await cli.auth.put_user(alice2)
                token = cred("tok", "bob", kind=KIND_TOKEN, name="cli")
                await cli.auth.put_credential(token)
            finally:
                await cli.close()

            assert await server.auth.get_user("bob") == bob
            assert await server.auth.get_user("alice") == alice2
            assert [u.name for u in await server.auth.list_users()] == ["alice", "bob"]
            assert await server.auth.get_credential("tok") == token
            assert await server.auth.list_credentials("bob") == [token]

            # A deletion by the CLI is seen too, credentials included.
            cli = SQLiteStore(path, DEFAULT)
            await cli.start()
            try:
                assert await cli.auth.delete_user("bob") is True
            finally:
                await cli.close()
            assert await server.auth.get_user("bob") is None
            assert await server.auth.get_credential("tok") is None
        finally:
            await server.close()

    asyncio.run(main())


def test_sqlite_users_and_credentials_survive_reopening(tmp_path):
    """An acknowledged put_user / put_credential is on disk: a new store on the same file
    after close finds them."""
    path = str(tmp_path / "durable.db")
    alice = user("alice", publish=("news.*",))
    token = cred("tok", "alice", created=10.0, kind=KIND_TOKEN, name="ci")
    session = cred("sess", "alice", created=20.0, expires=time.time() + 3600)

    async def first_life() -> None:
        store = SQLiteStore(path, DEFAULT)
        await store.start()
        try:
            await store.auth.put_user(alice)
            await store.auth.put_credential(token)
            await store.auth.put_credential(session)
        finally:
            await store.close()

    async def second_life() -> None:
        store = SQLiteStore(path, DEFAULT)
        await store.start()
        try:
            assert await store.auth.get_user("alice") == alice
            assert await store.auth.list_users() == [alice]
            assert await store.auth.get_credential("tok") == token
            assert await store.auth.list_credentials("alice") == [token, session]
        finally:
            await store.close()

    asyncio.run(first_life())
    asyncio.run(second_life())
