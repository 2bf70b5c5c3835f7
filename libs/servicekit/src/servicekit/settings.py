"""The settings base every service extends.

Each service has one settings class with its own env prefix (`PROJECTS_DATABASE_URL`). Values
shared by the whole stack (`AMQP_URL`, `INTERNAL_SECRET`, `S3_*`) may also be given without the
prefix; the prefixed name wins.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

PLACEHOLDER_SECRETS = frozenset({"", "changethis", "changeme", "secret", "development-only"})
DEV_INTERNAL_SECRET = "development-only-internal-secret-do-not-deploy"


SHARED_FIELDS = frozenset(
    {
        "environment",
        "host",
        "port",
        "log_level",
        "amqp_url",
        "internal_secret",
        "s3_endpoint",
        "s3_public_endpoint",
        "s3_access_key",
        "s3_secret_key",
        "s3_bucket",
        "s3_region",
        "retry_delays_seconds",
        "retry_max_age_seconds",
        "reconcile_interval_seconds",
        "dead_letter_max_length",
    }
)
"""Settings that may be given stack-wide without a prefix; never a service's own database."""


class SharedEnvSource(EnvSettingsSource):
    """Unprefixed environment variables, for the stack-wide settings only."""

    def __call__(self) -> dict[str, Any]:
        """Read the whitelisted settings."""
        return {k: v for k, v in super().__call__().items() if k in SHARED_FIELDS}


class Environment(StrEnum):
    """Where a service runs; production refuses development shortcuts."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class ServiceSettings(BaseSettings):
    """Settings common to every service."""

    model_config = SettingsConfigDict(extra="forbid", case_sensitive=False)

    service_name: ClassVar[str] = "service"
    secret_fields: ClassVar[tuple[str, ...]] = ("internal_secret",)

    environment: Environment = Environment.PRODUCTION
    host: str = "0.0.0.0"
    port: int = 8000
    log_level: str = "INFO"
    database_url: str = "postgresql+asyncpg://realstaging:realstaging@127.0.0.1:5432/realstaging"
    database_pool_size: int = 10
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    internal_secret: SecretStr = Field(default=SecretStr(""))
    outbox_poll_seconds: float = 0.5
    consumer_prefetch: int = 8
    retry_delays_seconds: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0)
    """Delays between redeliveries of a failing message; the last one repeats (capped)."""
    retry_max_age_seconds: float = 7 * 24 * 3600.0
    """How long an infrastructure failure (database, broker, S3 away) is retried before parking."""
    reconcile_interval_seconds: float = 30.0
    """How often the service's reconciler looks for work left unfinished."""
    dead_letter_max_length: int = 100_000
    """Parked messages kept per dead-letter queue; the oldest are dropped beyond it."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Prefixed variables first, then the stack-wide unprefixed names."""
        shared = SharedEnvSource(settings_cls, env_prefix="", case_sensitive=False)
        return (init_settings, env_settings, shared, dotenv_settings, file_secret_settings)

    @model_validator(mode="after")
    def _secrets_are_real(self) -> ServiceSettings:
        for name in self.secret_fields:
            value: Any = getattr(self, name)
            raw = value.get_secret_value() if isinstance(value, SecretStr) else value
            if self.environment is Environment.PRODUCTION:
                if (
                    raw is None
                    or raw.strip().lower() in PLACEHOLDER_SECRETS
                    or "development" in raw
                ):
                    raise ValueError(
                        f"{name} must be set to a real secret in production "
                        f"(set {self.model_config.get('env_prefix', '')}{name.upper()})"
                    )
            elif name == "internal_secret" and not raw:
                object.__setattr__(self, name, SecretStr(DEV_INTERNAL_SECRET))
        if len(self.internal_secret.get_secret_value()) < 32:
            raise ValueError("internal_secret must be at least 32 characters long")
        return self

    @property
    def is_production(self) -> bool:
        """Whether development shortcuts are forbidden."""
        return self.environment is Environment.PRODUCTION


class S3Settings(BaseSettings):
    """Object storage settings, mixed into the services that touch photos."""

    s3_endpoint: str = "http://127.0.0.1:9000"
    s3_public_endpoint: str | None = None
    s3_access_key: str = "realstaging"
    s3_secret_key: SecretStr = SecretStr("realstaging-secret")
    s3_bucket: str = "realstaging"
    s3_region: str = "us-east-1"
