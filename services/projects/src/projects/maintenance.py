"""Self-healing passes of the projects service: the image reconciler and the sweepers.

Each runs periodically under `servicekit.periodic` (one replica per pass) and takes `now` as a
parameter, so tests can look hours ahead without waiting.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.enums import ImageStatus
from contracts.events import ImageFailed, ImageSettle
from projects.repository import IdempotencyRepository, ImageRepository
from projects.service import (
    GAVE_UP_REASON,
    ORIGINALS_PREFIX,
    PRODUCER,
    UPLOADS_PREFIX,
    attempt_event,
    release_charge,
)
from projects.settings import ProjectsSettings
from servicekit.outbox import add_event
from servicekit.periodic import every
from servicekit.runtime import Runtime
from servicekit.storage import Storage

logger = logging.getLogger(__name__)

SETTLE_REQUESTS = Counter(
    "projects_settle_requests_total", "image.settle requests sent for stuck attempts"
)
GAVE_UP = Counter("projects_images_given_up_total", "Attempts ended in error by the reconciler")
SWEPT = Counter("projects_swept_total", "Objects and rows removed by the sweepers", ["kind"])


@dataclass(frozen=True)
class Reconciled:
    """What one reconciler pass did."""

    settle_requested: int
    gave_up: int


async def reconcile_images(
    session: AsyncSession, settings: ProjectsSettings, *, now: datetime | None = None
) -> Reconciled:
    """Ask staging to settle stuck attempts, and end those past the deadline in `error`.

    An image is stuck when it has made no progress for `settle_after_seconds`; it is asked at
    most once per that period. Once its attempt is older than `give_up_after_seconds` and the
    last request went unanswered for a whole period, it ends in `error` (restage works on it);
    a late `image.ready` for that attempt still replaces the error.
    """
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settings.settle_after_seconds)
    deadline = now - timedelta(seconds=settings.give_up_after_seconds)
    images = await ImageRepository(session).unfinished_due(cutoff, settings.reconcile_batch_size)
    settle_requested = gave_up = 0
    for image in images:
        if image.settle_requests > 0 and image.attempt_queued_at < deadline:
            image.status = ImageStatus.ERROR
            image.error = GAVE_UP_REASON
            image.updated_at = now
            # Our failure, so the customer does not pay for it (a late success charges again).
            await release_charge(session, image, GAVE_UP_REASON)
            # Announced like staging's failures, so live views and integrators learn of it.
            add_event(
                session,
                ImageFailed(
                    image_id=image.id,
                    user_id=image.user_id,
                    attempt=image.attempt,
                    reason=GAVE_UP_REASON,
                ),
                producer=PRODUCER,
            )
            gave_up += 1
            logger.warning(
                "gave up on image %s attempt %s after %s settle requests",
                image.id,
                image.attempt,
                image.settle_requests,
            )
            continue
        image.settle_requested_at = now
        image.settle_requests += 1
        add_event(session, attempt_event(ImageSettle, image), producer=PRODUCER)
        settle_requested += 1
    SETTLE_REQUESTS.inc(settle_requested)
    GAVE_UP.inc(gave_up)
    if settle_requested or gave_up:
        logger.info("reconciler: %d settle requests, %d given up", settle_requested, gave_up)
    return Reconciled(settle_requested=settle_requested, gave_up=gave_up)


async def sweep_uploads(
    session: AsyncSession,
    storage: Storage,
    settings: ProjectsSettings,
    *,
    now: datetime | None = None,
) -> int:
    """Delete uploads older than the retention; how many went.

    Creating an image copies its upload, so an old upload is needed by nothing, except by
    images created before originals were copied, whose original is the upload itself.
    """
    now = now or datetime.now(UTC)
    older_than = now - timedelta(seconds=settings.upload_retention_seconds)
    return await _remove_unreferenced(session, storage, settings, UPLOADS_PREFIX, older_than)


async def sweep_orphan_originals(
    session: AsyncSession,
    storage: Storage,
    settings: ProjectsSettings,
    *,
    now: datetime | None = None,
) -> int:
    """Delete originals no image owns (a create that rolled back after its copy); how many went."""
    now = now or datetime.now(UTC)
    older_than = now - timedelta(seconds=settings.orphan_grace_seconds)
    return await _remove_unreferenced(session, storage, settings, ORIGINALS_PREFIX, older_than)


async def sweep_idempotency_keys(
    session: AsyncSession, settings: ProjectsSettings, *, now: datetime | None = None
) -> int:
    """Forget create requests answered longer ago than the retention; how many went."""
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=settings.idempotency_retention_seconds)
    removed = await IdempotencyRepository(session).delete_older_than(
        cutoff, settings.sweep_batch_size
    )
    SWEPT.labels("idempotency_keys").inc(removed)
    return removed


async def _remove_unreferenced(
    session: AsyncSession,
    storage: Storage,
    settings: ProjectsSettings,
    prefix: str,
    older_than: datetime,
) -> int:
    found = await storage.list(prefix, older_than=older_than, limit=settings.sweep_batch_size)
    keys = [obj.key for obj in found]
    owned = await ImageRepository(session).referenced_originals(keys)
    doomed = [key for key in keys if key not in owned]
    if doomed:
        await storage.remove(*doomed)
        SWEPT.labels(prefix.rstrip("/")).inc(len(doomed))
        logger.info("removed %d objects under %s", len(doomed), prefix)
    return len(doomed)


def start_maintenance(runtime: Runtime, storage: Storage, settings: ProjectsSettings) -> None:
    """Run the reconciler and the sweepers for the life of the service."""
    Work = Callable[[AsyncSession], Awaitable[object]]
    tasks: list[tuple[str, float, Work]] = [
        (
            "projects.reconcile-images",
            settings.reconcile_interval_seconds,
            functools.partial(reconcile_images, settings=settings),
        ),
        (
            "projects.sweep-uploads",
            settings.sweep_interval_seconds,
            functools.partial(sweep_uploads, storage=storage, settings=settings),
        ),
        (
            "projects.sweep-orphan-originals",
            settings.sweep_interval_seconds,
            functools.partial(sweep_orphan_originals, storage=storage, settings=settings),
        ),
        (
            "projects.sweep-idempotency-keys",
            settings.sweep_interval_seconds,
            functools.partial(sweep_idempotency_keys, settings=settings),
        ),
    ]
    for name, interval, work in tasks:
        # The reconciler's events wait in the outbox: wake the relay rather than its next poll.
        runtime.spawn(
            every(runtime.sessionmaker, name, interval, work, after_pass=runtime.relay.wake),
            name,
        )
