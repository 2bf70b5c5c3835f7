"""The renewal grace last announced; invoices' hosted links.

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
        "announced_entitlements",
        sa.Column("renewal_grace_until", sa.DateTime(timezone=True)),
    )
    op.add_column("invoices", sa.Column("hosted_invoice_url", sa.Text()))


def downgrade() -> None:
    op.drop_column("invoices", "hosted_invoice_url")
    op.drop_column("announced_entitlements", "renewal_grace_until")
