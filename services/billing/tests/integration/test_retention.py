"""Old webhook records are pruned; recent ones keep stopping duplicates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.models import ProcessedEvent
from billing.repository import ProcessedEventRepository
from servicekit.db import unit_of_work

pytestmark = pytest.mark.integration


class TestProcessedEventRetention:
    """Pruning forgets only what is older than the retention."""

    async def test_prune_removes_only_old_records(
        self, db: async_sessionmaker[AsyncSession]
    ) -> None:
        now = datetime.now(UTC)
        async with unit_of_work(db) as session:
            session.add_all(
                [
                    ProcessedEvent(
                        stripe_event_id="evt_old", type="x", received_at=now - timedelta(days=40)
                    ),
                    ProcessedEvent(stripe_event_id="evt_new", type="x", received_at=now),
                ]
            )
        async with unit_of_work(db) as session:
            pruned = await ProcessedEventRepository(session).prune(now - timedelta(days=30))
        async with db() as session:
            left = (await session.scalars(select(ProcessedEvent.stripe_event_id))).all()
        assert pruned == 1
        assert left == ["evt_new"]
        async with unit_of_work(db) as session:
            assert await ProcessedEventRepository(session).record("evt_new", "x", {}) is False
