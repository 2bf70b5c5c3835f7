"""Alembic environment for the gateway database."""

from alembic import context

from gateway.models import Base
from servicekit.migrations import run_migrations

url = context.config.attributes.get("database_url") or context.config.get_main_option(
    "sqlalchemy.url"
)
if not url:
    raise RuntimeError("no database URL: pass database_url or set sqlalchemy.url")
run_migrations(Base.metadata, str(url))
