"""Who may do what: users, their permissions, stored credentials, and pattern matching.

A permission pattern is a glob over channel names or job types (`news.*`, `*`,
`user.{sub}.*`); `{sub}` stands for the principal's own name. Everything here is pure
data and matching: the store keeps it, tidings.server.auth decides with it.
"""

from __future__ import annotations

import fnmatch
import functools
import re

import msgspec

__all__ = [
    "ANONYMOUS",
    "KIND_REVOKED",
    "KIND_SESSION",
    "KIND_TOKEN",
    "Credential",
    "Permissions",
    "Principal",
    "User",
    "pattern_allows",
]

KIND_SESSION = "session"  # made by POST /v1/auth/login (sessions=database)
KIND_TOKEN = "token"  # noqa: S105 - a kind name, not a secret: an API token
KIND_REVOKED = "revoked"  # a logged-out JWT's jti (sessions=jwt), kept until it expires

# No '.': it separates channel-name segments, and `user.{sub}.*` must not reach the
# channels of a user whose name extends another's (`bob` vs `bob.evil`).
_NAME = re.compile(r"[A-Za-z0-9_@-]{1,64}")


class Permissions(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Patterns a principal may publish to / subscribe to, job types it may submit / work."""

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    submit: tuple[str, ...] = ()
    work: tuple[str, ...] = ()
    admin: bool = False

    def merged(self, other: Permissions) -> Permissions:
        """Both sets of grants (for `tidings users grant`)."""

        def union(a: tuple[str, ...], b: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(dict.fromkeys((*a, *b)))

        return Permissions(
            union(self.publish, other.publish),
            union(self.subscribe, other.subscribe),
            union(self.submit, other.submit),
            union(self.work, other.work),
            self.admin or other.admin,
        )

    def to_wire(self) -> dict[str, object]:
        return {
            "publish": list(self.publish),
            "subscribe": list(self.subscribe),
            "submit": list(self.submit),
            "work": list(self.work),
            "admin": self.admin,
        }


ALL = Permissions(("*",), ("*",), ("*",), ("*",), admin=True)


class User(msgspec.Struct, frozen=True):
    """A stored user: `password_hash` is argon2 (None: no password login, tokens only)."""

    name: str
    password_hash: str | None
    permissions: Permissions
    created: float

    @staticmethod
    def check_name(name: str) -> str:
        """`name`, or ValueError saying what a user name may hold."""
        if not _NAME.fullmatch(name):
            raise ValueError(
                f"user name {name!r}: use 1-64 characters of A-Z a-z 0-9 _ @ - (no '.')"
            )
        return name


class Credential(msgspec.Struct, frozen=True):
    """A stored credential, keyed by the SHA-256 (hex) of its secret, never the secret.

    `kind` is KIND_SESSION, KIND_TOKEN or KIND_REVOKED (then `key` is `jti:<jti>`).
    `expires` is a Unix time, or None for a token that does not expire.
    """

    key: str
    kind: str
    user: str
    created: float
    expires: float | None = None
    name: str = ""

    def live(self, now: float) -> bool:
        return self.expires is None or self.expires > now


class Principal(msgspec.Struct, frozen=True):
    """Who a request acts as.

    `session` names the credential that authenticated it (`session:<key>`, `jwt:<jti>`,
    `token:<key>`, `app:<sub>`), so open streams can be ended when it is revoked; None for
    anonymous access.
    """

    name: str
    permissions: Permissions
    session: str | None = None
    expires: float | None = None
    via_cookie: bool = False

    def may_follow_job(self, submitted_by: str | None, job_type: str) -> bool:
        """A job (and its channel `job.{id}`) is readable by its submitter, by those allowed
        to work its type, and by admins."""
        return (
            self.permissions.admin
            or (submitted_by is not None and submitted_by == self.name)
            or self.may("work", job_type)
        )

    def may(self, action: str, target: str) -> bool:
        """True when this principal may `action` (publish/subscribe/submit/work) `target`."""
        perms = self.permissions
        if perms.admin:
            return True
        patterns: tuple[str, ...] = getattr(perms, action)
        return any(pattern_allows(p, target, self.name) for p in patterns)

    @property
    def admin(self) -> bool:
        return self.permissions.admin


ANONYMOUS = Principal("anonymous", ALL)


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern))


def pattern_allows(pattern: str, target: str, sub: str) -> bool:
    """True when glob `pattern` (with `{sub}` = the principal's name) matches `target`."""
    if "{sub}" in pattern:
        # User names hold no glob characters (User.check_name), so this cannot widen it.
        pattern = pattern.replace("{sub}", sub)
    return _compiled(pattern).match(target) is not None
