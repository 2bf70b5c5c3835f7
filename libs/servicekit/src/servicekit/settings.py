"""The settings base every service extends.

Each service has one settings class with its own env prefix (`PROJECTS_DATABASE_URL`). Values
shared by the whole stack (`AMQP_URL`, `INTERNAL_SECRET`, `S3_*`) may also be given without the
prefix; the prefixed name wins.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

PLACEHOLDER_SECRETS = frozenset({"", "changethis", "changeme", "secret", "development-only"})
DEV_INTERNAL_SECRET = "development-only-internal-secret-do-not-deploy"

DEVELOPMENT_DEFAULTS: dict[str, str] = {
    "database_url": "postgresql+asyncpg://realstaging:realstaging@127.0.0.1:5432/realstaging",
    "amqp_url": "amqp://guest:guest@127.0.0.1:5672/",
    "s3_endpoint": "http://127.0.0.1:9000",
}
"""Where the local stack listens. Production has no default: it must name its own."""

PLACEHOLDER_PATTERN = re.compile(
    # A run of x's only as a whole word (`sk_live_xxx`) or a long run, so that a random secret
    # that happens to contain "xxx" is not refused.
    r"replace|changeme|changethis|example|(?<![a-z0-9])x{3,}(?![a-z0-9])|x{8,}",
    re.IGNORECASE,
)
"""Template text that is never a real value (`REPLACE-with-...`, `whsec_REPLACE`, `sk_live_xxx`,
`rabbitmq.example.com`)."""

DEFAULT_CREDENTIALS = frozenset(
    {("realstaging", "realstaging"), ("postgres", "postgres"), ("guest", "guest")}
)
"""User and password pairs of the development stack, compose and the servers' own defaults."""

DEFAULT_S3_KEYS = frozenset({"realstaging", "realstaging-secret", "minioadmin"})
"""S3 keys of the development stack and compose's MinIO, and MinIO's own root default."""

SENSITIVE_WORDS = frozenset(
    {
        "secret",
        "key",
        "token",
        "password",
        "url",
        "endpoint",
        "base",
        "domain",
        "audience",
        "origins",
    }
)
"""A setting whose name has one of these words holds a secret, a credential or an address."""


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
    database_url: str = ""
    """Required in production; development and tests use the local stack's."""
    database_pool_size: int = 10
    amqp_url: str = ""
    """Required in production; development and tests use the local broker's guest login."""
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
    def _production_is_configured(self) -> ServiceSettings:
        if self.is_production:
            problems = self.production_problems()
            if problems:
                # One error naming every offending variable, so one deploy fixes them all.
                raise ValueError(
                    "production refuses these settings:\n"
                    + "\n".join(f"- {self.env_name(name)} {why}" for name, why in problems.items())
                )
            return self
        fields = type(self).model_fields
        for name, value in DEVELOPMENT_DEFAULTS.items():
            if name in fields and not str(getattr(self, name)).strip():
                object.__setattr__(self, name, value)
        if not self.internal_secret.get_secret_value():
            object.__setattr__(self, "internal_secret", SecretStr(DEV_INTERNAL_SECRET))
        if len(self.internal_secret.get_secret_value()) < 32:
            raise ValueError("internal_secret must be at least 32 characters long")
        return self

    def production_problems(self) -> dict[str, str]:
        """What production refuses, as `{field: why}`; services add their own rules."""
        problems: dict[str, str] = {}
        fields = type(self).model_fields
        for name in DEVELOPMENT_DEFAULTS:
            if name in fields and not str(getattr(self, name)).strip():
                problems[name] = "is required in production (it has no default there)"
        for name in self.secret_fields:
            raw = _text(getattr(self, name)) or ""
            if raw.strip().lower() in PLACEHOLDER_SECRETS or "development" in raw:
                problems.setdefault(name, "must be set to a real secret")
            elif len(raw) < 32:
                problems.setdefault(name, "must be at least 32 characters long")
        for name in ("database_url", "amqp_url"):
            if why := _default_login(name, getattr(self, name)):
                problems.setdefault(name, why)
        for name in ("s3_access_key", "s3_secret_key"):
            if name in fields and (_text(getattr(self, name)) or "").strip() in DEFAULT_S3_KEYS:
                problems.setdefault(
                    name, "is a development or example credential (realstaging, minioadmin)"
                )
        for name in fields:
            if SENSITIVE_WORDS.isdisjoint(name.split("_")):
                continue
            for text in _texts(getattr(self, name)):
                if found := PLACEHOLDER_PATTERN.search(text):
                    # A long run of x's may be the whole value: name only its start.
                    shown = found.group(0) if len(found.group(0)) <= 12 else found.group(0)[:3]
                    problems.setdefault(name, f"holds the placeholder {shown!r}")
                    break
        return problems

    def env_name(self, field: str) -> str:
        """The environment variable that sets `field` (and its stack-wide name, if it has one)."""
        prefix = str(self.model_config.get("env_prefix", ""))
        own = f"{prefix}{field}".upper()
        if prefix and field in SHARED_FIELDS:
            return f"{field.upper()} (or {own})"
        return own

    @property
    def is_production(self) -> bool:
        """Whether development shortcuts are forbidden."""
        return self.environment is Environment.PRODUCTION


class S3Settings(BaseSettings):
    """Object storage settings, mixed into the services that touch photos."""

    s3_endpoint: str = ""
    """Required in production; development and tests use the local stack's."""
    s3_public_endpoint: str | None = None
    s3_access_key: str = "realstaging"
    s3_secret_key: SecretStr = SecretStr("realstaging-secret")
    s3_bucket: str = "realstaging"
    s3_region: str = "us-east-1"


def _text(value: Any) -> str | None:
    """A setting's text, secrets revealed (for checking, never for printing)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value if isinstance(value, str) else None


def _texts(value: Any) -> Iterator[str]:
    if isinstance(value, list | tuple):
        for item in value:
            yield from _texts(item)
    elif (text := _text(value)) is not None:
        yield text


def _default_login(name: str, url: str) -> str | None:
    """Why a connection URL's login is a default one, or None when it is not."""
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return None
    if user is None:
        # aio-pika logs in as guest:guest when the URL names nobody; PostgreSQL may not need one.
        return (
            "names no user, so the broker's guest:guest login is used"
            if name == "amqp_url"
            else None
        )
    if (unquote(user), unquote(password or "")) in DEFAULT_CREDENTIALS:
        return f"uses the default login {unquote(user)}:{unquote(user)}"
    return None
