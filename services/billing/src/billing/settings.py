"""Settings of the billing service (env prefix `BILLING_`)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from servicekit.settings import ServiceSettings


class BillingSettings(ServiceSettings):
    """Plans, Stripe and entitlements."""

    model_config = SettingsConfigDict(env_prefix="BILLING_", extra="forbid", case_sensitive=False)

    service_name: ClassVar[str] = "billing"

    port: int = 8003
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    price_pro: str | None = None
    price_business: str | None = None
    limit_free: int = 5
    limit_pro: int = 100
    limit_business: int = 500
