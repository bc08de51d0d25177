from dataclasses import fields

import pytest

from webhook_app.config import RateLimit, Settings, bundled_policy_path, parse_rate_limits
from webhook_app.errors import ConfigError


def test_defaults_are_embedded_shadow_sqlite_bundled_policy():
    s = Settings.from_env({})
    assert s.mode == "shadow" and s.shadow
    assert s.database_url.startswith("sqlite:///")
    assert s.policy_path == bundled_policy_path() and s.policy_path.is_file()
    assert s.cl_auth_url == "https://auth.commercelayer.io/oauth/token"
    assert s.max_body_bytes == 1024 * 1024
    assert s.cl_rate_limits == (RateLimit(100, 60), RateLimit(25, 10))


def test_credentials_switch_default_to_enforce():
    env = {"CL_CLIENT_ID": "id", "CL_CLIENT_SECRET": "sec", "CL_API_BASE": "https://x.commercelayer.io/"}
    s = Settings.from_env(env)
    assert s.mode == "enforce" and s.cl_api_base == "https://x.commercelayer.io"
    assert Settings.from_env({**env, "WEBHOOK_APP_MODE": "shadow"}).mode == "shadow"


def test_enforce_without_credentials_fails_naming_what_is_missing():
    with pytest.raises(ConfigError, match="CL_CLIENT_SECRET"):
        Settings.from_env({"WEBHOOK_APP_MODE": "enforce", "CL_CLIENT_ID": "id", "CL_API_BASE": "https://a.b"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBHOOK_APP_MAX_BODY_BYTES", "-1"),
        ("WEBHOOK_APP_MAX_BODY_BYTES", "lots"),
        ("WEBHOOK_APP_MODE", "yolo"),
        ("CL_API_BASE", "ftp://x"),
        ("CL_RATE_LIMITS", "100 per minute"),
        ("WEBHOOK_APP_DATABASE_URL", "mysql://x"),
        ("WEBHOOK_APP_POLICY", "/nonexistent/policy.toml"),
        ("CL_READ_TIMEOUT", "0"),
    ],
)
def test_malformed_values_name_the_variable(name, value):
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({name: value})
    assert str(exc.value).startswith(name)


def test_secret_values_are_never_echoed_in_errors():
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"CL_WEBHOOK_SECRETS": "a:supersecret1,,"})
    assert "supersecret1" not in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"WEBHOOK_APP_DATABASE_URL": "mysql://u:pa55word@h/db"})
    assert "pa55word" not in str(exc.value)
    assert "pa55" not in repr(Settings.from_env({"CL_CLIENT_SECRET": "pa55word-abc"}))


def test_webhook_secrets_parsed_with_labels():
    s = Settings.from_env({"CL_WEBHOOK_SECRETS": "prod:aaa-0123456789abcdef,staging:bbb-0123456789abcdef"})
    assert [x.label for x in s.webhook_secrets] == ["prod", "staging"]


def test_rate_limits_parse():
    assert parse_rate_limits("200/60, 50/10s") == (RateLimit(200, 60), RateLimit(50, 10))
    assert parse_rate_limits("") == ()
    with pytest.raises(ValueError, match="is not COUNT/SECONDS"):
        parse_rate_limits("0/60")


def test_db_timeout_and_lease_must_outlive_a_call():
    assert Settings.from_env({"WEBHOOK_APP_DB_TIMEOUT": "1.5"}).db_timeout == 1.5
    with pytest.raises(ConfigError, match="WEBHOOK_APP_LEASE_SECONDS"):
        Settings.from_env({"WEBHOOK_APP_LEASE_SECONDS": "5", "CL_READ_TIMEOUT": "10"})


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (
            "WEBHOOK_APP_MAX_BODY_BYTES",
            "abc",
            "WEBHOOK_APP_MAX_BODY_BYTES: must be a whole number greater than zero (got 'abc')",
        ),
        (
            "WEBHOOK_APP_MAX_BODY_BYTES",
            "1.5",
            "WEBHOOK_APP_MAX_BODY_BYTES: must be a whole number greater than zero (got '1.5')",
        ),
        ("CL_READ_TIMEOUT", "soon", "CL_READ_TIMEOUT: must be a number greater than zero (got 'soon')"),
        ("CL_READ_TIMEOUT", "nan", "CL_READ_TIMEOUT: must be a number greater than zero (got 'nan')"),
        (
            "WEBHOOK_APP_FORWARDED_HOPS",
            "one",
            "WEBHOOK_APP_FORWARDED_HOPS: must be a whole number of zero or more (got 'one')",
        ),
    ],
)
def test_a_malformed_number_says_what_is_expected_and_shows_the_value_once(name, value, expected):
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({name: value})
    assert str(exc.value) == expected


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WEBHOOK_APP_MODE": "enforce"}, "WEBHOOK_APP_MODE"),
        ({"WEBHOOK_APP_LEASE_SECONDS": "5"}, "WEBHOOK_APP_LEASE_SECONDS"),
        ({"WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL": "0.5"}, "WEBHOOK_APP_CIRCUIT_CHECK_INTERVAL"),
        (
            {"WEBHOOK_APP_RETAIN_RECORDS_DAYS": "1", "WEBHOOK_APP_RETAIN_BODIES_DAYS": "2"},
            "WEBHOOK_APP_RETAIN_RECORDS_DAYS",
        ),
        (
            {"WEBHOOK_APP_FRONT_BUFFER_BYTES": "10", "WEBHOOK_APP_MAX_BODY_BYTES": "100"},
            "WEBHOOK_APP_FRONT_BUFFER_BYTES",
        ),
        ({"WEBHOOK_APP_TRUSTED_PROXIES": "10.0.0.1"}, "WEBHOOK_APP_TRUSTED_PROXIES"),
        (
            {"WEBHOOK_APP_ALLOWED_SOURCES": "127.0.0.1", "WEBHOOK_APP_FORWARDED_HOPS": "1"},
            "WEBHOOK_APP_ALLOWED_SOURCES",
        ),
        (
            {"WEBHOOK_APP_RETRY_BASE_SECONDS": "10", "WEBHOOK_APP_RETRY_MAX_SECONDS": "1"},
            "WEBHOOK_APP_RETRY_MAX_SECONDS",
        ),
    ],
)
def test_settings_made_in_code_are_checked_as_those_read_from_the_environment(env, variable):
    """The cross-field checks run however settings are made: `Settings(...)` and `with_overrides`
    refuse what `from_env` refuses, with the same ConfigError."""
    converters = {f.metadata["env"]: (f.name, f.metadata["convert"]) for f in fields(Settings)}
    changes = {converters[k][0]: converters[k][1](v) for k, v in env.items()}
    with pytest.raises(ConfigError) as from_env:
        Settings.from_env(env)
    with pytest.raises(ConfigError) as made:
        Settings(**changes)
    with pytest.raises(ConfigError) as overridden:
        Settings().with_overrides(**changes)
    assert from_env.value.name == made.value.name == overridden.value.name == variable
    assert str(from_env.value) == str(made.value) == str(overridden.value)


@pytest.mark.parametrize(
    "name",
    [
        "WEBHOOK_APP_TEST_DATABASE_URL",  # the test suite's own
        "WEBHOOK_APP_IMAGE",  # the compose file's own (deploy/.env.example)
        "WEBHOOK_APP_WEB_SERVICE_HOST",  # Kubernetes service links of a Service named webhook-app-web
        "WEBHOOK_APP_WEB_PORT",
        "WEBHOOK_APP_WEB_PORT_8000_TCP_ADDR",
        "CL_DOMAIN",  # another Commerce Layer tool's, not near one of ours
    ],
)
def test_variables_that_are_not_settings_but_not_mistakes_either_are_let_through(name):
    assert Settings.from_env({name: "x"}).mode == "shadow"


def test_an_unknown_setting_is_refused_naming_the_nearest_without_its_value():
    creds = {"CL_CLIENT_ID": "id", "CL_CLIENT_SECRET": "s", "CL_API_BASE": "https://x.commercelayer.io"}
    # Before: ignored, so these credentials made the default mode enforce.
    with pytest.raises(ConfigError, match="^WEBHOOK_APP_MODEE: .* did you mean WEBHOOK_APP_MODE\\?$"):
        Settings.from_env({**creds, "WEBHOOK_APP_MODEE": "shadow"})
    with pytest.raises(ConfigError) as exc:
        Settings.from_env({"CL_CLIENT_SECRETT": "hunter2-secret-value"})
    assert str(exc.value) == "CL_CLIENT_SECRETT: is not a setting of webhook-app: did you mean CL_CLIENT_SECRET?"
