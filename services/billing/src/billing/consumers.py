"""What the billing service consumes: new users."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from billing.repository import AccountRepository
from contracts.events import Envelope, UserCreated
from contracts.topology import BILLING_USERS
from servicekit.outbox import apply_once
from servicekit.runtime import Runtime


async def remember_user(session: AsyncSession, envelope: Envelope[UserCreated]) -> None:
    """Open a billing account for a new user (on the free plan until they subscribe)."""
    await AccountRepository(session).add(envelope.data.user_id, envelope.data.email)


def register(runtime: Runtime) -> None:
    """Subscribe the billing consumers."""

    async def on_user_created(envelope: Envelope[UserCreated]) -> None:
        await apply_once(runtime.sessionmaker, BILLING_USERS.name, envelope, remember_user)

    runtime.consumer(BILLING_USERS, {UserCreated.routing_key: UserCreated}, on_user_created)
