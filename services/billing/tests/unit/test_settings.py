"""Billing settings: Stripe's replay window is bounded in production."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from billing.settings import BillingSettings

PRODUCTION = {
    "environment": "production",
    "internal_secret": "8e2b5d1f7a4c9e0b3d6f2a8c5e1b7d4f0a3c6e9b",
    "database_url": "postgresql+asyncpg://billing:pg-3Hs8v@db.internal:5432/billing",
    "amqp_url": "amqps://billing:mq-6Tn1c@mq.internal:5671/realstaging",
}


class TestWebhookTolerance:
    """0 would turn Stripe's timestamp check off; hours would let a captured event replay."""

    @pytest.mark.parametrize("seconds", [60, 300, 600])
    def test_a_tolerance_within_the_window_is_accepted(self, seconds: int) -> None:
        settings = BillingSettings(**PRODUCTION, webhook_tolerance_seconds=seconds)  # type: ignore[arg-type]
        assert settings.webhook_tolerance_seconds == seconds

    @pytest.mark.parametrize("seconds", [0, 59, 601, 86400])
    def test_a_tolerance_outside_the_window_is_refused(self, seconds: int) -> None:
        with pytest.raises(ValidationError, match="- BILLING_WEBHOOK_TOLERANCE_SECONDS must be"):
            BillingSettings(**PRODUCTION, webhook_tolerance_seconds=seconds)  # type: ignore[arg-type]

    def test_tests_may_use_any_tolerance(self) -> None:
        settings = BillingSettings(environment="test", webhook_tolerance_seconds=0)  # type: ignore[arg-type]
        assert settings.webhook_tolerance_seconds == 0

    def test_placeholder_stripe_secrets_are_named(self) -> None:
        with pytest.raises(ValidationError) as caught:
            BillingSettings(
                **PRODUCTION,  # type: ignore[arg-type]
                stripe_secret_key="sk_live_REPLACE",
                stripe_webhook_secret="whsec_REPLACE",
            )
        message = str(caught.value.errors(include_input=False)[0]["msg"])
        assert "- BILLING_STRIPE_SECRET_KEY holds the placeholder 'REPLACE'" in message
        assert "- BILLING_STRIPE_WEBHOOK_SECRET holds the placeholder 'REPLACE'" in message
