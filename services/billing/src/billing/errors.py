"""Errors specific to billing."""

from __future__ import annotations

from servicekit.errors import Conflict, NotFound, ServiceError, Unavailable


class PaymentsNotConfigured(Unavailable):
    """No Stripe secret key: checkout, the portal and resync cannot work."""

    code = "payments_not_configured"

    def __init__(self) -> None:
        super().__init__("Payments are not configured on this server.")


class PaymentProviderError(ServiceError):
    """Stripe refused or could not be reached; nothing was charged."""

    status = 502
    code = "payment_provider_error"


class PlanNotPurchasable(Conflict):
    """The plan has no Stripe price on this server."""

    code = "plan_not_purchasable"


class AlreadySubscribed(Conflict):
    """A second subscription would charge the user twice; plan changes go through the portal."""

    code = "already_subscribed"

    def __init__(self, plan_code: str) -> None:
        super().__init__(
            f"You already have a {plan_code} subscription; change or cancel it in the billing "
            "portal.",
            details={"plan": plan_code},
        )


class NoCustomer(NotFound):
    """The user has never started a checkout, so Stripe knows nothing about them."""

    code = "no_billing_account"

    def __init__(self) -> None:
        super().__init__("You have no billing account yet; subscribe to a plan first.")


class InvalidWebhook(ServiceError):
    """A webhook whose signature, timestamp or body cannot be trusted."""

    status = 400
    code = "invalid_webhook"


class WebhookFailed(Unavailable):
    """Applying a webhook failed and was rolled back; Stripe retries it."""

    code = "webhook_failed"

    def __init__(self) -> None:
        super().__init__(
            "The event could not be applied right now; it was not recorded and can be resent.",
            headers={"Retry-After": "30"},
        )
