"""Request and response bodies of the billing API."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

T = TypeVar("T")

PaidPlan = Literal["pro", "business"]


class PlanOut(BaseModel):
    """A plan as the public sees it."""

    model_config = ConfigDict(from_attributes=True)

    code: str
    name: str
    monthly_limit: int
    price_cents: int
    currency: str
    purchasable: bool = False


class PlanList(BaseModel):
    """Every plan, cheapest first."""

    items: list[PlanOut]


class Page(BaseModel, Generic[T]):
    """A page of results; pass `next_cursor` back as `cursor` for the next one."""

    items: list[T]
    next_cursor: str | None = None


class CheckoutRequest(BaseModel):
    """Which paid plan to subscribe to."""

    model_config = ConfigDict(extra="forbid")

    plan: PaidPlan


class RedirectOut(BaseModel):
    """Where to send the browser (Stripe Checkout or the billing portal)."""

    url: str


class WebhookOut(BaseModel):
    """What billing did with a Stripe event: `processed`, `ignored` or `duplicate`."""

    status: str


class EntitlementOut(BaseModel):
    """The plan and allowance in force, and where they come from."""

    model_config = ConfigDict(from_attributes=True)

    plan_code: str
    monthly_limit: int
    status: str
    source: Literal["subscription", "comp", "free"]
    period_start: datetime
    period_end: datetime
    renewal_grace_until: datetime | None = Field(
        default=None,
        description="If Stripe's renewal is not heard by `period_end`, the plan holds until then.",
    )


class SubscriptionOut(BaseModel):
    """A Stripe subscription as billing last saw it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    stripe_subscription_id: str
    status: str
    price_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at: datetime | None
    canceled_at: datetime | None
    cancel_at_period_end: bool
    created_at: datetime
    updated_at: datetime


class CompOut(BaseModel):
    """A plan granted by an admin."""

    model_config = ConfigDict(from_attributes=True)

    plan_code: str
    until: datetime | None


class BillingOut(BaseModel):
    """A user's plan, entitlement, subscription (or null) and comp (or null)."""

    plan: PlanOut
    entitlement: EntitlementOut
    subscription: SubscriptionOut | None
    comp: CompOut | None
    has_billing_account: bool
    payments_enabled: bool
    unknown_price: str | None = Field(
        default=None,
        description=(
            "Admin view only: the price of a paid-up subscription that matches no plan "
            "(`missing` if it has none). The user keeps their previous plan until it is fixed."
        ),
    )


class InvoiceOut(BaseModel):
    """A Stripe invoice (amounts in cents)."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    stripe_invoice_id: str
    stripe_subscription_id: str | None
    status: str
    amount_due: int
    amount_paid: int
    currency: str | None
    invoice_number: str | None
    hosted_invoice_url: str | None = Field(
        default=None, description="Stripe's page where the invoice can be viewed and paid."
    )
    created_at: datetime
    updated_at: datetime


class CompRequest(BaseModel):
    """Grant a paid plan without Stripe, forever or until a moment in the future."""

    model_config = ConfigDict(extra="forbid")

    plan: PaidPlan
    until: datetime | None = Field(default=None, description="Naive times are taken as UTC.")

    @field_validator("until")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        if value <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return value


class ResyncOut(BaseModel):
    """What a resync from Stripe found and the entitlement that results."""

    subscriptions: int
    entitlement: EntitlementOut
