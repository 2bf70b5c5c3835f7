"""Plans (seeded), accounts, subscriptions, invoices, processed events, outbox and inbox.

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
GEN_ID = sa.text("gen_random_uuid()")


def upgrade() -> None:
    plans = op.create_table(
        "plans",
        sa.Column("id", UUID, server_default=GEN_ID, nullable=False),
        sa.Column("code", sa.Text(), nullable=False),
        sa.Column("price_id", sa.Text()),
        sa.Column("monthly_limit", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("price_cents", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("currency", sa.Text(), server_default=sa.text("'usd'"), nullable=False),
        sa.Column("sort_order", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_plans"),
        sa.UniqueConstraint("code", name="uq_plans_code"),
        sa.UniqueConstraint("price_id", name="uq_plans_price_id"),
        sa.CheckConstraint("monthly_limit >= 0", name="ck_plans_monthly_limit"),
    )
    op.bulk_insert(
        plans,
        [
            {"code": "free", "name": "Free", "monthly_limit": 5, "price_cents": 0, "sort_order": 0},
            {
                "code": "pro",
                "name": "Pro",
                "monthly_limit": 100,
                "price_cents": 2900,
                "sort_order": 1,
            },
            {
                "code": "business",
                "name": "Business",
                "monthly_limit": 500,
                "price_cents": 9900,
                "sort_order": 2,
            },
        ],
    )
    op.create_table(
        "accounts",
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("email", sa.Text()),
        sa.Column("stripe_customer_id", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name="pk_accounts"),
        sa.UniqueConstraint("stripe_customer_id", name="uq_accounts_stripe_customer_id"),
    )
    op.create_table(
        "subscriptions",
        sa.Column("id", UUID, server_default=GEN_ID, nullable=False),
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("stripe_subscription_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("price_id", sa.Text()),
        sa.Column("current_period_start", sa.DateTime(timezone=True)),
        sa.Column("current_period_end", sa.DateTime(timezone=True)),
        sa.Column("cancel_at", sa.DateTime(timezone=True)),
        sa.Column("canceled_at", sa.DateTime(timezone=True)),
        sa.Column(
            "cancel_at_period_end", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subscriptions"),
        sa.UniqueConstraint(
            "stripe_subscription_id", name="uq_subscriptions_stripe_subscription_id"
        ),
    )
    op.create_index("ix_subscriptions_user_id", "subscriptions", ["user_id"])
    op.create_table(
        "invoices",
        sa.Column("id", UUID, server_default=GEN_ID, nullable=False),
        sa.Column("user_id", UUID, nullable=False),
        sa.Column("stripe_invoice_id", sa.Text(), nullable=False),
        sa.Column("stripe_subscription_id", sa.Text()),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("amount_due", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("amount_paid", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("currency", sa.Text()),
        sa.Column("invoice_number", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_invoices"),
        sa.UniqueConstraint("stripe_invoice_id", name="uq_invoices_stripe_invoice_id"),
    )
    op.create_index("ix_invoices_user_id", "invoices", ["user_id"])
    op.create_table(
        "processed_events",
        sa.Column("id", UUID, server_default=GEN_ID, nullable=False),
        sa.Column("stripe_event_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text()),
        sa.Column("payload", postgresql.JSONB()),
        sa.Column("received_at", sa.DateTime(timezone=True), server_default=NOW, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_processed_events"),
        sa.UniqueConstraint("stripe_event_id", name="uq_processed_events_stripe_event_id"),
    )
    create_outbox_and_inbox()


def downgrade() -> None:
    drop_outbox_and_inbox()
    op.drop_table("processed_events")
    op.drop_table("invoices")
    op.drop_table("subscriptions")
    op.drop_table("accounts")
    op.drop_table("plans")
