"""Billing rules: entitlements, subscription and invoice state, customers, comps."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.entitlements import (
    GRANTING_STATUSES,
    CompFacts,
    EntitlementResult,
    PlanTerms,
    SubscriptionFacts,
    compute_entitlement,
)
from billing.models import Comp, Subscription
from billing.repository import (
    AccountRepository,
    CompRepository,
    DeletedCustomerRepository,
    EntitlementRepository,
    InvoiceRepository,
    PlanRepository,
    SubscriptionRepository,
)
from billing.settings import BillingSettings
from billing.stripe_objects import InvoiceState, SubscriptionState, Version
from contracts.enums import PlanCode
from contracts.events import CustomerLinked, SubscriptionUpdated
from servicekit.db import unit_of_work
from servicekit.outbox import add_event

logger = logging.getLogger(__name__)

PRODUCER = "billing"

UNKNOWN_PRICES = Counter(
    "billing_unknown_price_total",
    "Paid-up subscription states received whose price matches no plan",
)
UNKNOWN_PRICE_SUBSCRIPTIONS = Gauge(
    "billing_unknown_price_subscriptions",
    "Paid-up subscriptions whose price matches no plan (set by the entitlement sweeper)",
)


@dataclass(frozen=True)
class BillingView:
    """What a user (or an admin looking at them) sees of their billing state."""

    entitlement: EntitlementResult
    subscription: Subscription | None
    comp: Comp | None
    has_customer: bool


class BillingService:
    """Rules over one unit of work; never commits."""

    def __init__(
        self,
        session: AsyncSession,
        settings: BillingSettings,
        *,
        correlation_id: str | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.correlation_id = correlation_id
        self.plans = PlanRepository(session)
        self.accounts = AccountRepository(session)
        self.deleted_customers = DeletedCustomerRepository(session)
        self.subscriptions = SubscriptionRepository(session)
        self.invoices = InvoiceRepository(session)
        self.comps = CompRepository(session)
        self.entitlements = EntitlementRepository(session)

    async def compute(
        self,
        user_id: uuid.UUID,
        now: datetime | None = None,
        *,
        previous_plan: str | None = None,
    ) -> EntitlementResult:
        """The entitlement in force for a user now, from what is stored."""
        now = now or datetime.now(UTC)
        by_price, by_code = await self.plans.terms()
        if previous_plan is None:
            announced = await self.entitlements.get(user_id)
            if announced is not None and announced.announced_at is not None:
                previous_plan = announced.plan_code
        subs = await self.subscriptions.live_for(user_id)
        comp = await self.comps.get(user_id)
        free = by_code.get(PlanCode.FREE.value, PlanTerms("free", self.settings.limit_free))
        return compute_entitlement(
            subscriptions=[
                SubscriptionFacts(
                    stripe_subscription_id=s.stripe_subscription_id,
                    status=s.status,
                    price_id=s.price_id,
                    current_period_start=s.current_period_start,
                    current_period_end=s.current_period_end,
                    cancel_at=s.cancel_at,
                    cancel_at_period_end=s.cancel_at_period_end,
                    canceled_at=s.canceled_at,
                )
                for s in subs
            ],
            comp=CompFacts(comp.plan_code, comp.until) if comp else None,
            plans_by_price=by_price,
            plans_by_code=by_code,
            free=free,
            grace=timedelta(days=self.settings.past_due_grace_days),
            renewal_grace=timedelta(seconds=self.settings.renewal_grace_seconds),
            now=now,
            previous=by_code.get(previous_plan) if previous_plan else None,
        )

    async def refresh_entitlement(self, user_id: uuid.UUID) -> EntitlementResult:
        """Recompute a user's entitlement and announce it (through the outbox) if it changed."""
        row = await self.entitlements.lock(user_id)
        now = datetime.now(UTC)
        result = await self.compute(
            user_id, now, previous_plan=row.plan_code if row.announced_at else None
        )
        previous = (
            EntitlementResult(
                plan_code=row.plan_code,
                monthly_limit=row.monthly_limit,
                status=row.status,
                source=row.source,
                period_start=row.period_start,
                period_end=row.period_end,
                renewal_grace_until=row.renewal_grace_until,
            )
            if row.announced_at is not None and row.period_start and row.period_end
            else None
        )
        row.changes_at = result.changes_at
        row.source = result.source
        row.stripe_subscription_id = result.stripe_subscription_id
        row.updated_at = now
        if previous is not None and previous.announces_same(result):
            return result
        row.plan_code = result.plan_code
        row.monthly_limit = result.monthly_limit
        row.status = result.status
        row.period_start = result.period_start
        row.period_end = result.period_end
        row.renewal_grace_until = result.renewal_grace_until
        row.announced_at = now
        free = await self.plans.get(PlanCode.FREE.value)
        add_event(
            self.session,
            SubscriptionUpdated(
                user_id=user_id,
                plan_code=PlanCode(result.plan_code),
                monthly_limit=result.monthly_limit,
                period_start=result.period_start,
                period_end=result.period_end,
                status=result.status,
                renewal_grace_until=result.renewal_grace_until,
                fallback_plan_code=PlanCode.FREE,
                fallback_limit=free.monthly_limit if free else self.settings.limit_free,
            ),
            producer=PRODUCER,
            correlation_id=self.correlation_id,
        )
        return result

    async def view(self, user_id: uuid.UUID) -> BillingView:
        """The user's entitlement, subscription, comp and whether Stripe knows them."""
        result = await self.compute(user_id)
        subs = await self.subscriptions.live_for(user_id)
        current = next(
            (s for s in subs if s.stripe_subscription_id == result.stripe_subscription_id),
            subs[0] if subs else None,
        )
        account = await self.accounts.get(user_id)
        return BillingView(
            entitlement=result,
            subscription=current,
            comp=await self.comps.get(user_id),
            has_customer=bool(account and account.stripe_customer_id),
        )

    async def link_customer(self, user_id: uuid.UUID, customer_id: str) -> bool:
        """Link a Stripe customer to a user (announcing it); False if it cannot or did not."""
        if await self.deleted_customers.get(customer_id) is not None:
            logger.info("not linking %s: the customer was deleted in Stripe", customer_id)
            return False
        owner = await self.accounts.user_for_customer(customer_id)
        if owner is not None:
            if owner != user_id:
                logger.warning("customer %s already belongs to another user", customer_id)
            return False
        if not await self.accounts.link_customer(user_id, customer_id):
            return False
        add_event(
            self.session,
            CustomerLinked(user_id=user_id, stripe_customer_id=customer_id),
            producer=PRODUCER,
            correlation_id=self.correlation_id,
        )
        return True

    async def forget_customer(
        self, customer_id: str, hint: uuid.UUID | None = None
    ) -> uuid.UUID | None:
        """A customer was deleted in Stripe: unlink it for good; the user it belonged to."""
        user_id = await self.accounts.unlink_customer(customer_id)
        if user_id is None:
            tombstone = await self.deleted_customers.get(customer_id)
            user_id = (tombstone.user_id if tombstone else None) or hint
        await self.deleted_customers.add(customer_id, user_id)
        return user_id

    async def owner_of(
        self,
        customer_id: str | None,
        hint: uuid.UUID | None,
        subscription_id: str | None = None,
    ) -> uuid.UUID | None:
        """Who a Stripe object belongs to: by customer, then our metadata, then subscription."""
        if customer_id:
            owner = await self.accounts.user_for_customer(customer_id)
            if owner is not None:
                return owner
            tombstone = await self.deleted_customers.get(customer_id)
            if tombstone is not None and tombstone.user_id is not None:
                return tombstone.user_id
        if hint is not None:
            return hint
        if subscription_id:
            return await self.subscriptions.user_for(subscription_id)
        return None

    async def apply_subscription(
        self, state: SubscriptionState, version: Version, *, user_id: uuid.UUID | None = None
    ) -> uuid.UUID | None:
        """Store a subscription state unless a newer one is stored, then refresh the owner."""
        owner = user_id or await self.owner_of(
            state.stripe_customer_id, state.user_hint, state.stripe_subscription_id
        )
        if owner is None:
            logger.warning(
                "subscription %s belongs to no known user; ignored", state.stripe_subscription_id
            )
            return None
        if state.stripe_customer_id and state.user_hint == owner:
            await self.link_customer(owner, state.stripe_customer_id)
        if await self.subscriptions.apply(owner, state, version):
            if state.status in GRANTING_STATUSES:
                await self._check_price(owner, state)
            await self.refresh_entitlement(owner)
        return owner

    async def _check_price(self, owner: uuid.UUID, state: SubscriptionState) -> None:
        """Be loud about a paid-up subscription whose price matches no plan."""
        by_price, _ = await self.plans.terms()
        if state.price_id in by_price:
            return
        UNKNOWN_PRICES.inc()
        logger.error(
            "subscription %s of user %s is %s with price %s, which matches no plan: the user "
            "keeps their previous entitlement until a plan is configured with this price",
            state.stripe_subscription_id,
            owner,
            state.status,
            state.price_id or "(none)",
        )

    async def apply_invoice(self, state: InvoiceState, version: Version) -> uuid.UUID | None:
        """Store an invoice state unless a newer one is stored; a paid one renews its period."""
        owner = await self.owner_of(
            state.stripe_customer_id, state.user_hint, state.stripe_subscription_id
        )
        if owner is None:
            logger.warning("invoice %s belongs to no known user; ignored", state.stripe_invoice_id)
            return None
        await self.invoices.apply(owner, state, version)
        if state.status != "paid":
            return owner
        sub_id, start, end = (
            state.stripe_subscription_id,
            state.service_period_start,
            state.service_period_end,
        )
        if sub_id and start and end and await self.subscriptions.user_for(sub_id) == owner:
            await self.subscriptions.advance_period(sub_id, start, end)
        # A paid renewal is news even while its subscription event is late.
        await self.refresh_entitlement(owner)
        return owner

    async def grant_comp(
        self, user_id: uuid.UUID, plan_code: str, until: datetime | None, by: uuid.UUID
    ) -> EntitlementResult:
        """Grant a plan without Stripe and announce the resulting entitlement."""
        await self.comps.grant(user_id, plan_code, until, by)
        return await self.refresh_entitlement(user_id)

    async def revoke_comp(self, user_id: uuid.UUID) -> EntitlementResult:
        """Take a comp back and announce the resulting entitlement."""
        await self.comps.revoke(user_id)
        return await self.refresh_entitlement(user_id)


async def next_entitlement_change(
    sessionmaker: async_sessionmaker[AsyncSession], settings: BillingSettings
) -> datetime | None:
    """When the earliest entitlement changes by itself; also refreshes the unknown-price gauge."""
    async with unit_of_work(sessionmaker) as session:
        billing = BillingService(session, settings)
        UNKNOWN_PRICE_SUBSCRIPTIONS.set(await billing.subscriptions.count_unknown_prices())
        return await billing.entitlements.next_due()


async def refresh_due_entitlements(
    sessionmaker: async_sessionmaker[AsyncSession], settings: BillingSettings, *, batch: int = 100
) -> int:
    """Re-announce entitlements that time alone changed (a comp or grace ended, a month began)."""
    async with unit_of_work(sessionmaker) as session:
        billing = BillingService(session, settings)
        due = await billing.entitlements.due(datetime.now(UTC), batch)
        for user_id in due:
            await billing.refresh_entitlement(user_id)
    return len(due)
