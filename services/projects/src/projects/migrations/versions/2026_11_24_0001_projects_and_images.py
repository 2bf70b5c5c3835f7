"""Projects, images, entitlements, usage charges, outbox and inbox.

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

UUID = postgresql.UUID(as_uuid=True)
NOW = sa.text("now()")


def upgrade() -> None:
    image_status = postgresql.ENUM(
        "queued", "processing", "ready", "error", name="image_status", create_type=False
    )
    image_status.create(op.get_bind(), checkfirst=True)
    op.create_table(
        "projects",
        sa.Column("id", UUID, server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_projects"),
    )
    op.create_index("ix_projects_user_id", "projects", ["user_id"])
    op.create_index("ix_projects_user_id_created_at", "projects", ["user_id", "created_at", "id"])
    op.create_table(
        "images",
        sa.Column("id", UUID, server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("project_id", UUID, nullable=False),
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("original_url", sa.Text(), nullable=False),
        sa.Column("original_key", sa.Text(), nullable=False),
        sa.Column("original_filename", sa.Text()),
        sa.Column("staged_url", sa.Text()),
        sa.Column("staged_key", sa.Text()),
        sa.Column("room_type", sa.Text()),
        sa.Column("style", sa.Text()),
        sa.Column("seed", sa.BigInteger()),
        sa.Column("status", image_status, server_default=sa.text("'queued'"), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("cost_usd", sa.Numeric(10, 4)),
        sa.Column("model_used", sa.Text()),
        sa.Column("processing_time_ms", sa.Integer()),
        sa.Column("replicate_prediction_id", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name="fk_images_project_id_projects",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_images"),
        sa.CheckConstraint("seed IS NULL OR seed BETWEEN 0 AND 4294967295", name="ck_images_seed"),
    )
    op.create_index("ix_images_project_id", "images", ["project_id"])
    op.create_index("ix_images_user_id", "images", ["user_id"])
    op.create_index("ix_images_project_id_created_at", "images", ["project_id", "created_at"])
    op.create_table(
        "entitlements",
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("plan_code", sa.Text(), server_default=sa.text("'free'"), nullable=False),
        sa.Column("monthly_limit", sa.Integer(), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True)),
        sa.Column("period_end", sa.DateTime(timezone=True)),
        sa.Column("status", sa.Text(), server_default=sa.text("'active'"), nullable=False),
        sa.Column("source_occurred_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_entitlements"),
    )
    op.create_table(
        "usage_charges",
        sa.Column("id", UUID, server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("image_id", UUID, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("charged_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage_charges"),
    )
    op.create_index(
        "ix_usage_charges_user_id_charged_at", "usage_charges", ["user_id", "charged_at"]
    )
    create_outbox_and_inbox()


def downgrade() -> None:
    drop_outbox_and_inbox()
    op.drop_table("usage_charges")
    op.drop_table("entitlements")
    op.drop_table("images")
    op.drop_table("projects")
    postgresql.ENUM(name="image_status").drop(op.get_bind(), checkfirst=True)
