"""Self-healing: per-attempt queue time and settle requests on images; lookups by original key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "images",
        sa.Column(
            "attempt_queued_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    # Existing rows: their last change is the best known start of the current attempt.
    op.execute("UPDATE images SET attempt_queued_at = updated_at")
    op.add_column("images", sa.Column("settle_requested_at", sa.DateTime(timezone=True)))
    op.add_column(
        "images",
        sa.Column("settle_requests", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_index("ix_images_original_key", "images", ["original_key"])
    op.create_index(
        "ix_images_unfinished_updated_at",
        "images",
        ["updated_at"],
        postgresql_where=sa.text("status IN ('queued', 'processing')"),
    )


def downgrade() -> None:
    op.drop_index("ix_images_unfinished_updated_at", table_name="images")
    op.drop_index("ix_images_original_key", table_name="images")
    op.drop_column("images", "settle_requests")
    op.drop_column("images", "settle_requested_at")
    op.drop_column("images", "attempt_queued_at")
