"""Alembic environment of the billing service."""

from alembic import context

from billing.models import Base
from servicekit.migrations import run_migrations

run_migrations(
    Base.metadata,
    str(
        context.config.attributes.get("database_url")
        or context.config.get_main_option("sqlalchemy.url")
    ),
)
