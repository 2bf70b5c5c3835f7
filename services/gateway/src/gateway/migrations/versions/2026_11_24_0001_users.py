"""users, outbox and inbox

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from servicekit.migrations import create_outbox_and_inbox, drop_outbox_and_inbox

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the seed `users` table and the gateway's outbox and inbox."""
    op.create_table(
        "users",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            server_default=sa.text("gen_random_uuid()"),
            nullable=False,
        ),
        sa.Column("auth0_sub", sa.Text(), nullable=False),
        sa.Column("stripe_customer_id", sa.Text()),
        sa.Column("role", sa.Text(), server_default=sa.text("'user'"), nullable=False),
        sa.Column("email", sa.Text()),
        sa.Column("full_name", sa.Text()),
        sa.Column("company_name", sa.Text()),
        sa.Column("phone", sa.Text()),
        sa.Column("billing_address", postgresql.JSONB()),
        sa.Column("profile_photo_url", sa.Text()),
        sa.Column(
            "preferences",
            postgresql.JSONB(),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("auth0_sub", name="uq_users_auth0_sub"),
        sa.CheckConstraint("role IN ('user', 'admin')", name="role"),
    )
    op.create_index("ix_users_email", "users", ["email"])
    # Admin listing pages through users by (created_at, id).
    op.create_index("ix_users_created_at_id", "users", ["created_at", "id"])
    create_outbox_and_inbox()


def downgrade() -> None:
    """Drop everything `upgrade` created."""
    drop_outbox_and_inbox()
    op.drop_index("ix_users_created_at_id", table_name="users")
    op.drop_index("ix_users_email", table_name="users")
    op.drop_table("users")
