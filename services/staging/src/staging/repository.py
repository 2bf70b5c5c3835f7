"""Queries of the staging service; nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from staging.models import JOB_TYPE, Cancellation, Job, Setting


class JobRepository:
    """Jobs and cancellations."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def ensure(
        self, image_id: uuid.UUID, user_id: uuid.UUID, attempt: int, payload: dict[str, Any]
    ) -> Job:
        """The job of this image attempt, created once however often the message arrives."""
        await self.session.execute(
            insert(Job)
            .values(
                image_id=image_id,
                user_id=user_id,
                attempt=attempt,
                type=JOB_TYPE,
                payload_json=payload,
                status="queued",
            )
            .on_conflict_do_nothing(constraint="uq_jobs_image_id_attempt")
        )
        stmt = (
            select(Job)
            .where(Job.image_id == image_id, Job.attempt == attempt)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return (await self.session.scalars(stmt)).one()

    async def get(self, job_id: uuid.UUID, *, lock: bool = False) -> Job | None:
        """A job by id."""
        stmt = select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def find(self, image_id: uuid.UUID, attempt: int) -> Job | None:
        """The job of this image attempt, locked, if it exists."""
        stmt = (
            select(Job)
            .where(Job.image_id == image_id, Job.attempt == attempt)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return (await self.session.scalars(stmt)).one_or_none()

    async def is_cancelled(self, image_id: uuid.UUID) -> bool:
        """Whether the image was deleted."""
        return await self.session.get(Cancellation, image_id) is not None

    async def cancel(self, image_ids: Sequence[uuid.UUID]) -> None:
        """Remember deleted images so their work is skipped."""
        if image_ids:
            await self.session.execute(
                insert(Cancellation)
                .values([{"image_id": i} for i in image_ids])
                .on_conflict_do_nothing()
            )

    async def cancelled_among(self, image_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these images were deleted."""
        if not image_ids:
            return set()
        rows = await self.session.scalars(
            select(Cancellation.image_id).where(Cancellation.image_id.in_(image_ids))
        )
        return set(rows)

    async def stop(self, image_ids: Sequence[uuid.UUID], reason: str, now: datetime) -> None:
        """Fail the unfinished jobs of these images, which fences out any worker running them."""
        if image_ids:
            await self.session.execute(
                update(Job)
                .where(Job.image_id.in_(image_ids), Job.status.in_(("queued", "processing")))
                .values(
                    status="failed", error=reason, finished_at=now, updated_at=now, lease_until=None
                )
            )

    async def for_images(self, image_ids: Sequence[uuid.UUID]) -> Sequence[Job]:
        """Every job of these images."""
        if not image_ids:
            return []
        return (await self.session.scalars(select(Job).where(Job.image_id.in_(image_ids)))).all()

    async def list(self, status: str | None, limit: int) -> Sequence[Job]:
        """Recent jobs, optionally with one status."""
        stmt = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if status:
            stmt = stmt.where(Job.status == status)
        return (await self.session.scalars(stmt)).all()

    async def renew_lease(self, job_id: uuid.UUID, run: int, until: datetime) -> bool:
        """Extend the lease of the run that holds the job; False if another run took it."""
        result = await self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.runs == run, Job.status == "processing")
            .values(lease_until=until, updated_at=func.now())
            .returning(Job.id)
        )
        return result.scalar_one_or_none() is not None

    async def record_prediction(self, job_id: uuid.UUID, run: int, prediction_id: str) -> bool:
        """Remember the job's paid remote call; False if this run no longer holds the job."""
        result = await self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.runs == run, Job.status == "processing")
            .values(prediction_id=prediction_id, updated_at=func.now())
            .returning(Job.id)
        )
        return result.scalar_one_or_none() is not None

    async def record_result(
        self,
        job_id: uuid.UUID,
        run: int,
        *,
        key: str,
        size: int,
        model: str | None,
        cost_usd: float | None,
        prediction_id: str | None,
    ) -> bool:
        """Remember the stored result of this run; False if this run no longer holds the job."""
        result = await self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.runs == run, Job.status == "processing")
            .values(
                result_key=key,
                size_bytes=size,
                model=model,
                cost_usd=cost_usd,
                prediction_id=func.coalesce(prediction_id, Job.prediction_id),
                updated_at=func.now(),
            )
            .returning(Job.id)
        )
        return result.scalar_one_or_none() is not None

    async def stale(
        self, *, lapsed_before: datetime, untouched_before: datetime, limit: int
    ) -> Sequence[Job]:
        """Unfinished jobs nobody works on: leases lapsed, or queued and untouched; locked."""
        stmt = (
            select(Job)
            .where(
                or_(
                    (Job.status == "processing") & (Job.lease_until < lapsed_before),
                    (Job.status == "queued") & (Job.updated_at < untouched_before),
                )
            )
            .order_by(Job.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .execution_options(populate_existing=True)
        )
        return (await self.session.scalars(stmt)).all()

    async def delete_finished(self, before: datetime, limit: int) -> Sequence[Job]:
        """Delete up to `limit` jobs that finished before `before`; the deleted rows."""
        ids = (
            select(Job.id)
            .where(Job.status.in_(("completed", "failed")), Job.updated_at < before)
            .order_by(Job.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        rows = await self.session.scalars(delete(Job).where(Job.id.in_(ids)).returning(Job))
        return rows.all()

    async def delete_cancellations(self, before: datetime, limit: int) -> int:
        """Forget up to `limit` deletions older than `before`; how many."""
        ids = (
            select(Cancellation.image_id)
            .where(Cancellation.cancelled_at < before)
            .limit(limit)
            .scalar_subquery()
        )
        result = await self.session.execute(
            delete(Cancellation)
            .where(Cancellation.image_id.in_(ids))
            .returning(Cancellation.image_id)
        )
        return len(result.all())


class SettingRepository:
    """Run-time settings."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, key: str) -> dict[str, Any] | None:
        """A setting's value, if an admin ever set it."""
        row = await self.session.get(Setting, key, populate_existing=True)
        return row.value if row is not None else None

    async def put(self, key: str, value: dict[str, Any], by: uuid.UUID | None) -> None:
        """Set a setting, whoever set it before."""
        stmt = insert(Setting).values(key=key, value=value, updated_by=by)
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[Setting.key],
                set_={"value": stmt.excluded.value, "updated_by": by, "updated_at": func.now()},
            )
        )
