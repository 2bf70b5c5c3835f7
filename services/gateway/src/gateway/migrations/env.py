"""Alembic environment for the gateway database."""

from alembic import context

from gateway.models import Base
from servicekit.migrations import run_migrations

url = context.config.attributes.get("database_url") or context.config.get_main_option(
    "sqlalchemy.url"
)
run_migrations(Base.metadata, url)
