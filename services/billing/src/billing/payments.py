"""Checkout, portal and resync: Stripe calls between short units of work.

No database transaction stays open while Stripe is called, so a slow Stripe never holds
row locks or pool connections.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from billing.entitlements import ACTIVE_STATUSES, EntitlementResult
from billing.errors import (
    AlreadySubscribed,
    NoCustomer,
    PaymentProviderError,
    PaymentsNotConfigured,
    PlanNotPurchasable,
)
from billing.repository import AccountRepository, DeletedCustomerRepository, PlanRepository
from billing.service import BillingService
from billing.settings import BillingSettings
from billing.stripe_api import StripeApi, idempotency_key, time_bucket
from billing.stripe_objects import Version, subscription_state
from contracts.identity import Identity
from servicekit.db import unit_of_work
from servicekit.runtime import Runtime

logger = logging.getLogger(__name__)

BLOCKING_STATUSES = ACTIVE_STATUSES | {"past_due", "unpaid"}
"""A subscription in one of these states would be charged alongside a new one."""


class PaymentsService:
    """Orchestrates the Stripe round trips of one request."""

    def __init__(self, runtime: Runtime, settings: BillingSettings, api: StripeApi | None) -> None:
        self.runtime = runtime
        self.settings = settings
        self._api = api

    @property
    def api(self) -> StripeApi:
        """The Stripe client, or 503 when payments are not configured."""
        if self._api is None:
            raise PaymentsNotConfigured()
        return self._api

    def _bucket(self) -> int:
        return time_bucket(self.settings.stripe_idempotency_window_seconds)

    async def checkout(self, who: Identity, plan_code: str) -> str:
        """A Checkout Session URL for subscribing the caller to a paid plan."""
        api = self.api
        async with unit_of_work(self.runtime.sessionmaker) as session:
            plan = await PlanRepository(session).get(plan_code)
            if plan is None or not plan.price_id:
                raise PlanNotPurchasable(f"The {plan_code} plan cannot be bought on this server.")
            accounts = AccountRepository(session)
            await accounts.add(who.user_id, who.email)
            account = await accounts.get(who.user_id)
            assert account is not None
            billing = BillingService(session, self.settings)
            for sub in await billing.subscriptions.live_for(who.user_id):
                if sub.status in BLOCKING_STATUSES:
                    held = await billing.compute(who.user_id)
                    raise AlreadySubscribed(held.plan_code)
            price_id, email, customer_id = plan.price_id, account.email, account.stripe_customer_id
            generation = await DeletedCustomerRepository(session).count_for(who.user_id)
        if customer_id is None:
            customer_id = await self._create_customer(who.user_id, email, generation)
        user = str(who.user_id)
        params = {
            "mode": "subscription",
            "customer": customer_id,
            "client_reference_id": user,
            "line_items": [{"price": price_id, "quantity": 1}],
            "success_url": f"{self.settings.app_url}/billing?checkout=success",
            "cancel_url": f"{self.settings.app_url}/billing?checkout=canceled",
            "metadata": {"user_id": user, "plan": plan_code},
            "subscription_data": {"metadata": {"user_id": user, "plan": plan_code}},
        }
        key = idempotency_key("checkout", who.user_id, plan_code, customer_id, self._bucket())
        return await api.create_checkout_session(params, key)

    async def _create_customer(self, user_id: uuid.UUID, email: str | None, generation: int) -> str:
        """Create and link the user's Stripe customer; racing requests end with one link."""
        # No time bucket: every first checkout of this user (and generation: a customer deleted
        # in Stripe needs a new one) sends the same key, so Stripe returns one customer.
        key = idempotency_key("customer", user_id, generation, email or "")
        created = await self.api.create_customer(user_id, email, key)
        async with unit_of_work(self.runtime.sessionmaker) as session:
            billing = BillingService(session, self.settings)
            linked = await billing.link_customer(user_id, created)
            account = await billing.accounts.get(user_id)
            current = account.stripe_customer_id if account else None
        if linked:
            self.runtime.relay.wake()
        if current is None:
            raise PaymentProviderError("Your billing account could not be set up; try again.")
        if current != created:
            logger.warning("user %s raced to customer %s; %s is linked", user_id, created, current)
        return current

    async def portal(self, who: Identity) -> str:
        """A billing portal URL for the caller's Stripe customer."""
        api = self.api
        async with unit_of_work(self.runtime.sessionmaker) as session:
            account = await AccountRepository(session).get(who.user_id)
            customer_id = account.stripe_customer_id if account else None
        if customer_id is None:
            raise NoCustomer()
        key = idempotency_key("portal", who.user_id, customer_id, self._bucket())
        return await api.create_portal_session(customer_id, f"{self.settings.app_url}/billing", key)

    async def resync(self, user_id: uuid.UUID) -> tuple[int, EntitlementResult]:
        """Fetch the user's subscriptions from Stripe and apply them as of now."""
        api = self.api
        async with unit_of_work(self.runtime.sessionmaker) as session:
            account = await AccountRepository(session).get(user_id)
            customer_id = account.stripe_customer_id if account else None
        if customer_id is None:
            raise NoCustomer()
        # What Stripe says now is newer than any event created before we asked; a webhook
        # created after this instant still wins over the snapshot.
        asked_at = datetime.now(UTC)
        found = await api.list_subscriptions(customer_id)
        version = Version(created=asked_at, event_id=f"resync:{asked_at.isoformat()}")
        async with unit_of_work(self.runtime.sessionmaker) as session:
            billing = BillingService(session, self.settings)
            for obj in found:
                await billing.apply_subscription(subscription_state(obj), version, user_id=user_id)
            result = await billing.refresh_entitlement(user_id)
        self.runtime.relay.wake()
        return len(found), result
