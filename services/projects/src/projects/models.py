"""Tables owned by the projects service."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Mapped, mapped_column, relationship

from contracts.enums import ImageStatus
from servicekit.db import Base
from servicekit.outbox import InboxMessage, OutboxMessage

__all__ = [
    "Base",
    "Entitlement",
    "IdempotencyKey",
    "Image",
    "InboxMessage",
    "OutboxMessage",
    "Project",
    "UsageCharge",
]

image_status = Enum(
    ImageStatus,
    name="image_status",
    values_callable=lambda e: [m.value for m in e],
    create_type=False,
)


class Project(Base):
    """A set of photos, usually one listing."""

    __tablename__ = "projects"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    name: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    images: Mapped[list[Image]] = relationship(
        back_populates="project", lazy="raise", passive_deletes=True
    )

    __table_args__ = (Index("ix_projects_user_id_created_at", "user_id", "created_at", "id"),)


class Image(Base):
    """One uploaded photo and its staged result."""

    __tablename__ = "images"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    project_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    original_url: Mapped[str] = mapped_column(Text)
    original_key: Mapped[str] = mapped_column(Text, index=True)
    original_filename: Mapped[str | None] = mapped_column(Text)
    staged_url: Mapped[str | None] = mapped_column(Text)
    staged_key: Mapped[str | None] = mapped_column(Text)
    room_type: Mapped[str | None] = mapped_column(Text)
    style: Mapped[str | None] = mapped_column(Text)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[ImageStatus] = mapped_column(
        image_status, server_default=text("'queued'::image_status")
    )
    error: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    cost_usd: Mapped[Decimal | None] = mapped_column(Numeric(10, 4))
    model_used: Mapped[str | None] = mapped_column(Text)
    processing_time_ms: Mapped[int | None] = mapped_column(Integer)
    replicate_prediction_id: Mapped[str | None] = mapped_column(Text)
    attempt_queued_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    settle_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    settle_requests: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    project: Mapped[Project] = relationship(back_populates="images", lazy="raise")

    __table_args__ = (
        Index("ix_images_project_id_created_at", "project_id", "created_at"),
        # The reconciler's scan: only unfinished images, oldest progress first.
        Index(
            "ix_images_unfinished_updated_at",
            "updated_at",
            postgresql_where=text("status IN ('queued', 'processing')"),
        ),
    )


class Entitlement(Base):
    """The allowance billing announced for a user (`subscription.updated`)."""

    __tablename__ = "entitlements"

    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    plan_code: Mapped[str] = mapped_column(Text, server_default=text("'free'"))
    monthly_limit: Mapped[int] = mapped_column(Integer)
    period_start: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    period_end: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(Text, server_default=text("'active'"))
    renewal_grace_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Unrenewed past `period_end`, the plan holds until then (counted afresh from period_end)."""
    fallback_plan_code: Mapped[str | None] = mapped_column(Text)
    fallback_limit: Mapped[int | None] = mapped_column(Integer)
    """The plan and allowance once this entitlement lapses unrenewed."""
    source_occurred_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class UsageCharge(Base):
    """One attempt counted against a user's allowance (kept when the image is deleted).

    Reserved when the attempt is queued; released (`refunded_at`) when it ends in `error`, and
    taken again if the same attempt later succeeds (an admin retry).
    """

    __tablename__ = "usage_charges"

    id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")
    )
    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    image_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    attempt: Mapped[int] = mapped_column(Integer)
    charged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    refunded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refund_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_usage_charges_user_id_charged_at", "user_id", "charged_at"),
        # Not unique: the audit plants a duplicate charge to prove it finds one.
        Index("ix_usage_charges_image_id_attempt", "image_id", "attempt"),
    )


class IdempotencyKey(Base):
    """A create request already answered: its retry gets the same images, not new ones."""

    __tablename__ = "idempotency_keys"

    user_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    request_hash: Mapped[str] = mapped_column(Text)
    image_ids: Mapped[list[uuid.UUID] | None] = mapped_column(ARRAY(UUID(as_uuid=True)))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )
