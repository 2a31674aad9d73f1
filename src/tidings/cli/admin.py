"""`tidings users …` and `tidings tokens …`: principals, managed on the store directly.

These commands open the store themselves (the server may be running: SQLite's WAL lets
both write, and they do not take the lock that keeps a second server off the file), so
they work before the first server start and need no admin session.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from tidings.cli.common import JsonOption, fail, print_json, print_table, table_time
from tidings.protocol.codecs import format_time
from tidings.server import constants as C
from tidings.server.auth import hash_password, new_api_token, token_key
from tidings.server.principals import KIND_TOKEN, Credential, Permissions, User
from tidings.server.stores import Retention, Store, open_store

__all__ = ["tokens_app", "users_app"]

T = TypeVar("T")

users_app = typer.Typer(
    name="users", help="Users and their permissions.", no_args_is_help=True, rich_markup_mode=None
)
tokens_app = typer.Typer(
    name="tokens", help="API tokens (stored hashed).", no_args_is_help=True, rich_markup_mode=None
)


StoreOption = Annotated[
    str,
    typer.Option("--store", envvar="TIDINGS_STORE", help="Store URL, as given to serve."),
]
PublishOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--publish", help="Channel pattern it may publish to (repeatable). Default: none."
    ),
]
SubscribeOpt = Annotated[
    list[str] | None,
    typer.Option("--subscribe", help="Channel pattern it may read (repeatable). Default: none."),
]
SubmitOpt = Annotated[
    list[str] | None,
    typer.Option("--submit", help="Job type it may submit (repeatable). Default: none."),
]
WorkOpt = Annotated[
    list[str] | None,
    typer.Option("--work", help="Job type it may work (repeatable). Default: none."),
]
AdminOpt = Annotated[
    bool, typer.Option("--admin", help="May administer users and channels. Default: off.")
]


def _run(command: str, url: str, fn: Callable[[Store], Awaitable[T]]) -> T:
    if url.startswith("memory:"):
        fail(
            command,
            "memory:// keeps nothing after this command ends: pass the server's store with "
            "--store or TIDINGS_STORE (e.g. sqlite:///var/lib/tidings/tidings.db)",
            2,
        )

    async def go() -> T:
        # Without the server lock: these few writes go beside a running server's, and
        # SQLite's own locking orders them.
        retention = Retention(C.DEFAULT_MAX_MESSAGES, C.DEFAULT_MAX_AGE)
        store = open_store(url, retention, exclusive=False)
        await store.start()
        try:
            return await fn(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except ValueError as exc:
        fail(command, str(exc), 2)


def _perms(
    publish: list[str] | None,
    subscribe: list[str] | None,
    submit: list[str] | None,
    work: list[str] | None,
    admin: bool,
) -> Permissions:
    return Permissions(
        tuple(publish or ()), tuple(subscribe or ()), tuple(submit or ()), tuple(work or ()), admin
    )


def _check_name(command: str, name: str) -> str:
    try:
        return User.check_name(name)
    except ValueError as exc:
        fail(command, str(exc), 2)


@users_app.command(
    "add",
    epilog="""\b
Examples:
  tidings users add app --store sqlite:///tidings.db --publish 'news.*' --submit transcode
  tidings users add worker1 --store sqlite:///tidings.db --work transcode
  echo 'a long passphrase' | tidings users add ann --store sqlite:///tidings.db \\
      --password-stdin --admin""",
)
def users_add(
    name: Annotated[str, typer.Argument(help="User name.")],
    store: StoreOption,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin",
            help="Read the password from standard input. Default: off (no password: the "
            "user signs in with API tokens only).",
        ),
    ] = False,
    publish: PublishOpt = None,
    subscribe: SubscribeOpt = None,
    submit: SubmitOpt = None,
    work: WorkOpt = None,
    admin: AdminOpt = False,
) -> None:
    """Add (or replace) a user. Without --password-stdin it can only use API tokens."""
    _check_name("users add", name)
    password_hash = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if len(password) < 8:
            fail("users add", "the password must be at least 8 characters", 2)
        password_hash = hash_password(password)
    user = User(name, password_hash, _perms(publish, subscribe, submit, work, admin), time.time())
    _run("users add", store, lambda s: s.auth.put_user(user))
    typer.echo(f"user {name} saved")


@users_app.command(
    "grant",
    epilog="""\b
Examples:
  tidings users grant app --store sqlite:///tidings.db --subscribe 'orders.*'
  tidings users grant ann --store sqlite:///tidings.db --admin""",
)
def users_grant(
    name: Annotated[str, typer.Argument(help="User name.")],
    store: StoreOption,
    publish: PublishOpt = None,
    subscribe: SubscribeOpt = None,
    submit: SubmitOpt = None,
    work: WorkOpt = None,
    admin: AdminOpt = False,
) -> None:
    """Add permissions to a user."""

    async def grant(s: Store) -> bool:
        user = await s.auth.get_user(name)
        if user is None:
            return False
        more = _perms(publish, subscribe, submit, work, admin)
        await s.auth.put_user(
            User(user.name, user.password_hash, user.permissions.merged(more), user.created)
        )
        return True

    if not _run("users grant", store, grant):
        fail("users grant", f"no user {name!r}: add it with `tidings users add {name} --store …`")
    typer.echo(f"user {name} updated")


@users_app.command(
    "remove", epilog="\b\nExamples:\n  tidings users remove app --store sqlite:///tidings.db"
)
def users_remove(
    name: Annotated[str, typer.Argument(help="User name.")], store: StoreOption
) -> None:
    """Remove a user and all their sessions and tokens."""
    if not _run("users remove", store, lambda s: s.auth.delete_user(name)):
        fail("users remove", f"no user {name!r} (`tidings users list` shows them)")
    typer.echo(f"user {name} removed")


@users_app.command(
    "list",
    epilog="""\b
Examples:
  tidings users list --store sqlite:///tidings.db
  tidings users list --store sqlite:///tidings.db --json | jq -r '.[].name'""",
)
def users_list(store: StoreOption, json_out: JsonOption = False) -> None:
    """Users and their permissions, as a table or as JSON."""
    users = _run("users list", store, lambda s: s.auth.list_users())
    if json_out:
        print_json(
            [
                {
                    "name": u.name,
                    "password": u.password_hash is not None,
                    "publish": list(u.permissions.publish),
                    "subscribe": list(u.permissions.subscribe),
                    "submit": list(u.permissions.submit),
                    "work": list(u.permissions.work),
                    "admin": u.permissions.admin,
                    "created": format_time(u.created),
                }
                for u in users
            ]
        )
        return
    table = Table("user", "password", "publish", "subscribe", "submit", "work", "admin")
    for u in users:
        p = u.permissions
        table.add_row(
            u.name,
            "yes" if u.password_hash else "no",
            " ".join(p.publish),
            " ".join(p.subscribe),
            " ".join(p.submit),
            " ".join(p.work),
            "yes" if p.admin else "",
        )
    print_table(table)


@tokens_app.command(
    "create",
    epilog="""\b
Examples:
  tidings tokens create app --store sqlite:///tidings.db --name ci
  export TIDINGS_TOKEN=$(tidings tokens create worker1 --store sqlite:///tidings.db)""",
)
def tokens_create(
    user: Annotated[str, typer.Argument(help="The user the token acts as.")],
    store: StoreOption,
    name: Annotated[str, typer.Option(help="A label for the token. Default: none.")] = "",
    expires: Annotated[
        float | None, typer.Option(help="Seconds until it expires. Default: never.")
    ] = None,
) -> None:
    """Make an API token; prints it once (only its hash is stored)."""
    secret = new_api_token()
    now = time.time()
    cred = Credential(
        token_key(secret), KIND_TOKEN, user, now, None if expires is None else now + expires, name
    )

    async def create(s: Store) -> bool:
        if await s.auth.get_user(user) is None:
            return False
        await s.auth.put_credential(cred)
        return True

    if not _run("tokens create", store, create):
        fail(
            "tokens create",
            f"no user {user!r}: add it first with `tidings users add {user} --store …`",
        )
    typer.echo(secret)


@tokens_app.command(
    "list",
    epilog="""\b
Examples:
  tidings tokens list --store sqlite:///tidings.db
  tidings tokens list --store sqlite:///tidings.db --user app --json""",
)
def tokens_list(
    store: StoreOption,
    user: Annotated[str | None, typer.Option(help="Only this user's. Default: all users'.")] = None,
    json_out: JsonOption = False,
) -> None:
    """API tokens and login sessions (by key prefix; secrets are never stored)."""
    creds: list[Any] = _run("tokens list", store, lambda s: s.auth.list_credentials(user))
    if json_out:
        print_json(
            [
                {
                    "key": c.key[:12],
                    "kind": c.kind,
                    "user": c.user,
                    "name": c.name,
                    "created": format_time(c.created),
                    "expires": None if c.expires is None else format_time(c.expires),
                }
                for c in creds
            ]
        )
        return
    table = Table("key", "kind", "user", "name", "created", "expires")
    for c in creds:
        table.add_row(
            c.key[:12],
            c.kind,
            c.user,
            c.name,
            table_time(c.created),
            "never" if c.expires is None else table_time(c.expires),
        )
    print_table(table)


@tokens_app.command(
    "revoke",
    epilog="\b\nExamples:\n  tidings tokens revoke 3f9a1c0b7d2e --store sqlite:///tidings.db",
)
def tokens_revoke(
    key: Annotated[str, typer.Argument(help="Key prefix from `tidings tokens list`.")],
    store: StoreOption,
) -> None:
    """Revoke a token or session: requests with it get 401, its open streams end."""

    async def revoke(s: Store) -> list[str]:
        found = [c.key for c in await s.auth.list_credentials() if c.key.startswith(key)]
        if len(found) == 1:
            await s.auth.delete_credential(found[0])
        return found

    if len(key) < 6:
        fail("tokens revoke", "give at least 6 characters of the key", 2)
    found = _run("tokens revoke", store, revoke)
    if len(found) != 1:
        fail(
            "tokens revoke",
            f"{'no' if not found else 'more than one'} credential matches {key!r}: "
            "`tidings tokens list` shows their keys",
        )
    typer.echo(f"revoked {found[0][:12]}")
