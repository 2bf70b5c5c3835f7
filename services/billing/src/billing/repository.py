"""Queries of the billing service; nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from billing.models import Account, Plan


class PlanRepository:
    """Plans."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list(self) -> Sequence[Plan]:
        """Every plan, cheapest first."""
        return (await self.session.scalars(select(Plan).order_by(Plan.sort_order))).all()

    async def configure(self, code: str, *, price_id: str | None, monthly_limit: int) -> None:
        """Apply the configured Stripe price and allowance to a plan."""
        await self.session.execute(
            update(Plan)
            .where(Plan.code == code)
            .values(price_id=price_id, monthly_limit=monthly_limit)
        )


class AccountRepository:
    """Accounts."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, user_id: uuid.UUID, email: str | None) -> None:
        """Remember a user; a second announcement changes nothing."""
        await self.session.execute(
            insert(Account).values(user_id=user_id, email=email).on_conflict_do_nothing()
        )
