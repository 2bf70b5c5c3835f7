"""Applying verified Stripe webhook events: recorded first, applied in the same transaction."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from billing.repository import ProcessedEventRepository
from billing.service import BillingService
from billing.settings import BillingSettings
from billing.stripe_objects import (
    Version,
    invoice_state,
    object_id,
    parse_user_id,
    subscription_state,
    timestamp,
    user_id_in,
)

logger = logging.getLogger(__name__)

Handler = Callable[["StripeWebhookService", dict[str, Any], Version], Awaitable[str]]


class StripeWebhookService:
    """One event, one unit of work: claim it, apply it, stage announcements; never commits."""

    def __init__(
        self, session: AsyncSession, settings: BillingSettings, correlation_id: str | None = None
    ) -> None:
        self.events = ProcessedEventRepository(session)
        self.billing = BillingService(session, settings, correlation_id=correlation_id)

    async def handle(self, event: dict[str, Any]) -> str:
        """Apply an event once: `processed`, `ignored` (not ours to act on) or `duplicate`."""
        event_id, event_type = str(event["id"]), str(event["type"])
        if not await self.events.record(event_id, event_type, event):
            return "duplicate"
        handler = HANDLERS.get(event_type)
        if handler is None:
            return "ignored"
        created = timestamp(event.get("created"))
        if created is None:
            raise ValueError("the event has no creation time")
        obj: dict[str, Any] = event["data"]["object"]
        return await handler(self, obj, Version(created=created, event_id=event_id))

    async def _checkout_completed(self, obj: dict[str, Any], _: Version) -> str:
        customer = object_id(obj.get("customer"))
        user_id = parse_user_id(obj.get("client_reference_id")) or user_id_in(obj.get("metadata"))
        if customer is None or user_id is None:
            return "ignored"
        await self.billing.link_customer(user_id, customer)
        return "processed"

    async def _subscription_changed(self, obj: dict[str, Any], version: Version) -> str:
        owner = await self.billing.apply_subscription(subscription_state(obj), version)
        return "processed" if owner else "ignored"

    async def _subscription_deleted(self, obj: dict[str, Any], version: Version) -> str:
        state = subscription_state(obj, deleted=True)
        owner = await self.billing.apply_subscription(state, version)
        return "processed" if owner else "ignored"

    async def _invoice(self, obj: dict[str, Any], version: Version, event_type: str) -> str:
        owner = await self.billing.apply_invoice(invoice_state(obj, event_type), version)
        return "processed" if owner else "ignored"

    async def _invoice_paid(self, obj: dict[str, Any], version: Version) -> str:
        return await self._invoice(obj, version, "invoice.paid")

    async def _invoice_failed(self, obj: dict[str, Any], version: Version) -> str:
        return await self._invoice(obj, version, "invoice.payment_failed")

    async def _customer_deleted(self, obj: dict[str, Any], _: Version) -> str:
        customer = object_id(obj)
        if customer is None:
            return "ignored"
        user_id = await self.billing.forget_customer(customer, user_id_in(obj.get("metadata")))
        if user_id is None:
            return "ignored"
        await self.billing.refresh_entitlement(user_id)
        return "processed"


HANDLERS: dict[str, Handler] = {
    "checkout.session.completed": StripeWebhookService._checkout_completed,
    "customer.subscription.created": StripeWebhookService._subscription_changed,
    "customer.subscription.updated": StripeWebhookService._subscription_changed,
    "customer.subscription.deleted": StripeWebhookService._subscription_deleted,
    "invoice.paid": StripeWebhookService._invoice_paid,
    "invoice.payment_succeeded": StripeWebhookService._invoice_paid,
    "invoice.payment_failed": StripeWebhookService._invoice_failed,
    "customer.deleted": StripeWebhookService._customer_deleted,
}
"""The events billing acts on; any other event is recorded and acknowledged."""
