"""Settings: development keeps the local defaults, production refuses defaults and placeholders."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from servicekit.settings import (
    DEV_INTERNAL_SECRET,
    DEVELOPMENT_DEFAULTS,
    S3Settings,
    ServiceSettings,
)

SECRET = "f3b9c2d87e1a4c6b90d5e2f1a7c3b8d4e6f0a9c1"
REAL: dict[str, Any] = {
    "environment": "production",
    "internal_secret": SECRET,
    "database_url": "postgresql+asyncpg://demo:pg-7Kd2q9Wz@db.internal:5432/demo",
    "amqp_url": "amqps://demo:mq-Vb41nQ8s@mq.internal:5671/realstaging",
    "s3_endpoint": "https://s3.eu-west-1.amazonaws.com",
    "s3_access_key": "AKIA4Q7RSTUVW2YZ3ABD",
    "s3_secret_key": "n8Jf2kQ0vR5tW7yB1cE3gH6jL9mP4sU",
}
"""A production configuration with nothing to refuse."""


class DemoSettings(ServiceSettings, S3Settings):
    """A service as the real ones are built: a prefix and the S3 mixin."""

    model_config = SettingsConfigDict(env_prefix="DEMO_", extra="forbid", case_sensitive=False)

    service_name: ClassVar[str] = "demo"


def _refusal(**values: Any) -> str:
    """The one error production start-up gives for these values."""
    with pytest.raises(ValidationError) as caught:
        DemoSettings(**(REAL | values))
    errors = caught.value.errors(include_input=False)
    assert len(errors) == 1, errors
    return str(errors[0]["msg"])


class TestDevelopmentDefaults:
    """`make up` and the tests run without naming any connection."""

    @pytest.mark.parametrize("environment", ["development", "test"])
    def test_local_defaults_fill_what_is_unset(self, environment: str) -> None:
        settings = DemoSettings(environment=environment)  # type: ignore[arg-type]
        assert settings.database_url == DEVELOPMENT_DEFAULTS["database_url"]
        assert settings.amqp_url == DEVELOPMENT_DEFAULTS["amqp_url"]
        assert settings.s3_endpoint == DEVELOPMENT_DEFAULTS["s3_endpoint"]
        assert settings.s3_access_key == "realstaging"
        assert settings.internal_secret.get_secret_value() == DEV_INTERNAL_SECRET

    def test_given_values_win_over_the_defaults(self) -> None:
        settings = DemoSettings(
            environment="test",  # type: ignore[arg-type]
            database_url="postgresql+asyncpg://a:b@h:5432/d",
            amqp_url="amqp://a:b@h:5672/",
        )
        assert settings.database_url == "postgresql+asyncpg://a:b@h:5432/d"
        assert settings.amqp_url == "amqp://a:b@h:5672/"

    def test_a_short_internal_secret_is_refused_everywhere(self) -> None:
        with pytest.raises(ValidationError, match="at least 32 characters"):
            DemoSettings(environment="development", internal_secret="short")  # type: ignore[arg-type]


class TestProductionRefusals:
    """Each default or placeholder is refused, named by the variable that sets it."""

    def test_a_real_configuration_is_accepted(self) -> None:
        settings = DemoSettings(**REAL)
        assert settings.production_problems() == {}

    def test_connections_have_no_default_in_production(self) -> None:
        values = {
            k: v for k, v in REAL.items() if k not in {"database_url", "amqp_url", "s3_endpoint"}
        }
        with pytest.raises(ValidationError) as caught:
            DemoSettings(**values)
        message = str(caught.value.errors(include_input=False)[0]["msg"])
        assert "- DEMO_DATABASE_URL is required in production" in message
        assert "- AMQP_URL (or DEMO_AMQP_URL) is required in production" in message
        assert "- S3_ENDPOINT (or DEMO_S3_ENDPOINT) is required in production" in message

    @pytest.mark.parametrize(
        ("field", "value", "variable"),
        [
            (
                "database_url",
                "postgresql+asyncpg://realstaging:realstaging@db:5432/d",
                "DEMO_DATABASE_URL",
            ),
            (
                "database_url",
                "postgresql+asyncpg://postgres:postgres@db:5432/d",
                "DEMO_DATABASE_URL",
            ),
            ("amqp_url", "amqp://guest:guest@mq:5672/", "AMQP_URL"),
            ("amqp_url", "amqps://realstaging:realstaging@mq:5671/", "AMQP_URL"),
            ("amqp_url", "amqp://mq.internal:5672/", "AMQP_URL"),
            ("s3_access_key", "realstaging", "S3_ACCESS_KEY"),
            ("s3_secret_key", "realstaging-secret", "S3_SECRET_KEY"),
            ("s3_access_key", "minioadmin", "S3_ACCESS_KEY"),
            ("s3_secret_key", "minioadmin", "S3_SECRET_KEY"),
        ],
    )
    def test_default_logins_are_refused(self, field: str, value: str, variable: str) -> None:
        message = _refusal(**{field: value})
        assert f"- {variable}" in message

    @pytest.mark.parametrize(
        ("field", "value", "variable"),
        [
            ("internal_secret", "REPLACE-with-at-least-32-random-characters", "INTERNAL_SECRET"),
            ("internal_secret", "changeme-changeme-changeme-changeme-01", "INTERNAL_SECRET"),
            ("internal_secret", "ChangeThis-0123456789abcdef0123456789", "INTERNAL_SECRET"),
            ("internal_secret", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", "INTERNAL_SECRET"),
            (
                "internal_secret",
                "development-only-internal-secret-do-not-deploy",
                "INTERNAL_SECRET",
            ),
            ("internal_secret", "too-short-but-real", "INTERNAL_SECRET"),
            (
                "amqp_url",
                "amqps://USER:PASSWORD@rabbitmq.example.com:5671/realstaging",
                "AMQP_URL",
            ),
            (
                "database_url",
                "postgresql+asyncpg://u:p@postgres.EXAMPLE.com:5432/demo",
                "DEMO_DATABASE_URL",
            ),
            ("s3_access_key", "REPLACE", "S3_ACCESS_KEY"),
            ("s3_secret_key", "replace-me-with-the-real-key", "S3_SECRET_KEY"),
            ("s3_endpoint", "https://s3.example.com", "S3_ENDPOINT"),
        ],
    )
    def test_placeholders_are_refused(self, field: str, value: str, variable: str) -> None:
        message = _refusal(**{field: value})
        assert f"- {variable}" in message

    def test_one_error_names_each_setting_and_no_value(self) -> None:
        message = _refusal(
            internal_secret="REPLACE-with-at-least-32-random-characters",
            database_url="postgresql+asyncpg://realstaging:realstaging@db:5432/demo",
            amqp_url="amqp://guest:guest@mq:5672/",
            s3_access_key="minioadmin",
            s3_secret_key="realstaging-secret",
        )
        for variable in (
            "INTERNAL_SECRET",
            "DEMO_DATABASE_URL",
            "AMQP_URL",
            "S3_ACCESS_KEY",
            "S3_SECRET_KEY",
        ):
            assert message.count(f"- {variable}") == 1, message
        assert "realstaging-secret" not in message
        assert "REPLACE-with" not in message

    def test_names_outside_the_credential_words_are_not_scanned(self) -> None:
        # A bucket or a log level is neither a secret nor an address.
        settings = DemoSettings(**(REAL | {"s3_bucket": "photos-example-eu"}))
        assert settings.s3_bucket == "photos-example-eu"
