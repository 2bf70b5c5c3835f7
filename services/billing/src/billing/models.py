"""Tables owned by the billing service."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKey, Integer, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from servicekit.db import Base
from servicekit.outbox import InboxMessage, OutboxMessage

__all__ = [
    "Account",
    "AnnouncedEntitlement",
    "Base",
    "Comp",
    "DeletedCustomer",
    "InboxMessage",
    "Invoice",
    "OutboxMessage",
    "Plan",
    "ProcessedEvent",
    "Subscription",
]


def _uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


class Plan(Base):
    """A subscription plan and its monthly allowance."""

    __tablename__ = "plans"

    id: Mapped[uuid.UUID] = _uuid_pk()
    code: Mapped[str] = mapped_column(Text, unique=True)
    price_id: Mapped[str | None] = mapped_column(Text, unique=True)
    monthly_limit: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(Text)
    price_cents: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    currency: Mapped[str] = mapped_column(Text, server_default=text("'usd'"))
    sort_order: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class Account(Base):
    """A user as billing knows them (announced by the gateway's `user.created`)."""

    __tablename__ = "accounts"

    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    email: Mapped[str | None] = mapped_column(Text)
    stripe_customer_id: Mapped[str | None] = mapped_column(Text, unique=True)
    created_at: Mapped[datetime] = _created()


class Subscription(Base):
    """A Stripe subscription's latest known state."""

    __tablename__ = "subscriptions"

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    stripe_subscription_id: Mapped[str] = mapped_column(Text, unique=True)
    status: Mapped[str] = mapped_column(Text)
    price_id: Mapped[str | None] = mapped_column(Text)
    current_period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    current_period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    canceled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_at_period_end: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()
    stripe_customer_id: Mapped[str | None] = mapped_column(Text, index=True)
    stripe_event_created: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stripe_event_id: Mapped[str | None] = mapped_column(Text)


class Invoice(Base):
    """A Stripe invoice (amounts in cents)."""

    __tablename__ = "invoices"

    id: Mapped[uuid.UUID] = _uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    stripe_invoice_id: Mapped[str] = mapped_column(Text, unique=True)
    stripe_subscription_id: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    amount_due: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    amount_paid: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    currency: Mapped[str | None] = mapped_column(Text)
    invoice_number: Mapped[str | None] = mapped_column(Text)
    hosted_invoice_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()
    stripe_customer_id: Mapped[str | None] = mapped_column(Text)
    stripe_event_created: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stripe_event_id: Mapped[str | None] = mapped_column(Text)


class ProcessedEvent(Base):
    """A Stripe webhook event already applied (recorded first, insert-or-nothing)."""

    __tablename__ = "processed_events"

    id: Mapped[uuid.UUID] = _uuid_pk()
    stripe_event_id: Mapped[str] = mapped_column(Text, unique=True)
    type: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    received_at: Mapped[datetime] = _created()


class DeletedCustomer(Base):
    """A Stripe customer deleted in Stripe; it is never linked to anyone again."""

    __tablename__ = "deleted_customers"

    stripe_customer_id: Mapped[str] = mapped_column(Text, primary_key=True)
    user_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    deleted_at: Mapped[datetime] = _created()


class Comp(Base):
    """A plan granted by an admin without Stripe, optionally until a date."""

    __tablename__ = "comps"

    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    plan_code: Mapped[str] = mapped_column(Text, ForeignKey("plans.code"))
    until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    granted_by: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = _created()


class AnnouncedEntitlement(Base):
    """The entitlement last announced for a user; its row lock orders announcements."""

    __tablename__ = "announced_entitlements"

    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    plan_code: Mapped[str] = mapped_column(Text, server_default=text("'free'"))
    monthly_limit: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'free'"))
    source: Mapped[str] = mapped_column(Text, server_default=text("'free'"))
    period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    stripe_subscription_id: Mapped[str | None] = mapped_column(Text)
    changes_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    renewal_grace_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    announced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = _created()
