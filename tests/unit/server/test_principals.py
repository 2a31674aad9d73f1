"""Who may do what, as plain values: permission patterns, grants, user names, credentials
and the principal's checks in tidings.server.principals.

The same rules seen through a running server are in tests/e2e/auth/.
"""

from __future__ import annotations

import msgspec
import pytest

from tidings.server.principals import (
    ANONYMOUS,
    Credential,
    Permissions,
    Principal,
    User,
    pattern_allows,
)

NOW = 1_000.0


def principal(name: str = "alice", **grants: object) -> Principal:
    return Principal(name, Permissions(**grants))  # type: ignore[arg-type]


# -- pattern_allows ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "target", "allowed"),
    [
        ("news.*", "news.a", True),
        ("news.*", "news.a.b", True),  # `*` crosses dots
        ("news.*", "news.", True),
        ("news.*", "news", False),
        ("news.*", "newsroom.a", False),
        ("news.*", "other.news.a", False),  # anchored at the start
        ("news.*", "News.a", False),  # case matters
        ("*", "anything.at.all", True),
        ("news.a", "news.a", True),
        ("news.a", "news.ab", False),  # anchored at the end
        ("news.?", "news.b", True),
        ("news.?", "news.bb", False),
        ("news.[ab]", "news.b", True),
        ("news.[ab]", "news.c", False),
        ("news.a", "news-a", False),  # '.' is a dot, not any character
    ],
)
def test_a_pattern_is_a_glob_over_the_whole_name(pattern: str, target: str, allowed: bool) -> None:
    assert pattern_allows(pattern, target, "alice") is allowed


def test_sub_in_a_pattern_stands_for_the_principals_own_name() -> None:
    assert pattern_allows("user.{sub}.*", "user.alice.inbox", "alice")
    assert not pattern_allows("user.{sub}.*", "user.bob.inbox", "alice")
    assert not pattern_allows("user.{sub}.*", "user.alice", "alice")
    assert not pattern_allows("user.{sub}.*", "user.alicex.inbox", "alice")
    assert pattern_allows("{sub}", "bob", "bob")
    assert pattern_allows("inbox.{sub}.{sub}", "inbox.bob.bob", "bob")


# -- User names --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["alice", "svc-1", "a_b", "me@example", "A" * 64, "0"])
def test_a_user_name_of_letters_digits_and_a_few_marks_is_kept(name: str) -> None:
    assert User.check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "A" * 65, "bob.evil", "bob*", "b?b", "[ab]", "a b", "a/b", "é", "{sub}", "bob\n"],
)
def test_a_user_name_that_could_widen_a_pattern_or_a_path_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"no '\.'"):
        User.check_name(name)


# -- Permissions -------------------------------------------------------------------------


def test_merged_grants_hold_both_sets_once_each_in_order() -> None:
    mine = Permissions(publish=("news.*",), subscribe=("news.*",), work=("email",))
    more = Permissions(publish=("other.*", "news.*"), submit=("report",), admin=False)
    both = mine.merged(more)
    assert both.publish == ("news.*", "other.*")
    assert both.subscribe == ("news.*",)
    assert both.submit == ("report",)
    assert both.work == ("email",)
    assert both.admin is False
    assert mine.merged(Permissions(admin=True)).admin is True
    assert Permissions(admin=True).merged(mine).admin is True


def test_permissions_on_the_wire_are_lists_and_read_back_the_same() -> None:
    perms = Permissions(publish=("a.*",), subscribe=("b.*", "c"), admin=True)
    wire = perms.to_wire()
    assert wire == {
        "publish": ["a.*"],
        "subscribe": ["b.*", "c"],
        "submit": [],
        "work": [],
        "admin": True,
    }
    assert msgspec.convert(wire, Permissions) == perms


def test_permissions_with_an_unknown_field_are_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="publsh"):
        msgspec.json.decode(b'{"publsh": ["*"]}', type=Permissions)


def test_no_grant_means_nothing_is_allowed() -> None:
    nobody = principal()
    for action in ("publish", "subscribe", "submit", "work"):
        assert not nobody.may(action, "anything")
    assert not nobody.admin


# -- Principal ---------------------------------------------------------------------------


def test_each_action_is_checked_against_its_own_grants() -> None:
    alice = principal(publish=("news.*",), subscribe=("feed.*",), submit=("report",))
    assert alice.may("publish", "news.a")
    assert not alice.may("subscribe", "news.a")
    assert alice.may("subscribe", "feed.a")
    assert not alice.may("publish", "feed.a")
    assert alice.may("submit", "report")
    assert not alice.may("work", "report")
    assert not alice.may("submit", "report.big")


def test_any_matching_pattern_of_several_allows() -> None:
    bob = principal("bob", subscribe=("other.*", "user.{sub}.*"))
    assert bob.may("subscribe", "other.x")
    assert bob.may("subscribe", "user.bob.inbox")
    assert not bob.may("subscribe", "user.alice.inbox")


def test_an_admin_may_do_everything_without_a_pattern() -> None:
    root = principal("root", admin=True)
    assert root.admin
    for action in ("publish", "subscribe", "submit", "work"):
        assert root.may(action, "any.thing")
    assert root.may_follow_job("someone-else", "secret")


def test_the_anonymous_principal_of_an_open_server_may_do_everything() -> None:
    assert ANONYMOUS.admin
    assert ANONYMOUS.session is None
    assert ANONYMOUS.may("publish", "x")
    assert ANONYMOUS.may_follow_job(None, "t")


def test_a_job_is_followed_by_its_submitter_and_by_those_who_work_its_type() -> None:
    alice = principal("alice", subscribe=("*",))
    assert alice.may_follow_job("alice", "report")
    # A subscribe grant of everything reads no one else's job.
    assert not alice.may_follow_job("bob", "report")
    assert not alice.may_follow_job(None, "report")
    worker = principal("w", work=("report.*",))
    assert worker.may_follow_job("bob", "report.pdf")
    assert not worker.may_follow_job("bob", "email")


def test_an_anonymous_submission_belongs_to_no_named_principal() -> None:
    anonymous_name = principal("anonymous")
    assert not anonymous_name.may_follow_job(None, "report")


# -- Credential --------------------------------------------------------------------------


def test_a_credential_lives_until_its_expiry_and_a_token_without_one_forever() -> None:
    session = Credential("k1", "session", "alice", created=NOW, expires=NOW + 60)
    assert session.live(NOW)
    assert session.live(NOW + 59.9)
    assert not session.live(NOW + 60)
    assert not session.live(NOW + 61)
    token = Credential("k2", "token", "alice", created=NOW)
    assert token.live(NOW + 10**9)
