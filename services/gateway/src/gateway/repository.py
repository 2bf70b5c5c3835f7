"""Queries on the gateway's tables; nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.models import User


class UserRepository:
    """Reads and writes `users` inside the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: uuid.UUID) -> User | None:
        """The user with this id, if any."""
        return await self.session.get(User, user_id)

    async def get_by_sub(self, sub: str) -> User | None:
        """The user with this Auth0 subject, if any."""
        return (await self.session.scalars(select(User).where(User.auth0_sub == sub))).one_or_none()

    async def insert_if_absent(self, sub: str, *, email: str | None, role: str) -> User | None:
        """Insert a user; None when a concurrent request inserted the same subject first."""
        stmt = (
            insert(User)
            .values(auth0_sub=sub, email=email, role=role)
            .on_conflict_do_nothing(index_elements=[User.auth0_sub])
            .returning(User)
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def set_role(self, user_id: uuid.UUID, role: str) -> User | None:
        """Change a user's role; None when the user does not exist."""
        stmt = (
            update(User)
            .where(User.id == user_id)
            .values(role=role)
            .returning(User)
            .execution_options(synchronize_session=False, populate_existing=True)
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def set_stripe_customer(self, user_id: uuid.UUID, customer_id: str) -> bool:
        """Record the user's Stripe customer; False when the user does not exist."""
        stmt = (
            update(User)
            .where(User.id == user_id)
            .values(stripe_customer_id=customer_id)
            .returning(User.id)
            .execution_options(synchronize_session=False)
        )
        return (await self.session.scalars(stmt)).one_or_none() is not None

    async def page(
        self, *, limit: int, after: tuple[datetime, uuid.UUID] | None = None
    ) -> Sequence[User]:
        """Users newest first, strictly after the `(created_at, id)` cursor when given."""
        stmt = select(User).order_by(User.created_at.desc(), User.id.desc()).limit(limit)
        if after is not None:
            stmt = stmt.where(tuple_(User.created_at, User.id) < after)
        return (await self.session.scalars(stmt)).all()
