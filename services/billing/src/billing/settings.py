"""Settings of the billing service (env prefix `BILLING_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from servicekit.settings import PLACEHOLDER_SECRETS, ServiceSettings


class BillingSettings(ServiceSettings):
    """Plans, Stripe and entitlements."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="forbid", case_sensitive=False)

    service_name: ClassVar[str] = "billing"

    port: int = 8003
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    stripe_api_base: str | None = None
    stripe_timeout_seconds: float = 20.0
    stripe_max_network_retries: int = 2
    stripe_idempotency_window_seconds: int = 300
    webhook_tolerance_seconds: int = 300
    app_url: str = "http://127.0.0.1:8000"
    price_pro: str | None = None
    price_business: str | None = None
    limit_free: int = 5
    limit_pro: int = 100
    limit_business: int = 500
    past_due_grace_days: int = 7
    renewal_grace_seconds: float = 48 * 3600.0
    """How long a renewing paid plan holds past `period_end` while Stripe's renewal is late."""
    entitlement_sweep_seconds: float = 60.0
    """The longest the sweeper waits between looks; it wakes earlier for a change that is due."""
    processed_events_retention_days: int = 30

    @field_validator("stripe_secret_key", "stripe_webhook_secret", mode="after")
    @classmethod
    def _blank_means_unset(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if value.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("a Stripe secret must be a real key, not a placeholder")
        return value

    @field_validator("price_pro", "price_business", "stripe_api_base", mode="after")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @field_validator("app_url", mode="after")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def production_problems(self) -> dict[str, str]:
        """Also Stripe's replay window: 0 turns it off, a long one lets an old event replay."""
        problems = super().production_problems()
        if not 60 <= self.webhook_tolerance_seconds <= 600:
            problems["webhook_tolerance_seconds"] = "must be between 60 and 600 seconds"
        return problems

    @property
    def payments_enabled(self) -> bool:
        """Whether checkout and the portal can talk to Stripe."""
        return self.stripe_secret_key is not None

    def price_for(self, plan_code: str) -> str | None:
        """The Stripe price configured for a paid plan."""
        return {"pro": self.price_pro, "business": self.price_business}.get(plan_code)
