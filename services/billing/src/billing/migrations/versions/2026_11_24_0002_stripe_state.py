"""Out-of-order markers on subscriptions and invoices; comps, entitlements, deleted customers.

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

UUID = postgresql.UUID(as_uuid=True)
NOW = sa.text("now()")


def upgrade() -> None:
    for table in ("subscriptions", "invoices"):
        op.add_column(table, sa.Column("stripe_customer_id", sa.Text()))
        # The `created` of the Stripe event that wrote the row: an older event never overwrites.
        op.add_column(table, sa.Column("stripe_event_created", sa.DateTime(timezone=True)))
        op.add_column(table, sa.Column("stripe_event_id", sa.Text()))
    op.create_index("ix_subscriptions_stripe_customer_id", "subscriptions", ["stripe_customer_id"])
    op.create_table(
        "deleted_customers",
        sa.Column("stripe_customer_id", sa.Text(), nullable=False),
        sa.Column("user_id", UUID),
        sa.Column("deleted_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("stripe_customer_id", name="pk_deleted_customers"),
    )
    op.create_table(
        "comps",
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("plan_code", sa.Text(), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True)),
        sa.Column("granted_by", UUID),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_comps"),
        sa.ForeignKeyConstraint(["plan_code"], ["plans.code"], name="fk_comps_plan_code_plans"),
    )
    op.create_table(
        "announced_entitlements",
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("plan_code", sa.Text(), server_default=sa.text("'free'"), nullable=False),
        sa.Column("monthly_limit", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'free'"), nullable=False),
        sa.Column("source", sa.Text(), server_default=sa.text("'free'"), nullable=False),
        sa.Column("period_start", sa.DateTime(timezone=True)),
        sa.Column("period_end", sa.DateTime(timezone=True)),
        sa.Column("stripe_subscription_id", sa.Text()),
        sa.Column("changes_at", sa.DateTime(timezone=True)),
        sa.Column("announced_at", sa.DateTime(timezone=True)),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_announced_entitlements"),
    )
    op.create_index(
        "ix_announced_entitlements_changes_at", "announced_entitlements", ["changes_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_announced_entitlements_changes_at", table_name="announced_entitlements")
    op.drop_table("announced_entitlements")
    op.drop_table("comps")
    op.drop_table("deleted_customers")
    op.drop_index("ix_subscriptions_stripe_customer_id", table_name="subscriptions")
    for table in ("invoices", "subscriptions"):
        op.drop_column(table, "stripe_event_id")
        op.drop_column(table, "stripe_event_created")
        op.drop_column(table, "stripe_customer_id")
