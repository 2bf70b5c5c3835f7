"""Rules of the projects service: ownership, uploads, the allowance, status transitions."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any, TypeVar

from minio.error import S3Error
from prometheus_client import Counter
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.enums import IMAGE_STATUS_RANK, ImageStatus, RoomType, Style
from contracts.events import (
    Envelope,
    Event,
    ImageDeleted,
    ImageFailed,
    ImageProcessing,
    ImageQueued,
    ImageReady,
    ProjectDeleted,
    SubscriptionUpdated,
)
from contracts.identity import Identity
from contracts.reasons import FailureReason
from projects.allowance import FREE_PLAN, Terms, is_paid, terms_in_force
from projects.errors import (
    AllowanceExceeded,
    IdempotentImagesDeleted,
    ImageNotFound,
    InvalidUpload,
    ProjectNotFound,
)
from projects.media import EXTENSIONS, SNIFF_BYTES, sniff_image_type
from projects.models import IdempotencyKey, Image, Project, UsageCharge
from projects.repository import (
    AllowanceRepository,
    IdempotencyRepository,
    ImageRepository,
    ProjectRepository,
)
from projects.schemas import ChargeState, ImageCreate, UsageOut
from projects.settings import ProjectsSettings
from servicekit.errors import Conflict, ServiceError
from servicekit.outbox import add_event
from servicekit.storage import Storage

PRODUCER = "projects"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}-")
ORIGINALS_PREFIX = "originals/"
UPLOADS_PREFIX = "uploads/"

CHARGES_RELEASED = Counter(
    "projects_charges_released_total", "Charges released because their attempt ended in error"
)
CHARGES_RESTORED = Counter(
    "projects_charges_restored_total", "Released charges taken again: the attempt succeeded later"
)


def upload_prefix(user_id: uuid.UUID) -> str:
    """Every upload of a user lives under this prefix."""
    return f"{UPLOADS_PREFIX}{user_id}/"


def original_key(user_id: uuid.UUID, image_id: uuid.UUID, upload: str, content_type: str) -> str:
    """The immutable key of one image's own copy of its upload."""
    name = _UPLOAD_NAME.sub("", PurePosixPath(upload).stem)
    stem = _UNSAFE.sub("-", name).strip("-.")[:60] or "photo"
    ext = EXTENSIONS.get(content_type, PurePosixPath(upload).suffix.lower() or ".jpg")
    return f"{ORIGINALS_PREFIX}{user_id}/{image_id}/{stem}{ext}"


def upload_key(user_id: uuid.UUID, filename: str, content_type: str) -> str:
    """A fresh key for an upload, with a sanitised, recognisable name."""
    stem = _UNSAFE.sub("-", PurePosixPath(filename).stem).strip("-.")[:60] or "photo"
    ext = EXTENSIONS.get(content_type if content_type != "image/heif" else "image/heic", ".jpg")
    return f"{upload_prefix(user_id)}{uuid.uuid4().hex}-{stem}{ext}"


def download_stem(original_filename: str | None) -> str:
    """A file-name stem safe in a header and on every filesystem."""
    stem = PurePosixPath(original_filename or "photo").stem
    return _UNSAFE.sub("-", stem).strip("-.")[:80] or "photo"


def s3_url(bucket: str, key: str) -> str:
    """The `s3://bucket/key` form stored in the seed's URL columns."""
    return f"s3://{bucket}/{key}"


@dataclass
class CheckedUpload:
    """An upload that exists, is small enough and is really an image."""

    key: str
    size: int
    content_type: str


class ProjectsService:
    """What an owner can do with projects and images."""

    def __init__(self, session: AsyncSession, storage: Storage, settings: ProjectsSettings) -> None:
        self.session = session
        self.storage = storage
        self.settings = settings
        self.projects = ProjectRepository(session)
        self.images = ImageRepository(session)
        self.allowance = AllowanceRepository(session)
        self.idempotency = IdempotencyRepository(session)

    async def project(self, who: Identity, project_id: uuid.UUID, *, lock: bool = False) -> Project:
        """The caller's project, or 404."""
        project = await self.projects.get(who.user_id, project_id, lock=lock)
        if project is None:
            raise ProjectNotFound()
        return project

    async def image(self, who: Identity, image_id: uuid.UUID, *, lock: bool = False) -> Image:
        """The caller's image, or 404."""
        image = await self.images.get(who.user_id, image_id, lock=lock)
        if image is None:
            raise ImageNotFound()
        return image

    async def create_project(self, who: Identity, name: str) -> Project:
        """A new, empty project."""
        return await self.projects.add(Project(user_id=who.user_id, name=name))

    async def rename_project(self, who: Identity, project_id: uuid.UUID, name: str) -> Project:
        """Rename a project."""
        project = await self.project(who, project_id, lock=True)
        project.name = name
        project.updated_at = datetime.now(UTC)
        return project

    async def delete_project(self, who: Identity, project_id: uuid.UUID) -> None:
        """Delete a project with its images; staging cancels work and removes the objects."""
        project = await self.project(who, project_id, lock=True)
        images = await self.images.all_in_project(project.id)
        keys = [k for img in images for k in (img.original_key, img.staged_key) if k]
        await self.session.delete(project)
        add_event(
            self.session,
            ProjectDeleted(
                project_id=project.id,
                user_id=who.user_id,
                image_ids=[img.id for img in images],
                keys=keys,
            ),
            producer=PRODUCER,
            correlation_id=who.request_id,
        )

    async def check_upload(self, who: Identity, key: str) -> CheckedUpload:
        """Refuse keys outside the caller's prefix, missing objects, empty, huge or non-images."""
        prefix = upload_prefix(who.user_id)
        name = key[len(prefix) :] if key.startswith(prefix) else ""
        # Only real traversal is refused (a `..`, `.` or empty segment, a backslash, a control
        # character): a photo may well be called `room..1.jpg`.
        if (
            not name
            or "\\" in key
            or any(part in ("", ".", "..") for part in name.split("/"))
            or any(ord(char) < 32 or ord(char) == 127 for char in key)
        ):
            raise InvalidUpload("This upload does not belong to you.", details={"key": key})
        info = await self.storage.stat(key)
        if info is None:
            raise InvalidUpload("The upload was not found; upload the file first.")
        if info.size == 0:
            raise InvalidUpload("The uploaded file is empty.")
        if info.size > self.settings.max_upload_bytes:
            limit_mb = self.settings.max_upload_bytes // (1024 * 1024)
            raise InvalidUpload(f"The uploaded file is larger than {limit_mb} MB.")
        kind = sniff_image_type(await self.storage.read_head(key, SNIFF_BYTES))
        if kind is None:
            raise InvalidUpload("The uploaded file is not a JPEG, PNG, WebP or HEIC image.")
        return CheckedUpload(key=key, size=info.size, content_type=kind)

    async def terms(self, user_id: uuid.UUID, now: datetime) -> Terms:
        """The allowance in force for a user at `now`."""
        ent = await self.allowance.get_entitlement(user_id)
        return terms_in_force(ent, now, self.settings.default_monthly_limit)

    async def reserve(self, who: Identity, count: int, now: datetime) -> None:
        """Take `count` photos from this period's allowance, or raise 402."""
        ent = await self.allowance.lock_entitlement(
            who.user_id, self.settings.default_monthly_limit
        )
        terms = terms_in_force(ent, now, self.settings.default_monthly_limit)
        used = await self.allowance.used(who.user_id, terms.period_start, terms.period_end)
        remaining = max(terms.limit - used, 0)
        if count > remaining:
            raise AllowanceExceeded(
                f"This needs {count} photo(s) but {remaining} of your {terms.limit} this period "
                "remain.",
                details={
                    "plan": terms.plan,
                    "limit": terms.limit,
                    "used": used,
                    "remaining": remaining,
                    "period_end": terms.period_end.isoformat(),
                },
            )

    async def usage(self, who: Identity, now: datetime | None = None) -> UsageOut:
        """This period's allowance and use."""
        now = now or datetime.now(UTC)
        terms = await self.terms(who.user_id, now)
        counts = await self.allowance.breakdown(who.user_id, terms.period_start, terms.period_end)
        return UsageOut(
            plan=terms.plan,
            used=counts.used,
            limit=terms.limit,
            remaining=max(terms.limit - counts.used, 0),
            period_start=terms.period_start,
            period_end=terms.period_end,
            staged=counts.used - counts.in_flight,
            failed=counts.released,
            in_flight=counts.in_flight,
            status=terms.status,
            renewal_grace_until=terms.renewal_grace_until,
        )

    async def charge_states(self, images: list[Image]) -> dict[uuid.UUID, ChargeState | None]:
        """What each image's current attempt costs: reserved, charged, released or nothing."""
        charges = await self.allowance.charges_of(images)
        return {image.id: charge_state(image, charges.get(image.id, [])) for image in images}

    async def create_images(
        self,
        who: Identity,
        project_id: uuid.UUID,
        items: list[ImageCreate],
        idempotency_key: str | None = None,
    ) -> list[Image]:
        """Create and queue images, all or nothing, counting each against the allowance.

        With an idempotency key, a repeat of the same request (a client retrying after a lost
        response) gets the images the first one created instead of new, charged ones.
        """
        await self.project(who, project_id)
        if idempotency_key is not None:
            request_hash = hashlib.sha256(
                json.dumps(
                    [str(project_id), [i.model_dump(mode="json") for i in items]], sort_keys=True
                ).encode()
            ).hexdigest()
            answered = await self.idempotency.claim(who.user_id, idempotency_key, request_hash)
            if answered is not None:
                if answered.request_hash != request_hash or not answered.image_ids:
                    raise ServiceError(
                        "This Idempotency-Key was already used for a different request.",
                        code="idempotency_key_reused",
                        status=422,
                    )
                images = list(await self.idempotency.images(answered.image_ids))
                if len(images) < len(answered.image_ids):
                    # Recreating them would charge again for what the user chose to delete.
                    found = {image.id for image in images}
                    raise IdempotentImagesDeleted(
                        "The photos this Idempotency-Key created have since been deleted; "
                        "send the request with a new key to create them again.",
                        details={"deleted": [str(i) for i in answered.image_ids if i not in found]},
                    )
                return images
        created = await self._create_images(who, project_id, items)
        if idempotency_key is not None:
            await self.session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.user_id == who.user_id, IdempotencyKey.key == idempotency_key)
                .values(image_ids=[image.id for image in created])
            )
        return created

    async def _create_images(
        self, who: Identity, project_id: uuid.UUID, items: list[ImageCreate]
    ) -> list[Image]:
        results = await asyncio.gather(
            *(self.check_upload(who, item.key) for item in items), return_exceptions=True
        )
        self._refuse_invalid(items, results)
        checked = [r for r in results if isinstance(r, CheckedUpload)]
        now = datetime.now(UTC)
        await self.reserve(who, len(items), now)
        ids = [uuid.uuid4() for _ in items]
        originals = [
            original_key(who.user_id, image_id, upload.key, upload.content_type)
            for image_id, upload in zip(ids, checked, strict=True)
        ]
        # Each image gets its own copy, so deleting one never removes another's original. A
        # copy left by a transaction that rolls back is removed by the orphan sweeper.
        copies = await asyncio.gather(
            *(self._copy_upload(u.key, k) for u, k in zip(checked, originals, strict=True)),
            return_exceptions=True,
        )
        self._refuse_invalid(items, copies)
        created: list[Image] = []
        for item, image_id, key in zip(items, ids, originals, strict=True):
            image = Image(
                id=image_id,
                project_id=project_id,
                user_id=who.user_id,
                original_key=key,
                original_url=s3_url(self.storage.bucket, key),
                original_filename=item.filename or PurePosixPath(item.key).name.split("-", 1)[-1],
                room_type=item.room_type.value,
                style=item.style.value,
                seed=item.seed,
                status=ImageStatus.QUEUED,
                attempt=1,
            )
            self.session.add(image)
            self.session.add(
                UsageCharge(user_id=who.user_id, image_id=image.id, attempt=1, charged_at=now)
            )
            self._queue(who, image)
            created.append(image)
        await self.session.flush()
        for image in created:
            await self.session.refresh(image)
        return created

    @staticmethod
    def _refuse_invalid(items: list[ImageCreate], results: list[Any]) -> None:
        """Raise one 422 naming every invalid item, or the first unexpected error."""
        errors: list[dict[str, Any]] = []
        for index, result in enumerate(results):
            if isinstance(result, InvalidUpload):
                errors.append(
                    {"index": index, "field": f"images[{index}].key", "message": result.message}
                )
            elif isinstance(result, BaseException):
                raise result
        if errors:
            if len(items) == 1:
                raise InvalidUpload(errors[0]["message"], details=errors)
            raise InvalidUpload(
                f"{len(errors)} of {len(items)} photos cannot be staged; nothing was created.",
                details=errors,
            )

    async def _copy_upload(self, upload: str, destination: str) -> None:
        try:
            await self.storage.copy(upload, destination)
        except S3Error as exc:
            # The upload vanished after its checks (its retention ran out meanwhile).
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                raise InvalidUpload("The upload was not found; upload the file first.") from exc
            raise

    async def restage(
        self,
        who: Identity,
        image_id: uuid.UUID,
        room_type: str | None,
        style: str | None,
        seed: int | None,
    ) -> Image:
        """Stage a photo again as a new attempt, reserved now and charged only if it succeeds."""
        image = await self.image(who, image_id, lock=True)
        if image.status in (ImageStatus.QUEUED, ImageStatus.PROCESSING):
            raise Conflict("This photo is still being staged; wait until it is done.")
        now = datetime.now(UTC)
        await self.reserve(who, 1, now)
        image.attempt += 1
        image.room_type = room_type or image.room_type
        image.style = style or image.style
        image.seed = seed if seed is not None else image.seed
        image.status = ImageStatus.QUEUED
        image.error = None
        image.updated_at = image.attempt_queued_at = now
        image.settle_requested_at = None
        image.settle_requests = 0
        self.session.add(
            UsageCharge(
                user_id=who.user_id, image_id=image.id, attempt=image.attempt, charged_at=now
            )
        )
        self._queue(who, image)
        return image

    def _queue(self, who: Identity, image: Image) -> None:
        add_event(
            self.session,
            attempt_event(ImageQueued, image),
            producer=PRODUCER,
            correlation_id=who.request_id,
        )

    async def delete_image(self, who: Identity, image_id: uuid.UUID) -> None:
        """Delete an image; staging cancels its work and removes its objects."""
        image = await self.image(who, image_id, lock=True)
        keys = [k for k in (image.original_key, image.staged_key) if k]
        await self.session.delete(image)
        add_event(
            self.session,
            ImageDeleted(image_id=image.id, user_id=who.user_id, keys=keys),
            producer=PRODUCER,
            correlation_id=who.request_id,
        )


def charge_state(image: Image, released: list[bool]) -> ChargeState | None:
    """The charge of an image's current attempt, from whether each of its charges is released."""
    if not released:
        return None
    if all(released):
        return "released"
    if image.status in (ImageStatus.QUEUED, ImageStatus.PROCESSING):
        return "reserved"
    return "charged"


async def release_charge(session: AsyncSession, image: Image, reason: str) -> None:
    """Release the charge of the image's current attempt, which ended in `error` (once)."""
    released = await AllowanceRepository(session).release(
        image.id, image.attempt, reason[:500], datetime.now(UTC)
    )
    if released:
        CHARGES_RELEASED.inc()


Q = TypeVar("Q", bound=ImageQueued)


def attempt_event(kind: type[Q], image: Image) -> Q:
    """`image.queued` (or `image.settle`) for the image's current attempt."""
    return kind(
        image_id=image.id,
        user_id=image.user_id,
        project_id=image.project_id,
        original_key=image.original_key,
        room_type=RoomType(image.room_type or RoomType.LIVING_ROOM),
        style=Style(image.style or Style.MODERN),
        seed=image.seed,
        attempt=image.attempt,
    )


GAVE_UP_REASON = FailureReason.TOOK_TOO_LONG.value
"""What an owner reads when the reconciler gave up on an attempt."""

STATUS_OF_EVENT: dict[type[Event], ImageStatus] = {
    ImageProcessing: ImageStatus.PROCESSING,
    ImageReady: ImageStatus.READY,
    ImageFailed: ImageStatus.ERROR,
}


async def apply_status(session: AsyncSession, envelope: Envelope[Any], *, bucket: str) -> None:
    """Apply a staging status event; stale or out-of-order events never move an image back."""
    event = envelope.data
    image = await ImageRepository(session).get_for_update(event.image_id)
    if image is None or event.attempt != image.attempt:
        return
    new_status = STATUS_OF_EVENT[type(event)]
    current = image.status
    # A staged photo supersedes an earlier failure of the same attempt (an admin retried the
    # job); nothing else moves an image that has finished.
    recovered = current == ImageStatus.ERROR and new_status == ImageStatus.READY
    terminal = current in (ImageStatus.READY, ImageStatus.ERROR)
    if isinstance(event, ImageFailed) and current == ImageStatus.ERROR:
        # Staging's own reason, arriving after the reconciler gave up, says more than ours.
        if image.error == GAVE_UP_REASON and event.reason:
            image.error = event.reason
        # Idempotent (only a held charge is released): a duplicate never refunds twice.
        await release_charge(session, image, event.reason or "failed")
        return
    if not recovered and (terminal or IMAGE_STATUS_RANK[new_status] <= IMAGE_STATUS_RANK[current]):
        return
    image.status = new_status
    image.updated_at = datetime.now(UTC)
    if isinstance(event, ImageReady):
        image.staged_key = event.staged_key
        image.staged_url = s3_url(bucket, event.staged_key)
        image.error = None
        image.model_used = event.model or event.backend
        image.processing_time_ms = event.duration_ms
        if event.cost_usd is not None:
            image.cost_usd = Decimal(str(event.cost_usd))
        # An admin retry of the same attempt succeeded after its failure was released: the
        # photo is staged, so it is charged again (only a released charge is taken back).
        if recovered and await AllowanceRepository(session).restore(image.id, image.attempt):
            CHARGES_RESTORED.inc()
    elif isinstance(event, ImageFailed):
        image.error = event.reason
        await release_charge(session, image, event.reason or "failed")


async def apply_entitlement(session: AsyncSession, envelope: Envelope[SubscriptionUpdated]) -> None:
    """Record the allowance billing announced, ignoring announcements older than the one held.

    A move from a paid plan to free starts a fresh free period at the change, so the photos
    used under the paid plan are not counted against the free allowance.
    """
    event = envelope.data
    ent = await AllowanceRepository(session).lock_entitlement(event.user_id, event.monthly_limit)
    if ent.source_occurred_at is not None and ent.source_occurred_at >= envelope.occurred_at:
        return
    period_start = event.period_start
    if event.plan_code.value == FREE_PLAN and ent.source_occurred_at is not None:
        held = terms_in_force(ent, envelope.occurred_at, event.monthly_limit)
        if is_paid(held.plan):
            period_start = max(period_start, envelope.occurred_at)
        elif event.period_start <= held.period_start < event.period_end:
            # A free period that began mid-month (at a lapse or an earlier move to free) keeps
            # its start when billing announces free again.
            period_start = held.period_start
    ent.plan_code = event.plan_code.value
    ent.monthly_limit = event.monthly_limit
    ent.period_start = period_start
    ent.period_end = event.period_end
    ent.status = event.status
    ent.renewal_grace_until = event.renewal_grace_until
    ent.fallback_plan_code = event.fallback_plan_code.value if event.fallback_plan_code else None
    ent.fallback_limit = event.fallback_limit
    ent.source_occurred_at = envelope.occurred_at
    ent.updated_at = datetime.now(UTC)
