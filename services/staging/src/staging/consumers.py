"""What the staging service consumes: queued images and deletions."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.events import Envelope, ImageDeleted, ImageQueued, ProjectDeleted
from contracts.topology import STAGING_CANCELLATIONS, STAGING_JOBS
from servicekit.messaging import Consumer
from servicekit.outbox import apply_once
from servicekit.runtime import Runtime
from servicekit.storage import Storage
from staging.repository import JobRepository
from staging.service import JobRunner


def register(runtime: Runtime, runner: JobRunner, storage: Storage) -> None:
    """Subscribe the staging consumers."""

    async def on_deleted(envelope: Envelope[Any]) -> None:
        """Cancel pending work of deleted images and remove their stored photos."""

        async def effect(session: AsyncSession, env: Envelope[Any]) -> None:
            event = env.data
            ids = [event.image_id] if isinstance(event, ImageDeleted) else event.image_ids
            await JobRepository(session).cancel(ids)
            staged = [job.staged_key for job in await JobRepository(session).for_images(ids)]
            # Removal is idempotent: if it fails, the transaction rolls back and the retry
            # removes whatever is left.
            await storage.remove(*event.keys, *(k for k in staged if k))

        await apply_once(runtime.sessionmaker, STAGING_CANCELLATIONS.name, envelope, effect)

    Consumer(
        runtime.broker,
        STAGING_JOBS,
        {ImageQueued.routing_key: ImageQueued},
        runner.handle,
        on_give_up=runner.give_up,
    )
    Consumer(
        runtime.broker,
        STAGING_CANCELLATIONS,
        {ImageDeleted.routing_key: ImageDeleted, ProjectDeleted.routing_key: ProjectDeleted},
        on_deleted,
    )
