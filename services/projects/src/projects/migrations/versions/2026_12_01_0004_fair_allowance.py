"""A fair allowance: charges released when an attempt fails; renewal grace and fallback plan.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("usage_charges", sa.Column("refunded_at", sa.DateTime(timezone=True)))
    op.add_column("usage_charges", sa.Column("refund_reason", sa.Text()))
    op.create_index("ix_usage_charges_image_id_attempt", "usage_charges", ["image_id", "attempt"])
    op.add_column("entitlements", sa.Column("renewal_grace_until", sa.DateTime(timezone=True)))
    op.add_column("entitlements", sa.Column("fallback_plan_code", sa.Text()))
    op.add_column("entitlements", sa.Column("fallback_limit", sa.Integer()))


def downgrade() -> None:
    op.drop_column("entitlements", "fallback_limit")
    op.drop_column("entitlements", "fallback_plan_code")
    op.drop_column("entitlements", "renewal_grace_until")
    op.drop_index("ix_usage_charges_image_id_attempt", table_name="usage_charges")
    op.drop_column("usage_charges", "refund_reason")
    op.drop_column("usage_charges", "refunded_at")
