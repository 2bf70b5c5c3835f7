"""Reading Stripe's JSON objects (from webhooks or the API) into plain values: no I/O."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SUBSCRIPTION_STATUS_RANK = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "past_due": 3,
    "paused": 4,
    "unpaid": 5,
    "incomplete_expired": 6,
    "canceled": 7,
}
"""How far along its life a subscription is: breaks ties between events of the same second."""

INVOICE_STATUS_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 4}
"""How far along its life an invoice is: breaks ties between events of the same second."""


@dataclass(frozen=True)
class Version:
    """Orders the states Stripe sent for one object: event time, then status rank, then id."""

    created: datetime
    event_id: str


@dataclass(frozen=True)
class SubscriptionState:
    """One subscription as a Stripe event or API call describes it."""

    stripe_subscription_id: str
    stripe_customer_id: str | None
    status: str
    price_id: str | None
    current_period_start: datetime | None
    current_period_end: datetime | None
    cancel_at: datetime | None
    canceled_at: datetime | None
    cancel_at_period_end: bool
    user_hint: uuid.UUID | None


@dataclass(frozen=True)
class InvoiceState:
    """One invoice as a Stripe event describes it (amounts in cents)."""

    stripe_invoice_id: str
    stripe_customer_id: str | None
    stripe_subscription_id: str | None
    status: str
    amount_due: int
    amount_paid: int
    currency: str | None
    invoice_number: str | None
    user_hint: uuid.UUID | None
    hosted_invoice_url: str | None = None
    service_period_start: datetime | None = None
    service_period_end: datetime | None = None
    """The subscription period the invoice's lines bill for (a renewal's new period)."""


def timestamp(value: Any) -> datetime | None:
    """A Stripe unix timestamp as an aware datetime (None stays None)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    return None


def object_id(value: Any) -> str | None:
    """The id of a reference that Stripe may send as an id or as the expanded object."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, dict):
        ref = value.get("id")
        return ref if isinstance(ref, str) else None
    return None


def user_id_in(metadata: Any) -> uuid.UUID | None:
    """The `user_id` we put in an object's metadata, if it is there and well formed."""
    if not isinstance(metadata, dict):
        return None
    return parse_user_id(metadata.get("user_id"))


def parse_user_id(value: Any) -> uuid.UUID | None:
    """A user id from a string Stripe echoes back (`client_reference_id`, metadata)."""
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def subscription_state(obj: dict[str, Any], *, deleted: bool = False) -> SubscriptionState:
    """Read a `subscription` object; `deleted` events always mean canceled."""
    items = _dict(obj.get("items")).get("data")
    first_item = _dict(items[0]) if isinstance(items, list) and items else {}
    # Older API versions and emulators send the item's `plan` (with the same id) and no `price`.
    price = first_item.get("price") or first_item.get("plan")
    # API versions from 2025-03-31 ("basil") moved the billing period onto the items.
    period_start = obj.get("current_period_start", first_item.get("current_period_start"))
    period_end = obj.get("current_period_end", first_item.get("current_period_end"))
    status = obj.get("status") if isinstance(obj.get("status"), str) else "incomplete"
    return SubscriptionState(
        stripe_subscription_id=str(obj["id"]),
        stripe_customer_id=object_id(obj.get("customer")),
        status="canceled" if deleted else str(status),
        price_id=object_id(price),
        current_period_start=timestamp(period_start),
        current_period_end=timestamp(period_end),
        cancel_at=timestamp(obj.get("cancel_at")),
        canceled_at=timestamp(obj.get("canceled_at")),
        cancel_at_period_end=bool(obj.get("cancel_at_period_end", False)),
        user_hint=user_id_in(obj.get("metadata")),
    )


def invoice_state(obj: dict[str, Any], event_type: str) -> InvoiceState:
    """Read an `invoice` object from one of the invoice events."""
    parent = _dict(_dict(obj.get("parent")).get("subscription_details"))
    # Newer API versions moved `subscription` under `parent.subscription_details`.
    subscription = object_id(obj.get("subscription")) or object_id(parent.get("subscription"))
    hint = (
        user_id_in(parent.get("metadata"))
        or user_id_in(_dict(obj.get("subscription_details")).get("metadata"))
        or user_id_in(obj.get("metadata"))
    )
    status = obj.get("status")
    if not isinstance(status, str) or not status:
        status = "open" if event_type == "invoice.payment_failed" else "paid"
    currency = obj.get("currency")
    number = obj.get("number")
    hosted = obj.get("hosted_invoice_url")
    # The invoice's own period_start/end cover the period *before* a renewal invoice; the
    # lines carry the service period being paid for.
    periods = [
        _dict(_dict(line).get("period"))
        for line in _list(_dict(obj.get("lines")).get("data"))
        if _dict(line).get("type", "subscription") == "subscription"
    ]
    ends = [(timestamp(p.get("end")), timestamp(p.get("start"))) for p in periods]
    service = max(((e, s) for e, s in ends if e is not None and s is not None), default=None)
    return InvoiceState(
        stripe_invoice_id=str(obj["id"]),
        stripe_customer_id=object_id(obj.get("customer")),
        stripe_subscription_id=subscription,
        status=status,
        amount_due=_int(obj.get("amount_due")),
        amount_paid=_int(obj.get("amount_paid")),
        currency=currency if isinstance(currency, str) else None,
        invoice_number=number if isinstance(number, str) else None,
        user_hint=hint,
        hosted_invoice_url=hosted if isinstance(hosted, str) and hosted else None,
        service_period_start=service[1] if service else None,
        service_period_end=service[0] if service else None,
    )
