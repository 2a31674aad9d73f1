"""The settings object on explicit environments: TIDINGS_* variables, overrides, the checks
made when it is built, and the views it derives (hosts, origins, loopback).

`from_env` is always given its environment here, so nothing depends on the process's.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

import tidings
from tidings.server import constants as C
from tidings.server.depth import DEPTH_CEILING
from tidings.server.settings import OTHER_ENV, Settings, env_name, known_env, unknown_env


def test_an_empty_environment_gives_the_defaults() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.port == C.DEFAULT_PORT
    assert settings.store == C.DEFAULT_STORE
    assert settings.sessions == "database"
    assert settings.require_auth is False


def test_each_field_is_read_from_its_tidings_variable_as_its_type() -> None:
    settings = Settings.from_env(
        {
            "TIDINGS_PORT": "9001",
            "TIDINGS_STORE": "memory://",
            "TIDINGS_MAX_AGE": "1.5",
            "TIDINGS_HEARTBEAT": "7",
            "TIDINGS_SESSIONS": "jwt",
            "TIDINGS_REQUIRE_AUTH": "yes",
            "TIDINGS_MAX_DEPTH": str(DEPTH_CEILING),
        }
    )
    assert settings.port == 9001
    assert settings.store == "memory://"
    assert settings.max_age == 1.5
    assert settings.heartbeat == 7.0
    assert isinstance(settings.heartbeat, float)
    assert settings.sessions == "jwt"
    assert settings.require_auth is True
    assert settings.max_depth == DEPTH_CEILING


# Fields whose value is one of a few words, or that need another field: a valid
# value other than the default, and the variables it needs besides its own.
OTHER_VALUE: dict[str, tuple[str, dict[str, str]]] = {
    "log_level": ("debug", {}),
    "log_format": ("json", {}),
    "ssl_keyfile": ("key.pem", {"TIDINGS_SSL_CERTFILE": "cert.pem"}),
    "forwarded_allow_ips": ("10.0.0.2", {}),
}


def test_every_field_has_a_variable_named_after_it() -> None:
    for field in dataclasses.fields(Settings):
        default = getattr(Settings(), field.name)
        extra: dict[str, str] = {}
        if field.name in OTHER_VALUE:
            raw, extra = OTHER_VALUE[field.name]
            expected: object = raw
        elif isinstance(default, bool):
            raw, expected = ("false", False) if default else ("true", True)
        elif isinstance(default, int | float):
            raw, expected = str(default + 1), default + 1
        else:
            raw, expected = "x-" + field.name, "x-" + field.name
        name = env_name(field.name)
        assert name == f"TIDINGS_{field.name.upper()}"
        got = Settings.from_env({name: raw, **extra})
        assert getattr(got, field.name) == expected, field.name
        assert name in known_env()


def test_the_serve_only_options_have_variables_too() -> None:
    settings = Settings.from_env(
        {
            "TIDINGS_ACCESS_LOG": "true",
            "TIDINGS_WORKERS": "3",
            "TIDINGS_SSL_CERTFILE": "/etc/tidings/cert.pem",
            "TIDINGS_SSL_KEYFILE": "/etc/tidings/key.pem",
            "TIDINGS_LOG_FORMAT": "json",
        }
    )
    assert settings.access_log is True
    assert settings.workers == 3
    assert settings.ssl_certfile == "/etc/tidings/cert.pem"
    assert settings.ssl_keyfile == "/etc/tidings/key.pem"
    assert settings.log_format == "json"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"log_level": "loud"}, "log_level 'loud': use one of critical, error, warning"),
        ({"log_format": "xml"}, "log_format 'xml': use text or json"),
        ({"workers": 0}, "workers must be at least 1, got 0"),
        ({"ssl_keyfile": "key.pem"}, "ssl_keyfile needs ssl_certfile"),
    ],
)
def test_log_workers_and_tls_settings_are_checked(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings(**values)  # type: ignore[arg-type]


def test_log_level_is_read_in_any_case() -> None:
    assert Settings(log_level="DEBUG").log_level == "DEBUG"


# -- unknown variables -------------------------------------------------------------------


def test_an_unknown_variable_is_named_with_the_known_one_it_resembles() -> None:
    warnings = unknown_env({"TIDINGS_PROT": "9000", "TIDINGS_ACESS_LOG": "1"})
    assert warnings == [
        "unknown environment variable TIDINGS_ACESS_LOG is ignored "
        "(did you mean TIDINGS_ACCESS_LOG?)",
        "unknown environment variable TIDINGS_PROT is ignored (did you mean TIDINGS_PORT?)",
    ]


def test_an_unknown_variable_like_no_known_one_is_named_alone() -> None:
    assert unknown_env({"TIDINGS_ZZZQX": "1"}) == [
        "unknown environment variable TIDINGS_ZZZQX is ignored"
    ]


def test_variables_read_elsewhere_and_other_programs_variables_are_not_reported() -> None:
    env = dict.fromkeys(OTHER_ENV, "x")
    env |= {f"TIDINGS_{f.name.upper()}": "x" for f in dataclasses.fields(Settings)}
    env |= {"PORT": "1", "tidings_prot": "2", "_TIDINGS_COMPLETE": "bash_source"}
    assert unknown_env(env) == []
    for name in ("TIDINGS_URL", "TIDINGS_TOKEN", "TIDINGS_JWT_SECRET", "TIDINGS_APP_JWT_KEY"):
        assert name in known_env()
    assert "TIDINGS_BRIDGES" in known_env()


def test_every_tidings_variable_named_in_the_source_is_known() -> None:
    # A variable some command reads, but missing from the list, would be reported as a typo.
    source = Path(tidings.__file__).parent
    named = {
        match
        for path in source.rglob("*.py")
        for match in re.findall(r"\bTIDINGS_[A-Z0-9_]*[A-Z0-9]", path.read_text())
    }
    assert named, "the source names no TIDINGS_ variable?"
    assert named - known_env() == set()


def test_variables_of_other_programs_and_empty_ones_are_ignored() -> None:
    settings = Settings.from_env(
        {"TIDINGS_PORT": "", "PORT": "1", "tidings_port": "2", "TIDINGS_NOT_A_FIELD": "3"}
    )
    assert settings == Settings()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True), ("true", True), ("YES", True), (" On ", True),
        ("0", False), ("false", False), ("No", False), ("off", False),
    ],
)  # fmt: skip
def test_a_boolean_variable_takes_the_usual_spellings(raw: str, expected: bool) -> None:
    assert Settings.from_env({"TIDINGS_ALLOW_ANONYMOUS": raw}).allow_anonymous is expected


@pytest.mark.parametrize(
    ("name", "raw", "kind"),
    [
        ("TIDINGS_PORT", "eighty", "int"),
        ("TIDINGS_PORT", "80.5", "int"),
        ("TIDINGS_MAX_AGE", "a day", "float"),
        ("TIDINGS_REQUIRE_AUTH", "maybe", "bool"),
    ],
)
def test_a_variable_that_does_not_parse_names_itself_and_its_type(
    name: str, raw: str, kind: str
) -> None:
    with pytest.raises(ValueError, match=f"{name}={raw!r} is not a valid {kind}"):
        Settings.from_env({name: raw})


def test_explicit_overrides_win_over_the_environment_and_none_is_no_override() -> None:
    env = {"TIDINGS_PORT": "9001", "TIDINGS_STORE": "memory://"}
    settings = Settings.from_env(env, port=9002, store=None)
    assert settings.port == 9002
    assert settings.store == "memory://"


def test_from_env_reads_the_process_environment_when_given_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TIDINGS_PORT", "9123")
    assert Settings.from_env().port == 9123


# -- checks made when the settings are built ---------------------------------------------


def test_max_depth_above_the_ceiling_is_refused_with_the_ceiling_named() -> None:
    with pytest.raises(ValueError, match=f"at most {DEPTH_CEILING}"):
        Settings(max_depth=DEPTH_CEILING + 1)
    with pytest.raises(ValueError, match=f"at most {DEPTH_CEILING}"):
        Settings.from_env({"TIDINGS_MAX_DEPTH": str(DEPTH_CEILING + 1)})


@pytest.mark.parametrize(
    "name", ["max_depth", "max_header_bytes", "max_stream_channels", "login_queue"]
)
def test_limits_that_must_be_at_least_one_refuse_zero(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name} must be at least 1, got 0"):
        Settings(**{name: 0})
    assert getattr(Settings(**{name: 1}), name) == 1


@pytest.mark.parametrize(
    "name",
    [
        "max_connections",
        "max_connections_per_address",
        "login_rate_per_address",
        "login_failures_per_account",
    ],
)
def test_caps_where_zero_means_none_refuse_negatives(name: str) -> None:
    assert getattr(Settings(**{name: 0}), name) == 0
    with pytest.raises(ValueError, match=rf"{name} must be 0 \(no cap\) or more, got -1"):
        Settings(**{name: -1})


@pytest.mark.parametrize("name", ["header_timeout", "body_timeout", "keep_alive_timeout"])
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_timeouts_must_be_positive(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{name} must be a positive number of seconds"):
        Settings(**{name: value})
    assert getattr(Settings(**{name: 0.01}), name) == 0.01


def test_a_bad_value_from_the_environment_is_refused_like_a_bad_argument() -> None:
    with pytest.raises(ValueError, match="login_queue must be at least 1"):
        Settings.from_env({"TIDINGS_LOGIN_QUEUE": "0"})


# -- derived views -----------------------------------------------------------------------


def test_allowed_hosts_are_split_trimmed_and_lower_cased() -> None:
    settings = Settings(allowed_hosts=" App.Internal , ,proxy.local,")
    assert settings.hosts == ("app.internal", "proxy.local")
    assert Settings().hosts == ()


def test_cors_origins_are_split_and_lose_a_trailing_slash() -> None:
    settings = Settings(cors_origins="https://app.example/, http://localhost:3000,,")
    assert settings.origins == ("https://app.example", "http://localhost:3000")
    assert Settings().origins == ()


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.5", False),
        ("example.com", False),
        ("localhost.evil.example", False),
    ],
)
def test_loopback_is_true_only_for_loopback_addresses_and_localhost(
    host: str, loopback: bool
) -> None:
    assert Settings(host=host).loopback is loopback


def test_the_default_host_is_loopback() -> None:
    assert Settings().loopback


@pytest.mark.parametrize("value", ["", "*", "127.0.0.1", "127.0.0.1, 10.0.0.0/8", "::1,fd00::/8"])
def test_trusted_proxies_are_addresses_networks_or_a_lone_star(value: str) -> None:
    assert Settings(forwarded_allow_ips=value).forwarded_allow_ips == value


@pytest.mark.parametrize("value", ["proxy.internal", "10.0.0.1,*", "10.0.0.300"])
def test_a_trusted_proxy_that_is_no_address_is_refused(value: str) -> None:
    """uvicorn would take it as a name that never matches: the proxy would not be trusted."""
    with pytest.raises(ValueError, match="forwarded_allow_ips"):
        Settings(forwarded_allow_ips=value)
