"""What the staging service consumes: queued images, settle requests and deletions."""

from __future__ import annotations

from typing import Any

from contracts.events import Envelope, ImageDeleted, ImageQueued, ImageSettle, ProjectDeleted
from contracts.topology import STAGING_CANCELLATIONS, STAGING_JOBS
from servicekit.outbox import apply_once
from servicekit.runtime import Runtime
from servicekit.storage import Storage
from staging.service import Cancellations, JobRunner


def register(runtime: Runtime, runner: JobRunner, storage: Storage) -> None:
    """Subscribe the staging consumers."""
    cancellations = Cancellations(storage)

    async def on_deleted(envelope: Envelope[Any]) -> None:
        """Cancel pending work of deleted images and remove their stored photos."""
        await apply_once(
            runtime.sessionmaker, STAGING_CANCELLATIONS.name, envelope, cancellations.forget_images
        )

    runtime.consumer(
        STAGING_JOBS,
        {ImageQueued.routing_key: ImageQueued, ImageSettle.routing_key: ImageSettle},
        runner.handle,
        on_give_up=runner.give_up,
    )
    runtime.consumer(
        STAGING_CANCELLATIONS,
        {ImageDeleted.routing_key: ImageDeleted, ProjectDeleted.routing_key: ProjectDeleted},
        on_deleted,
    )
