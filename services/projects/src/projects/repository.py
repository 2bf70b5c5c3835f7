"""Queries of the projects service; nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, delete, func, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.enums import ImageStatus
from projects.models import Entitlement, IdempotencyKey, Image, Project, UsageCharge
from servicekit.pagination import decode_cursor


@dataclass(frozen=True)
class UsageCounts:
    """Charges in a period: those held, those of attempts in flight among them, and released."""

    used: int
    released: int
    in_flight: int


def _page(stmt: Select[Any], model: Any, cursor: str | None, limit: int) -> Select[Any]:
    if cursor:
        created, row_id = decode_cursor(cursor)
        stmt = stmt.where(tuple_(model.created_at, model.id) < tuple_(created, row_id))
    return stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


class ProjectRepository:
    """Projects, always scoped to their owner."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(
        self, user_id: uuid.UUID, project_id: uuid.UUID, *, lock: bool = False
    ) -> Project | None:
        """The user's project, or None."""
        stmt = select(Project).where(Project.id == project_id, Project.user_id == user_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def list(self, user_id: uuid.UUID, cursor: str | None, limit: int) -> Sequence[Project]:
        """Newest first, `limit + 1` rows so the caller knows whether more follow."""
        stmt = _page(select(Project).where(Project.user_id == user_id), Project, cursor, limit)
        return (await self.session.scalars(stmt)).all()

    async def add(self, project: Project) -> Project:
        """Insert a project and load its defaults."""
        self.session.add(project)
        await self.session.flush()
        await self.session.refresh(project)
        return project


class ImageRepository:
    """Images, always scoped to their owner."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(
        self, user_id: uuid.UUID, image_id: uuid.UUID, *, lock: bool = False
    ) -> Image | None:
        """The user's image, or None."""
        stmt = select(Image).where(Image.id == image_id, Image.user_id == user_id)
        if lock:
            stmt = stmt.with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def get_for_update(self, image_id: uuid.UUID) -> Image | None:
        """Any image by id, locked (for status updates from staging)."""
        stmt = select(Image).where(Image.id == image_id).with_for_update()
        return (await self.session.scalars(stmt)).one_or_none()

    async def list(
        self,
        project_id: uuid.UUID,
        status: ImageStatus | None,
        cursor: str | None,
        limit: int,
    ) -> Sequence[Image]:
        """A project's images, newest first, `limit + 1` rows."""
        stmt = select(Image).where(Image.project_id == project_id)
        if status is not None:
            stmt = stmt.where(Image.status == status)
        return (await self.session.scalars(_page(stmt, Image, cursor, limit))).all()

    async def all_in_project(self, project_id: uuid.UUID) -> Sequence[Image]:
        """Every image of a project."""
        return (
            await self.session.scalars(select(Image).where(Image.project_id == project_id))
        ).all()

    async def unfinished_due(self, cutoff: datetime, limit: int) -> Sequence[Image]:
        """Queued or processing images with no progress and no settle request since `cutoff`.

        Locked, skipping rows another transaction holds (a status update being applied).
        """
        stmt = (
            select(Image)
            .where(
                Image.status.in_((ImageStatus.QUEUED, ImageStatus.PROCESSING)),
                Image.updated_at < cutoff,
                or_(Image.settle_requested_at.is_(None), Image.settle_requested_at < cutoff),
            )
            .order_by(Image.updated_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return (await self.session.scalars(stmt)).all()

    async def referenced_originals(self, keys: Sequence[str]) -> set[str]:
        """Those of `keys` that are some image's original."""
        if not keys:
            return set()
        stmt = select(Image.original_key).where(Image.original_key.in_(keys))
        return set((await self.session.scalars(stmt)).all())

    async def summary(self, project_id: uuid.UUID) -> tuple[dict[str, int], float]:
        """Counts by status and the summed model cost of a project."""
        rows = (
            await self.session.execute(
                select(Image.status, func.count(), func.coalesce(func.sum(Image.cost_usd), 0))
                .where(Image.project_id == project_id)
                .group_by(Image.status)
            )
        ).all()
        counts = {status.value: int(n) for status, n, _ in rows}
        return counts, float(sum(float(cost or 0) for _, _, cost in rows))


class AllowanceRepository:
    """Entitlements and usage charges."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_entitlement(self, user_id: uuid.UUID, default_limit: int) -> Entitlement:
        """The user's entitlement row, created on first use, locked for this transaction.

        The row lock serialises concurrent image requests of one user, so two requests can
        never both take the last photo of the allowance.
        """
        await self.session.execute(
            insert(Entitlement)
            .values(user_id=user_id, plan_code="free", monthly_limit=default_limit)
            .on_conflict_do_nothing()
        )
        stmt = select(Entitlement).where(Entitlement.user_id == user_id).with_for_update()
        return (await self.session.scalars(stmt)).one()

    async def get_entitlement(self, user_id: uuid.UUID) -> Entitlement | None:
        """The user's entitlement, if billing announced one."""
        return await self.session.get(Entitlement, user_id)

    async def used(self, user_id: uuid.UUID, start: datetime, end: datetime) -> int:
        """Photos charged to the user within [start, end), releases left out."""
        return (await self.breakdown(user_id, start, end)).used

    async def breakdown(self, user_id: uuid.UUID, start: datetime, end: datetime) -> UsageCounts:
        """The period's charges: held (in flight or staged) and released (failed)."""
        held = UsageCharge.refunded_at.is_(None)
        in_flight = and_(
            held,
            Image.attempt == UsageCharge.attempt,
            Image.status.in_((ImageStatus.QUEUED, ImageStatus.PROCESSING)),
        )
        stmt = (
            select(
                func.count().filter(held),
                func.count().filter(UsageCharge.refunded_at.is_not(None)),
                func.count().filter(in_flight),
            )
            .select_from(UsageCharge)
            .outerjoin(Image, Image.id == UsageCharge.image_id)
            .where(
                UsageCharge.user_id == user_id,
                UsageCharge.charged_at >= start,
                UsageCharge.charged_at < end,
            )
        )
        used, released, flying = (await self.session.execute(stmt)).one()
        return UsageCounts(used=int(used), released=int(released), in_flight=int(flying))

    async def release(self, image_id: uuid.UUID, attempt: int, reason: str, now: datetime) -> bool:
        """Release an attempt's charge; False if it held none (already released, or never)."""
        result = await self.session.execute(
            update(UsageCharge)
            .where(
                UsageCharge.image_id == image_id,
                UsageCharge.attempt == attempt,
                UsageCharge.refunded_at.is_(None),
            )
            .values(refunded_at=now, refund_reason=reason)
            .returning(UsageCharge.id)
        )
        return bool(result.all())

    async def restore(self, image_id: uuid.UUID, attempt: int) -> bool:
        """Take back a released charge (the attempt succeeded after all); False if none was."""
        result = await self.session.execute(
            update(UsageCharge)
            .where(
                UsageCharge.image_id == image_id,
                UsageCharge.attempt == attempt,
                UsageCharge.refunded_at.is_not(None),
            )
            .values(refunded_at=None, refund_reason=None)
            .returning(UsageCharge.id)
        )
        return bool(result.all())

    async def charges_of(self, images: Sequence[Image]) -> dict[uuid.UUID, list[bool]]:
        """For each image, whether each charge of its current attempt is released."""
        if not images:
            return {}
        pairs = [(image.id, image.attempt) for image in images]
        rows = await self.session.execute(
            select(UsageCharge.image_id, UsageCharge.refunded_at.is_not(None)).where(
                tuple_(UsageCharge.image_id, UsageCharge.attempt).in_(pairs)
            )
        )
        out: dict[uuid.UUID, list[bool]] = {}
        for image_id, released in rows:
            out.setdefault(image_id, []).append(bool(released))
        return out


class IdempotencyRepository:
    """Answered create requests, by user and key."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def claim(self, user_id: uuid.UUID, key: str, request_hash: str) -> IdempotencyKey | None:
        """Take the key for this request; None if it was taken (waits for a request in flight)."""
        stmt = (
            insert(IdempotencyKey)
            .values(user_id=user_id, key=key, request_hash=request_hash)
            .on_conflict_do_nothing()
            .returning(IdempotencyKey.key)
        )
        if (await self.session.execute(stmt)).scalar_one_or_none() is not None:
            return None
        return await self.session.get(IdempotencyKey, (user_id, key), populate_existing=True)

    async def delete_older_than(self, cutoff: datetime, limit: int) -> int:
        """Forget up to `limit` keys answered before `cutoff`; how many went."""
        oldest = (
            select(IdempotencyKey.user_id, IdempotencyKey.key)
            .where(IdempotencyKey.created_at < cutoff)
            .limit(limit)
        )
        result = await self.session.execute(
            delete(IdempotencyKey)
            .where(tuple_(IdempotencyKey.user_id, IdempotencyKey.key).in_(oldest))
            .returning(IdempotencyKey.key)
        )
        return len(result.all())

    async def images(self, ids: Sequence[uuid.UUID]) -> Sequence[Image]:
        """Images by id, in the given order."""
        rows = {
            i.id: i for i in (await self.session.scalars(select(Image).where(Image.id.in_(ids))))
        }
        return [rows[i] for i in ids if i in rows]
