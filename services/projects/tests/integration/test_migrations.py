"""The projects migrations build exactly the tables the models describe, both ways."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection

from projects import models
from projects.models import Base
from servicekit.db import create_engine
from servicekit.testing import downgrade, migrate

pytestmark = pytest.mark.integration


# Every service's models share one declarative base: compare only the tables projects owns.
PROJECTS_TABLES = frozenset(
    getattr(models, name).__tablename__
    for name in models.__all__
    if hasattr(getattr(models, name), "__tablename__")
)


def _ours(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    return type_ != "table" or name in PROJECTS_TABLES


def _diff(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"include_object": _ours})
    return list(compare_metadata(context, Base.metadata))


class TestMigrations:
    """Alembic history of the projects database."""

    async def test_head_matches_the_models_and_downgrades_cleanly(
        self, database_factory: Callable[..., Any]
    ) -> None:
        url = await database_factory("projects")
        engine = create_engine(url, pool_size=1)
        try:
            async with engine.connect() as conn:
                assert await conn.run_sync(_diff) == []
            await engine.dispose()
            await asyncio.to_thread(downgrade, "projects", url, "0002")
            await asyncio.to_thread(migrate, "projects", url)
            async with engine.connect() as conn:
                assert await conn.run_sync(_diff) == []
        finally:
            await engine.dispose()
