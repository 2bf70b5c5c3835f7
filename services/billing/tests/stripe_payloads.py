"""Stripe webhook events shaped like Stripe's documented payloads, signed like Stripe signs."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

API_VERSION = "2026-10-28.endive"
WEBHOOK_SECRET = "whsec_test_0123456789abcdef"


def sign(payload: bytes, secret: str = WEBHOOK_SECRET, at: int | None = None) -> str:
    """A `Stripe-Signature` header: `t=<unix>,v1=<hex HMAC-SHA256 of "t.payload">`."""
    t = int(time.time()) if at is None else at
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def encode(event: dict[str, Any]) -> bytes:
    """The raw body Stripe would send."""
    return json.dumps(event, indent=2).encode()


def event(event_type: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
    """An `event` envelope around a snapshot of `obj`."""
    return {
        "id": f"evt_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


@dataclass
class Customer:
    """One user's Stripe objects, with fresh ids, for building their events."""

    user_id: uuid.UUID = field(default_factory=uuid.uuid4)
    customer_id: str = field(default_factory=lambda: f"cus_{secrets.token_hex(7)}")
    subscription_id: str = field(default_factory=lambda: f"sub_{secrets.token_hex(12)}")
    period_start: int = field(default_factory=lambda: int(time.time()) - 86_400)
    new_api: bool = True
    period_seconds: int = 30 * 86_400

    @property
    def period_end(self) -> int:
        """A period (a month unless told otherwise) after the period start."""
        return self.period_start + self.period_seconds

    def renew(self) -> None:
        """Move to the next period, as Stripe does when it renews the subscription."""
        self.period_start = self.period_end

    def checkout_completed(self, created: int) -> dict[str, Any]:
        """`checkout.session.completed` for a subscription-mode session."""
        obj = {
            "id": f"cs_test_{secrets.token_hex(12)}",
            "object": "checkout.session",
            "client_reference_id": str(self.user_id),
            "customer": self.customer_id,
            "metadata": {"user_id": str(self.user_id), "plan": "pro"},
            "mode": "subscription",
            "payment_status": "paid",
            "status": "complete",
            "subscription": self.subscription_id,
            "created": created,
        }
        return event("checkout.session.completed", obj, created)

    def subscription(
        self,
        price_id: str,
        status: str = "active",
        *,
        cancel_at_period_end: bool = False,
        canceled_at: int | None = None,
        cancel_at: int | None = None,
        legacy_plan: bool = False,
    ) -> dict[str, Any]:
        """A `subscription` object (periods on the item for newer API versions).

        `legacy_plan` sends the item's `plan` and no `price`, as older API versions and some
        emulators do.
        """
        item: dict[str, Any] = {
            "id": f"si_{secrets.token_hex(8)}",
            "object": "subscription_item",
            "quantity": 1,
            "subscription": self.subscription_id,
        }
        if legacy_plan:
            item["plan"] = {"id": price_id, "object": "plan", "interval": "month"}
        else:
            item["price"] = {
                "id": price_id,
                "object": "price",
                "currency": "usd",
                "recurring": {"interval": "month"},
            }
        obj: dict[str, Any] = {
            "id": self.subscription_id,
            "object": "subscription",
            "customer": self.customer_id,
            "status": status,
            "cancel_at": cancel_at,
            "cancel_at_period_end": cancel_at_period_end,
            "canceled_at": canceled_at,
            "created": self.period_start,
            "items": {"object": "list", "data": [item], "has_more": False},
            "metadata": {"user_id": str(self.user_id), "plan": "pro"},
            "livemode": False,
        }
        periods = {"current_period_start": self.period_start, "current_period_end": self.period_end}
        if self.new_api:
            item.update(periods)
        else:
            obj.update(periods)
        return obj

    def subscription_event(
        self, event_type: str, created: int, price_id: str, status: str = "active", **kw: Any
    ) -> dict[str, Any]:
        """`customer.subscription.created|updated|deleted`."""
        return event(
            f"customer.subscription.{event_type}",
            self.subscription(price_id, status, **kw),
            created,
        )

    def invoice(
        self,
        invoice_id: str,
        status: str,
        amount_due: int,
        amount_paid: int,
        number: str,
        *,
        service_period: tuple[int, int] | None = None,
    ) -> dict[str, Any]:
        """An `invoice` object (the subscription under `parent` for newer API versions).

        `service_period` adds a subscription line billing for that period (a renewal).
        """
        obj: dict[str, Any] = {
            "id": invoice_id,
            "object": "invoice",
            "customer": self.customer_id,
            "status": status,
            "amount_due": amount_due,
            "amount_paid": amount_paid,
            "amount_remaining": amount_due - amount_paid,
            "currency": "usd",
            "number": number,
            "billing_reason": "subscription_cycle",
            "hosted_invoice_url": f"https://invoice.stripe.test/i/{invoice_id}",
            "livemode": False,
        }
        if service_period is not None:
            line: dict[str, Any] = {
                "id": f"il_{secrets.token_hex(8)}",
                "object": "line_item",
                "amount": amount_due,
                "period": {"start": service_period[0], "end": service_period[1]},
            }
            if not self.new_api:
                line["type"] = "subscription"
            obj["lines"] = {"object": "list", "data": [line], "has_more": False}
        details = {
            "subscription": self.subscription_id,
            "metadata": {"user_id": str(self.user_id), "plan": "pro"},
        }
        if self.new_api:
            obj["parent"] = {"type": "subscription_details", "subscription_details": details}
        else:
            obj["subscription"] = self.subscription_id
            obj["subscription_details"] = {"metadata": details["metadata"]}
        return obj

    def invoice_event(self, event_type: str, created: int, **kw: Any) -> dict[str, Any]:
        """`invoice.paid|payment_succeeded|payment_failed`."""
        return event(f"invoice.{event_type}", self.invoice(**kw), created)

    def customer_deleted(self, created: int) -> dict[str, Any]:
        """`customer.deleted`."""
        obj = {
            "id": self.customer_id,
            "object": "customer",
            "created": self.period_start,
            "email": f"{self.user_id.hex[:8]}@example.com",
            "metadata": {"user_id": str(self.user_id)},
        }
        return event("customer.deleted", obj, created)
