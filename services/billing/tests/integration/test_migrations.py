"""The billing migrations build exactly the tables the models describe, both ways."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from billing import models
from servicekit.testing import assert_migrations_match_models

pytestmark = pytest.mark.integration


class TestMigrations:
    """Alembic history of the billing database."""

    async def test_head_matches_the_models_and_downgrades_cleanly(
        self, database_factory: Callable[..., Any]
    ) -> None:
        url = await database_factory("billing")
        await assert_migrations_match_models("billing", url, models, down_to="0001")
