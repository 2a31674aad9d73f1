"""The memory store's users and credentials, in dictionaries."""

from __future__ import annotations

import time

from tidings.server.principals import Credential, User
from tidings.server.stores.base import AuthStore
from tidings.server.stores.memory.core import MemoryCore

__all__ = ["MemoryAuth"]


class MemoryAuth(AuthStore):
    """Every AuthStore method."""

    def __init__(self, core: MemoryCore) -> None:
        self._core = core
        self._users: dict[str, User] = {}
        self._credentials: dict[str, Credential] = {}

    async def put_user(self, user: User) -> None:
        self._core.check()
        self._users[user.name] = user

    async def get_user(self, name: str) -> User | None:
        self._core.check()
        return self._users.get(name)

    async def list_users(self) -> list[User]:
        self._core.check()
        return [self._users[n] for n in sorted(self._users)]

    async def delete_user(self, name: str) -> bool:
        self._core.check()
        theirs = [k for k, c in self._credentials.items() if c.user == name]
        for key in theirs:
            del self._credentials[key]
        return self._users.pop(name, None) is not None

    async def put_credential(self, cred: Credential) -> None:
        self._core.check()
        self._credentials[cred.key] = cred

    async def get_credential(self, key: str) -> Credential | None:
        self._core.check()
        cred = self._credentials.get(key)
        return cred if cred is not None and cred.live(time.time()) else None

    async def list_credentials(self, user: str | None = None) -> list[Credential]:
        self._core.check()
        now = time.time()
        out = [
            c
            for c in self._credentials.values()
            if c.live(now) and (user is None or c.user == user)
        ]
        out.sort(key=lambda c: (c.created, c.key))
        return out

    async def delete_credential(self, key: str) -> bool:
        self._core.check()
        return self._credentials.pop(key, None) is not None

    async def live_credentials(self, keys: list[str], now: float) -> set[str]:
        self._core.check()
        creds = self._credentials
        return {k for k in keys if k in creds and creds[k].live(now)}

    async def sweep_credentials(self, now: float) -> int:
        self._core.check()
        gone = [k for k, c in self._credentials.items() if not c.live(now)]
        for key in gone:
            del self._credentials[key]
        return len(gone)
