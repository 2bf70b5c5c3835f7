"""image_events: the log of image status changes that live updates stream and replay

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create `image_events`; its BIGSERIAL id is the SSE event id."""
    op.create_table(
        "image_events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("image_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("event_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_image_events"),
        # Every replica records every event: the first insert wins, the others find its id.
        sa.UniqueConstraint("event_id", name="uq_image_events_event_id"),
        sa.CheckConstraint("status IN ('queued', 'processing', 'ready', 'error')", name="status"),
    )
    # Replay reads one user's events in id order.
    op.create_index("ix_image_events_user_id_id", "image_events", ["user_id", "id"])
    op.create_index("ix_image_events_image_id", "image_events", ["image_id"])
    op.create_index("ix_image_events_created_at", "image_events", ["created_at"])


def downgrade() -> None:
    """Drop `image_events`."""
    op.drop_table("image_events")
