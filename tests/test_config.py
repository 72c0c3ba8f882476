"""Settings: every bad value is refused when the model is built, in one line naming it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest

from meshroom.config import (
    ConfigError,
    Settings,
    env_name,
    flag_name,
    settings_table,
)
from meshroom.core import DuplicatePolicy

SECRET = "config-secret-" + "s" * 40


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No MESHROOM_* from the shell, and a working directory of our own."""
    for name in list(os.environ):
        if name.startswith("MESHROOM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def refused(environ: dict[str, str] | None = None, **overrides: Any) -> str:
    """The one-line ConfigError message for these values."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(environ or {}, **overrides)
    message = str(caught.value)
    assert "\n" not in message
    return message


# One case per kind of field and kind of mistake: (setting, bad value, what the line says).
BAD_VALUES = [
    # wrong type
    ("port", "abc", "not a whole number"),
    ("port", "80.5", "not a whole number"),
    ("db_pool_size", "ten", "not a whole number"),
    ("auth_timeout", "soon", "not a number"),
    ("rate_limit", "nan", "not a finite number"),
    ("demo", "maybe", "not true or false"),
    ("auto_migrate", "2", "not true or false"),
    ("http_port", "none", "not a port number or off"),
    # out of bounds
    ("port", "-1", "cannot be negative"),
    ("port", "65536", "must be at most 65535"),
    ("http_port", "65536", "must be at most 65535"),
    ("auth_timeout", "0", "must be positive"),
    ("close_timeout", "-1", "must be positive"),
    ("attendance_heartbeat", "0", "must be positive"),
    ("leave_retry_max", "0", "must be positive"),
    ("leave_flush_timeout", "-0.5", "must be positive"),
    ("turn_ttl", "0", "must be positive"),
    ("db_pool_size", "0", "must be at least 1"),
    ("outbox_size", "0", "must be at least 1"),
    ("max_message_bytes", "0", "must be at least 1"),
    ("rate_limit", "-1", "cannot be negative"),
    ("rate_burst", "-1", "cannot be negative"),
    ("max_room_peers", "-1", "cannot be negative"),
    ("max_connections", "-5", "cannot be negative"),
    ("socketio_max_sessions", "-1", "cannot be negative"),
    ("socketio_max_sessions", "lots", "not a whole number"),
    ("socketio_resume_memory", "-1", "cannot be negative"),
    ("socketio_resume_memory", "nan", "not a finite number"),
    ("heartbeat_interval", "-1", "cannot be negative"),
    ("resume_grace", "-1", "cannot be negative"),
    ("kick_rejoin_block", "-1", "cannot be negative"),
    ("shutdown_reconnect_after", "-1", "cannot be negative"),
    # not one of the choices
    ("duplicate_policy", "newest", "must be 'replace' or 'reject'"),
    ("log_level", "LOUD", "must be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ("jwt_algorithm", "none", "must be one of HS256, HS384, HS512"),
    # the cluster's
    ("node_id", "n" * 101, "must be 1-100 characters without '|'"),
    ("node_ttl", "0", "must be positive"),
    ("workers", "0", "must be at least 1"),
    ("workers", "65", "must be at most 64"),
]


@pytest.mark.parametrize(("name", "value", "problem"), BAD_VALUES)
def test_a_bad_variable_is_refused_naming_the_variable(name: str, value: str, problem: str):
    message = refused({env_name(name): value})
    assert message.startswith(f"{env_name(name)}={value}: ")
    assert problem in message


@pytest.mark.parametrize(("name", "value", "problem"), BAD_VALUES)
def test_a_bad_flag_is_refused_naming_the_flag(name: str, value: str, problem: str):
    # CLI flags and app.config values arrive as text, exactly like variables.
    message = refused(**{name: value})
    assert message.startswith(f"{flag_name(name)}={value}: ")
    assert problem in message


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"port": 80.5}, "--port=80.5: not a whole number"),
        ({"port": -1}, "--port=-1: cannot be negative"),
        ({"auth_timeout": 0}, "--auth-timeout=0: must be positive"),
        ({"demo": "maybe"}, "--demo=maybe: not true or false"),
        ({"duplicate_policy": "newest"}, "--duplicate-policy=newest: must be"),
        ({"host": 127}, "--host=127: not text"),
        ({"rate_limit": float("inf")}, "--rate-limit=inf: not a finite number"),
    ],
)
def test_typed_keyword_values_are_checked_too(values: dict[str, Any], problem: str):
    assert refused(**values).startswith(problem)


def test_construction_itself_fails_and_names_every_bad_setting():
    with pytest.raises(ConfigError) as caught:
        Settings(port="abc", rate_limit=-1)
    assert (
        str(caught.value) == "--port=abc: not a whole number; --rate-limit=-1: cannot be negative"
    )


def test_an_unknown_setting_is_refused():
    assert refused(rate_limt=5) == "--rate-limt: not a setting"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"heartbeat_interval": 5, "heartbeat_timeout": 0},
            "--heartbeat-timeout must be positive when --heartbeat-interval is on",
        ),
        (
            {"rate_limit": 10, "rate_burst": 0},
            "--rate-burst must be at least 1 when --rate-limit is on",
        ),
        ({"tls_cert": "cert.pem"}, "TLS needs both --tls-cert and --tls-key"),
        ({"tls_key": "key.pem"}, "TLS needs both --tls-cert and --tls-key"),
        (
            {"api_keys": "a-long-enough-api-key,short"},
            "--api-keys: each API key must be at least 16 characters long",
        ),
        ({"secret": "too-short"}, "--secret must be at least 32 bytes long"),
        (
            {"database_url": "postgres user:pw at db"},
            "--database-url: not a database URL "
            "(sqlite:///file.db or postgresql+psycopg://user@host/db)",
        ),
    ],
)
def test_rules_between_settings_are_checked_when_built(values: dict[str, Any], message: str):
    assert refused(**values) == message


def test_a_rule_names_settings_as_the_user_wrote_them():
    # The variable the user set, and the one they did not set, in the same spelling.
    assert (
        refused({"MESHROOM_HEARTBEAT_TIMEOUT": "0"})
        == "MESHROOM_HEARTBEAT_TIMEOUT must be positive when MESHROOM_HEARTBEAT_INTERVAL is on"
    )
    assert refused({"MESHROOM_TLS_KEY": "k.pem"}) == (
        "TLS needs both MESHROOM_TLS_CERT and MESHROOM_TLS_KEY"
    )


@pytest.mark.parametrize(
    "values",
    [
        {"heartbeat_interval": 0, "heartbeat_timeout": 0},  # heartbeats off
        {"rate_limit": 0, "rate_burst": 0},  # no rate limit
        {"tls_cert": "c.pem", "tls_key": "k.pem"},  # files are read when used
        {"api_keys": "a-long-enough-api-key, another-long-api-key"},
        {"secret": "x" * 32},
        {"jwt_algorithm": "RS256", "secret": "short"},  # the secret is not used for RS256
        {"port": 0, "http_port": 0, "kick_rejoin_block": 0},
        {"port": 65535, "http_port": 65535},
    ],
)
def test_edge_values_that_work_are_accepted(values: dict[str, Any]):
    Settings.from_env({}, **values)


def test_secrets_are_never_echoed():
    message = refused({"MESHROOM_API_KEYS": "tiny-secret-key"})
    assert "tiny-secret-key" not in message
    assert message.startswith("MESHROOM_API_KEYS: ")
    assert "hush" not in refused(secret="hush")


def test_a_value_with_odd_characters_stays_on_one_line():
    message = refused({"MESHROOM_PORT": "80\n81"})
    assert message == "MESHROOM_PORT='80\\n81': not a whole number"
    assert refused(port="eighty one") == "--port='eighty one': not a whole number"


# Where values come from


def test_flags_win_over_variables_which_win_over_defaults():
    environ = {"MESHROOM_PORT": "9000", "MESHROOM_RESUME_GRACE": "2.5"}
    settings = Settings.from_env(environ, port=9001, host=None)
    assert (settings.port, settings.resume_grace, settings.host) == (9001, 2.5, "127.0.0.1")


def test_app_config_strings_are_parsed_like_variables():
    # The Quart extension passes app.config values, which embedders often write as text.
    settings = Settings.from_env(
        {},
        port="9000",
        demo="0",
        auto_migrate="yes",
        rate_limit="12.5",
        duplicate_policy="reject",
        log_level="debug",
        http_port="OFF",
    )
    assert settings.port == 9000
    assert (settings.demo, settings.auto_migrate) == (False, True)
    assert settings.rate_limit == 12.5
    assert settings.duplicate_policy is DuplicatePolicy.REJECT
    assert settings.log_level == "DEBUG"
    assert settings.http_port is None


def test_an_empty_flag_variable_means_false():
    assert Settings.from_env({"MESHROOM_DEMO": ""}).demo is False


def test_settings_read_the_process_environment_and_nothing_else(monkeypatch, tmp_path):
    monkeypatch.setenv("MESHROOM_PORT", "9100")
    monkeypatch.setenv("PORT", "1")  # not ours
    monkeypatch.setenv("MESHROOM_NOT_A_SETTING", "x")  # not a setting: ignored
    (tmp_path / ".env").write_text("MESHROOM_RESUME_GRACE=1\nMESHROOM_HOST=0.0.0.0\n")
    settings = Settings()
    assert settings.port == 9100
    assert (settings.resume_grace, settings.host) == (15.0, "127.0.0.1")
    assert Settings.from_env().port == 9100
    assert Settings.from_env({}).port == 8765  # an explicit mapping replaces os.environ
    assert Settings(port=9200).port == 9200


def test_a_bad_process_variable_fails_construction(monkeypatch):
    monkeypatch.setenv("MESHROOM_RATE_LIMIT", "-1")
    with pytest.raises(ConfigError, match=r"^MESHROOM_RATE_LIMIT=-1: cannot be negative$"):
        Settings()
    # ... unless the value is given explicitly, which wins.
    assert Settings(rate_limit=3).rate_limit == 3


def test_settings_are_frozen():
    settings = Settings.from_env({})
    with pytest.raises(pydantic.ValidationError):
        settings.port = 1  # type: ignore[misc]


# http_port: None is off, 0 is any free port


@pytest.mark.parametrize(
    ("environ", "overrides", "expected"),
    [
        ({}, {}, 8080),
        ({"MESHROOM_HTTP_PORT": "off"}, {}, None),
        ({"MESHROOM_HTTP_PORT": "Off"}, {}, None),
        ({"MESHROOM_HTTP_PORT": "0"}, {}, 0),
        ({}, {"http_port": "off"}, None),
        ({}, {"http_port": 0}, 0),
        ({}, {"http_port": "8081"}, 8081),
        ({"MESHROOM_HTTP_PORT": "off"}, {"http_port": 8082}, 8082),
        # None from from_env's overrides means "not given" (an absent CLI flag).
        ({"MESHROOM_HTTP_PORT": "off"}, {"http_port": None}, None),
        ({}, {"http_port": None}, 8080),
    ],
)
def test_http_port_off_and_zero(environ, overrides, expected):
    assert Settings.from_env(environ, **overrides).http_port == expected


def test_http_port_none_when_built_directly():
    assert Settings(http_port=None).http_port is None


# The helpers other code uses


def test_hub_config_carries_the_settings():
    settings = Settings.from_env(
        {},
        duplicate_policy="reject",
        kick_rejoin_block="7.5",
        rate_burst=5,
        max_room_peers=3,
        turn_urls="turn:a, turn:b",
    )
    config = settings.hub_config()
    assert config.duplicate_policy is DuplicatePolicy.REJECT
    assert config.kick_rejoin_block == 7.5
    assert (config.rate_burst, config.max_room_peers) == (5, 3)
    assert config.ice.turn_urls == ("turn:a", "turn:b")
    assert Settings.from_env({}).hub_config().kick_rejoin_block == 60.0


def test_attendance_config():
    config = Settings.from_env({}, attendance_heartbeat=1, leave_retry_max=0.2).attendance_config()
    assert (config.heartbeat_interval, config.retry_max, config.retry_initial) == (1, 0.2, 0.2)


def test_origin_policy_and_no_tls():
    settings = Settings.from_env({}, allowed_origins="https://a.example, https://b.example")
    assert settings.ssl_context() is None
    assert settings.origin_policy() is not None


def test_token_keys_from_the_secret_or_a_created_file(tmp_path):
    assert Settings.from_env({}, secret=SECRET).token_keys(create_secret=False).verify_key == SECRET
    settings = Settings.from_env({}, secret_file=str(tmp_path / "s"))
    with pytest.raises(ConfigError, match=r"^no token secret: set MESHROOM_SECRET or create "):
        settings.token_keys(create_secret=False)
    created = settings.token_keys().verify_key
    assert (tmp_path / "s").stat().st_mode & 0o777 == 0o600
    assert settings.token_keys(create_secret=False).verify_key == created


@pytest.mark.parametrize(
    ("environ", "values", "message"),
    [
        ({}, {"jwt_algorithm": "RS256"}, "--jwt-algorithm=RS256 needs --jwt-public-key-file"),
        (
            {"MESHROOM_JWT_ALGORITHM": "ES256"},
            {},
            "MESHROOM_JWT_ALGORITHM=ES256 needs MESHROOM_JWT_PUBLIC_KEY_FILE",
        ),
        (
            {},
            {"jwt_algorithm": "RS256", "jwt_public_key_file": "missing.pem"},
            "cannot read the public key file missing.pem (--jwt-public-key-file): "
            "No such file or directory",
        ),
        (
            {"MESHROOM_SECRET_FILE": "."},
            {},
            "cannot read the token secret file . (MESHROOM_SECRET_FILE): ",
        ),
        ({}, {"secret_file": "short.secret"}, "short.secret (--secret-file): the JWT secret"),
    ],
)
def test_file_problems_are_one_line_naming_the_setting_when_used(
    tmp_path, environ, values, message
):
    (tmp_path / "short.secret").write_text("tiny\n")
    settings = Settings.from_env(environ, **values)
    with pytest.raises(ConfigError) as caught:
        settings.token_keys()
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_named_spells_a_setting_the_way_it_was_given():
    settings = Settings.from_env({"MESHROOM_PORT": "1", "MESHROOM_HOST": "::1"}, host="::2")
    assert settings.named("port") == "MESHROOM_PORT"
    assert settings.named("host") == "--host"  # the explicit value won
    assert settings.named("rate_limit") == "--rate-limit"  # a default


def test_api_keys_from_the_setting_or_the_file(tmp_path):
    keys = Settings.from_env({}, api_keys="a-long-enough-api-key, another-long-api-key")
    assert keys.api_key_list() == ("a-long-enough-api-key", "another-long-api-key")
    (tmp_path / "short").write_text("tiny\n")
    with pytest.raises(ConfigError, match=r"^the API key in short \(--api-key-file\) must be"):
        Settings.from_env({}, api_key_file="short").api_key_list()
    created = Settings.from_env({}).api_key_list()
    assert Settings.from_env({}).api_key_list(create=False) == created


def test_tls_files_are_named_when_missing(tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate")
    settings = Settings.from_env({}, tls_cert="cert.pem", tls_key="key.pem")
    with pytest.raises(ConfigError, match=r"^cannot read the TLS file key\.pem \(--tls-key\): "):
        settings.ssl_context()
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(ConfigError, match=r"^cannot use the TLS certificate and key: "):
        settings.ssl_context()


# The table


def test_names():
    assert (env_name("http_port"), flag_name("http_port")) == ("MESHROOM_HTTP_PORT", "--http-port")


def test_the_table_lists_every_setting_with_its_default_and_help():
    table = settings_table().splitlines()
    assert len(table) == 2 + len(Settings.model_fields)
    assert any(
        row.startswith("| `--demo`, `--no-demo` | `MESHROOM_DEMO` | `True` |") for row in table
    )
    assert any(
        row.startswith("| `--kick-rejoin-block` | `MESHROOM_KICK_REJOIN_BLOCK` | `60.0` |")
        for row in table
    )
    assert any("| `replace` |" in row for row in table)
    assert any("off = no HTTP listener, 0 = any free port" in row for row in table)


def test_python_m_meshroom_config_prints_the_table():
    result = subprocess.run(
        [sys.executable, "-m", "meshroom.config"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.rstrip("\n") == settings_table()


def test_a_bad_redis_url_is_refused_without_echoing_it():
    # It may hold a password (redis://:secret@host), like a database URL.
    message = refused({"MESHROOM_REDIS_URL": "secret@localhost:6379"})
    assert (
        message == "MESHROOM_REDIS_URL: not a Redis URL (redis://host:6379/0, rediss://, unix://)"
    )


def test_workers_need_a_cluster_and_fixed_ports():
    assert "--workers above 1 needs --redis-url" in refused(workers=2)
    message = refused(workers=2, redis_url="redis://127.0.0.1:6379/0", port=0)
    assert "needs fixed ports (--port, --http-port), not 0" in message


def test_settings_pass_to_a_worker_as_variables_unchanged():
    settings = Settings.from_env(
        {}, http_port="off", redis_url="redis://127.0.0.1:6379/0", demo=False, rate_limit=12.5
    )
    assert Settings.from_env(settings.environment()).model_dump() == settings.model_dump()
