"""The gateway's tables: users (seed schema), role changes, image events, rate limits, tickets.

Outbox and inbox come from servicekit.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from servicekit.db import Base
from servicekit.outbox import InboxMessage, OutboxMessage

__all__ = [
    "Base",
    "ImageEvent",
    "InboxMessage",
    "OutboxMessage",
    "RateLimit",
    "RoleChange",
    "StreamTicket",
    "User",
]


class User(Base):
    """A person who signed in at least once, keyed by their Auth0 subject."""

    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    auth0_sub: Mapped[str] = mapped_column(Text, unique=True)
    stripe_customer_id: Mapped[str | None] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text, server_default=text("'user'"))
    email: Mapped[str | None] = mapped_column(Text)
    full_name: Mapped[str | None] = mapped_column(Text)
    company_name: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(Text)
    billing_address: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    profile_photo_url: Mapped[str | None] = mapped_column(Text)
    preferences: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    __table_args__ = (
        CheckConstraint("role IN ('user', 'admin')", name="role"),
        Index("ix_users_email", "email"),
        Index("ix_users_created_at_id", "created_at", "id"),
    )


class RoleChange(Base):
    """One change of a user's role: from what, to what, when, and who or what changed it."""

    __tablename__ = "role_changes"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("users.id", ondelete="CASCADE")
    )
    old_role: Mapped[str | None] = mapped_column(Text)
    new_role: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("source IN ('sign-in', 'admin-api', 'cli')", name="source"),
        Index("ix_role_changes_user_id_id", "user_id", "id"),
    )


class ImageEvent(Base):
    """An image status change as streamed to its owner; `id` is the SSE event id."""

    __tablename__ = "image_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    image_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    status: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("status IN ('queued', 'processing', 'ready', 'error')", name="status"),
        Index("ix_image_events_user_id_id", "user_id", "id"),
        Index("ix_image_events_image_id", "image_id"),
        Index("ix_image_events_created_at", "created_at"),
    )


class RateLimit(Base):
    """How many writes a user made in one fixed window."""

    __tablename__ = "rate_limits"

    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_rate_limits_window_start", "window_start"),)


class StreamTicket(Base):
    """A stream ticket already used; kept until it expires so it cannot be used again."""

    __tablename__ = "stream_tickets"

    jti: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_stream_tickets_expires_at", "expires_at"),)
