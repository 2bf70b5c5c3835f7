"""Alembic environment of the projects service."""

from alembic import context

from projects.models import Base
from servicekit.migrations import run_migrations

run_migrations(
    Base.metadata,
    str(
        context.config.attributes.get("database_url")
        or context.config.get_main_option("sqlalchemy.url")
    ),
)
