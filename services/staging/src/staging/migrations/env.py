"""Alembic environment of the staging service."""

from alembic import context

from servicekit.migrations import run_migrations
from staging.models import Base

run_migrations(
    Base.metadata,
    str(
        context.config.attributes.get("database_url")
        or context.config.get_main_option("sqlalchemy.url")
    ),
)
