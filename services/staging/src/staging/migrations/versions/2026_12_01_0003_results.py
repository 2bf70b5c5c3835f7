"""Stored results on jobs: the result's key, size and cost, so a retry reuses it.

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
    op.add_column("jobs", sa.Column("result_key", sa.Text()))
    op.add_column("jobs", sa.Column("size_bytes", sa.Integer()))
    op.add_column("jobs", sa.Column("cost_usd", sa.Double()))
    op.create_index("ix_jobs_status_updated_at", "jobs", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_status_updated_at", table_name="jobs")
    op.drop_column("jobs", "cost_usd")
    op.drop_column("jobs", "size_bytes")
    op.drop_column("jobs", "result_key")
