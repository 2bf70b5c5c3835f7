"""What the billing service consumes: new users."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from billing.repository import AccountRepository
from billing.service import BillingService
from billing.settings import BillingSettings
from contracts.events import Envelope, UserCreated
from contracts.topology import BILLING_USERS
from servicekit.outbox import apply_once
from servicekit.runtime import Runtime


async def remember_user(
    session: AsyncSession, envelope: Envelope[UserCreated], settings: BillingSettings
) -> None:
    """Open a billing account for a new user and announce their (free) entitlement."""
    await AccountRepository(session).add(envelope.data.user_id, envelope.data.email)
    # Billing is the one source of plan limits: projects learns the free allowance from this
    # announcement (a no-op if an entitlement was already announced, e.g. a fast checkout).
    billing = BillingService(session, settings, correlation_id=envelope.correlation_id)
    await billing.refresh_entitlement(envelope.data.user_id)


def register(runtime: Runtime, settings: BillingSettings) -> None:
    """Subscribe the billing consumers."""

    async def remember(session: AsyncSession, envelope: Envelope[UserCreated]) -> None:
        await remember_user(session, envelope, settings)

    async def on_user_created(envelope: Envelope[UserCreated]) -> None:
        if await apply_once(runtime.sessionmaker, BILLING_USERS.name, envelope, remember):
            runtime.relay.wake()

    runtime.consumer(BILLING_USERS, {UserCreated.routing_key: UserCreated}, on_user_created)
