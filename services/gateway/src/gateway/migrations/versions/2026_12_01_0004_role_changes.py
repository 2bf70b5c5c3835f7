"""role_changes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the audit log of role changes."""
    op.create_table(
        "role_changes",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("user_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("old_role", sa.Text()),
        sa.Column("new_role", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text()),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("id", name="pk_role_changes"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_role_changes_user_id_users",
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("source IN ('sign-in', 'admin-api', 'cli')", name="source"),
    )
    op.create_index("ix_role_changes_user_id_id", "role_changes", ["user_id", "id"])


def downgrade() -> None:
    """Drop what `upgrade` created."""
    op.drop_table("role_changes")
