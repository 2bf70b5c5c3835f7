"""Alembic environment for the gateway database."""

from alembic import context
from servicekit.migrations import run_migrations

from gateway.models import Base

url = context.config.attributes.get("database_url") or context.config.get_main_option(
    "sqlalchemy.url"
)
run_migrations(Base.metadata, url)
