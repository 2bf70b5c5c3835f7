"""Staging's self-healing passes: the job reconciler, the orphan sweeper and retention.

Each pass runs under `servicekit.periodic` (one replica per pass, in one transaction). The
reconciler does not stage anything itself: it hands an abandoned job back (which fences out a
worker that may still hold it) and asks the jobs queue to settle it, so the work runs on a
worker with the consumer's retries, and a job that cannot finish in time fails with a reason.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.enums import JobStatus
from contracts.events import ImageFailed, ImageSettle
from contracts.reasons import FailureReason
from servicekit.outbox import add_event
from servicekit.periodic import every, run_once
from servicekit.storage import Storage
from staging.models import Job
from staging.repository import JobRepository, SettingRepository
from staging.service import DELETED_REASON, PRODUCER
from staging.settings import StagingSettings

logger = logging.getLogger(__name__)

RECONCILE_TASK = "staging.reconcile"
SWEEP_TASK = "staging.sweep"
SWEEP_CURSOR = "staging.sweep_cursor"

RECONCILED = Counter(
    "staging_jobs_reconciled_total", "Abandoned jobs the reconciler settled", ["outcome"]
)
SWEPT = Counter("staging_objects_swept_total", "Orphaned staged objects removed")


@dataclass(frozen=True)
class Reconciled:
    """What one reconcile pass did."""

    resettled: int = 0
    failed: int = 0
    deleted: int = 0


@dataclass(frozen=True)
class Swept:
    """What one sweep pass did."""

    orphans_removed: int = 0
    jobs_deleted: int = 0
    cancellations_deleted: int = 0


def parse_staged_key(key: str) -> tuple[uuid.UUID, int] | None:
    """The image and attempt of `staged/{user}/{image}/{attempt}[-{run}].ext`, if it is one."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "staged":
        return None
    try:
        image_id = uuid.UUID(parts[2])
        attempt = int(parts[3].split(".", 1)[0].split("-", 1)[0])
    except ValueError:
        return None
    return image_id, attempt


class Maintenance:
    """The periodic passes of one staging replica."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        storage: Storage,
        settings: StagingSettings,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.storage = storage
        self.settings = settings

    async def reconcile(self, session: AsyncSession) -> Reconciled:
        """Settle jobs nobody works on: lapsed leases and queued jobs left untouched."""
        cfg = self.settings
        now = datetime.now(UTC)
        jobs = JobRepository(session)
        stale = await jobs.stale(
            lapsed_before=now - timedelta(seconds=cfg.job_lease_margin_seconds),
            untouched_before=now - timedelta(seconds=cfg.job_stale_seconds),
            limit=cfg.reconcile_batch,
        )
        cancelled = await jobs.cancelled_among([job.image_id for job in stale])
        deadline = now - timedelta(seconds=cfg.job_deadline_seconds)
        resettled = failed = deleted = 0
        for job in stale:
            if job.image_id in cancelled:
                _finish(job, now, DELETED_REASON)
                deleted += 1
            elif job.created_at < deadline and job.result_key is None:
                hours = cfg.job_deadline_seconds / 3600
                reason = FailureReason.TOOK_TOO_LONG.value
                _finish(job, now, reason)
                job.detail = f"the reconciler stopped the job: not finished within {hours:g} hours"
                add_event(
                    session,
                    ImageFailed(
                        image_id=job.image_id,
                        user_id=job.user_id,
                        attempt=job.attempt,
                        reason=reason,
                        backend=job.backend,
                    ),
                    producer=PRODUCER,
                )
                failed += 1
            else:
                # Handing the job back fences out its holder (its fenced writes need it
                # processing); the settle request runs it again on a worker, resuming any
                # prediction and completing from any stored result.
                job.status = JobStatus.QUEUED
                job.lease_until = None
                job.updated_at = now
                add_event(session, ImageSettle.model_validate(job.payload_json), producer=PRODUCER)
                resettled += 1
        RECONCILED.labels("resettled").inc(resettled)
        RECONCILED.labels("failed").inc(failed)
        RECONCILED.labels("deleted").inc(deleted)
        if stale:
            logger.info(
                "reconciled %d job(s): %d re-run, %d failed, %d deleted",
                len(stale),
                resettled,
                failed,
                deleted,
            )
        return Reconciled(resettled=resettled, failed=failed, deleted=deleted)

    async def sweep(self, session: AsyncSession) -> Swept:
        """Remove orphaned staged objects, then old finished jobs and old cancellations."""
        orphans = await self._sweep_orphans(session)
        jobs, cancellations = await self._retention(session)
        return Swept(orphans, jobs, cancellations)

    async def _sweep_orphans(self, session: AsyncSession) -> int:
        cfg = self.settings
        settings = SettingRepository(session)
        cursor = (await settings.get(SWEEP_CURSOR) or {}).get("after")
        older_than = datetime.now(UTC) - timedelta(seconds=cfg.orphan_grace_seconds)
        listed = await self.storage.list(
            "staged/", older_than=older_than, limit=cfg.sweep_batch, start_after=cursor
        )
        # Resume after the last key next time, and start over once the listing is exhausted.
        next_cursor = listed[-1].key if len(listed) >= cfg.sweep_batch else None
        await settings.put(SWEEP_CURSOR, {"after": next_cursor}, None)
        parsed = {obj.key: parse_staged_key(obj.key) for obj in listed}
        image_ids = sorted({p[0] for p in parsed.values() if p is not None})
        jobs = JobRepository(session)
        cancelled = await jobs.cancelled_among(image_ids)
        attempts: dict[tuple[uuid.UUID, int], Job] = {
            (job.image_id, job.attempt): job for job in await jobs.for_images(image_ids)
        }
        orphans: list[str] = []
        for key, found in parsed.items():
            if found is None:
                continue
            image_id, attempt = found
            job = attempts.get((image_id, attempt))
            if image_id in cancelled:
                orphans.append(key)
            elif job is not None and key not in (job.staged_key, job.result_key):
                # A run that never recorded its result (it crashed, or lost its lease and
                # could not remove it). Without any job row the object may be a finished
                # image's photo whose job was deleted by retention: it stays.
                orphans.append(key)
        if orphans:
            await self.storage.remove(*orphans)
            SWEPT.inc(len(orphans))
            logger.info("removed %d orphaned staged object(s)", len(orphans))
        return len(orphans)

    async def _retention(self, session: AsyncSession) -> tuple[int, int]:
        cfg = self.settings
        now = datetime.now(UTC)
        jobs = JobRepository(session)
        deleted = await jobs.delete_finished(
            now - timedelta(seconds=cfg.job_retention_seconds), cfg.sweep_batch
        )
        # A completed job's photo now belongs to the image in projects; a stored result that
        # never became the staged photo belongs to nobody.
        unused = [j.result_key for j in deleted if j.result_key and j.result_key != j.staged_key]
        if unused:
            await self.storage.remove(*unused)
        forgotten = await jobs.delete_cancellations(
            now - timedelta(seconds=cfg.cancellation_retention_seconds), cfg.sweep_batch
        )
        if deleted or forgotten:
            logger.info("retention: %d job(s), %d cancellation(s) deleted", len(deleted), forgotten)
        return len(deleted), forgotten

    async def reconcile_once(self) -> Reconciled | None:
        """One reconcile pass now (None if another replica is running one)."""
        result: Any = await run_once(self.sessionmaker, RECONCILE_TASK, self.reconcile)
        return result if isinstance(result, Reconciled) else None

    async def sweep_once(self) -> Swept | None:
        """One sweep pass now (None if another replica is running one)."""
        result: Any = await run_once(self.sessionmaker, SWEEP_TASK, self.sweep)
        return result if isinstance(result, Swept) else None

    def start(
        self, spawn: Callable[[Awaitable[Any], str], None], wake_relay: Callable[[], None]
    ) -> None:
        """Run the passes in the background for the life of the service."""
        spawn(
            every(
                self.sessionmaker,
                RECONCILE_TASK,
                self.settings.reconcile_interval_seconds,
                self.reconcile,
                after_pass=wake_relay,
            ),
            "staging-reconciler",
        )
        spawn(
            every(
                self.sessionmaker,
                SWEEP_TASK,
                self.settings.sweep_interval_seconds,
                self.sweep,
            ),
            "staging-sweeper",
        )


def _finish(job: Job, now: datetime, reason: str) -> None:
    job.status = JobStatus.FAILED
    job.error = reason
    job.finished_at = now
    job.updated_at = now
    job.lease_until = None
