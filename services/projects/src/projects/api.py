"""HTTP API of the projects service (reached only through the gateway)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Annotated, Literal

import zipstream
from fastapi import APIRouter, File, Header, Query, Response, UploadFile, status
from fastapi.responses import StreamingResponse
from sqlalchemy import ColumnElement, or_, select

from contracts.enums import ImageStatus
from projects.deps import ServiceDep, SettingsDep, StorageDep
from projects.errors import InvalidUpload
from projects.media import SNIFF_BYTES, sniff_image_type
from projects.models import Image
from projects.schemas import (
    UPLOAD_TYPES,
    ChargeState,
    DownloadOut,
    ImageBatchCreate,
    ImageCreate,
    ImageOut,
    LiveImageOut,
    LiveImagesOut,
    Page,
    PresignRequest,
    ProjectCreate,
    ProjectOut,
    ProjectSummary,
    ProjectUpdate,
    RestageRequest,
    UploadOut,
    UsageOut,
)
from projects.service import ProjectsService, download_stem, upload_key
from servicekit.errors import NotFound, ServiceError
from servicekit.identity import CurrentIdentity
from servicekit.pagination import encode_cursor
from servicekit.text import ObjectKey

router = APIRouter(prefix="/v1")

Limit = Annotated[int, Query(ge=1, le=100)]
IdempotencyKeyHeader = Annotated[
    ObjectKey | None,
    Header(
        alias="Idempotency-Key",
        max_length=255,
        description="Any unique string; a retry with the same key gets the same images.",
    ),
]
MAX_ZIP_IMAGES = 1000
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def image_out(image: Image, charge: ChargeState | None) -> ImageOut:
    """An image as its owner sees it."""
    out = ImageOut.model_validate(image)
    out.has_staged = image.staged_key is not None and image.status == ImageStatus.READY
    out.charge = charge
    return out


async def images_out(svc: ProjectsService, images: Sequence[Image]) -> list[ImageOut]:
    """Images as their owner sees them, each with the charge of its current attempt."""
    charges = await svc.charge_states(list(images))
    return [image_out(image, charges[image.id]) for image in images]


@router.post("/projects", status_code=status.HTTP_201_CREATED, response_model=ProjectOut)
async def create_project(body: ProjectCreate, who: CurrentIdentity, svc: ServiceDep) -> ProjectOut:
    """Create a project."""
    return ProjectOut.model_validate(await svc.create_project(who, body.name))


@router.get("/projects", response_model=Page[ProjectOut])
async def list_projects(
    who: CurrentIdentity, svc: ServiceDep, cursor: str | None = None, limit: Limit = 20
) -> Page[ProjectOut]:
    """The caller's projects, newest first."""
    rows = await svc.projects.list(who.user_id, cursor, limit)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[ProjectOut.model_validate(p) for p in rows],
        next_cursor=encode_cursor(rows[-1].created_at, rows[-1].id) if more else None,
    )


@router.get("/projects/{project_id}", response_model=ProjectOut)
async def get_project(project_id: uuid.UUID, who: CurrentIdentity, svc: ServiceDep) -> ProjectOut:
    """One project."""
    return ProjectOut.model_validate(await svc.project(who, project_id))


@router.patch("/projects/{project_id}", response_model=ProjectOut)
async def rename_project(
    project_id: uuid.UUID, body: ProjectUpdate, who: CurrentIdentity, svc: ServiceDep
) -> ProjectOut:
    """Rename a project."""
    return ProjectOut.model_validate(await svc.rename_project(who, project_id, body.name))


@router.delete("/projects/{project_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_project(project_id: uuid.UUID, who: CurrentIdentity, svc: ServiceDep) -> Response:
    """Delete a project, its images and their stored photos."""
    await svc.delete_project(who, project_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/projects/{project_id}/summary", response_model=ProjectSummary)
async def project_summary(
    project_id: uuid.UUID, who: CurrentIdentity, svc: ServiceDep
) -> ProjectSummary:
    """Counts by status and the model cost of a project."""
    await svc.project(who, project_id)
    counts, cost = await svc.images.summary(project_id)
    return ProjectSummary(
        project_id=project_id,
        image_count=sum(counts.values()),
        by_status={s.value: counts.get(s.value, 0) for s in ImageStatus},
        total_cost_usd=Decimal(str(round(cost, 4))),
    )


@router.post("/uploads/presign", response_model=UploadOut)
async def presign_upload(
    body: PresignRequest, who: CurrentIdentity, storage: StorageDep, settings: SettingsDep
) -> UploadOut:
    """A presigned PUT for one photo; create the image from the returned key afterwards."""
    ext = PurePosixPath(body.filename).suffix.lower()
    if ext not in UPLOAD_TYPES[body.content_type]:
        raise ServiceError(
            f"A {body.content_type} file should end in "
            f"{', '.join(UPLOAD_TYPES[body.content_type])}.",
            code="validation_failed",
            status=422,
            details=[{"field": "filename", "message": "extension does not match content_type"}],
        )
    if body.size > settings.max_upload_bytes:
        raise ServiceError(
            f"Photos can be at most {settings.max_upload_bytes // (1024 * 1024)} MB.",
            code="validation_failed",
            status=422,
            details=[{"field": "size", "message": "too large"}],
        )
    key = upload_key(who.user_id, body.filename, body.content_type)
    ttl = settings.upload_url_ttl_seconds
    url = await storage.presign_put(key, timedelta(seconds=ttl))
    return UploadOut(
        key=key,
        upload_url=url,
        headers={"Content-Type": body.content_type},
        expires_in=ttl,
        max_size=settings.max_upload_bytes,
    )


@router.post("/uploads", status_code=status.HTTP_201_CREATED, response_model=UploadOut)
async def upload(
    who: CurrentIdentity,
    storage: StorageDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="A JPEG, PNG, WebP or HEIC photo")],
) -> UploadOut:
    """Upload a photo through the API (for simple clients: `curl -F file=@room.jpg`)."""
    size = file.size if file.size is not None else 0
    if size == 0:
        raise InvalidUpload("The uploaded file is empty.")
    if size > settings.max_upload_bytes:
        raise InvalidUpload(
            f"Photos can be at most {settings.max_upload_bytes // (1024 * 1024)} MB."
        )
    head = await file.read(SNIFF_BYTES)
    kind = sniff_image_type(head)
    if kind is None:
        raise InvalidUpload("The uploaded file is not a JPEG, PNG, WebP or HEIC image.")
    await file.seek(0)
    key = upload_key(who.user_id, file.filename or "photo", kind)
    await storage.write_stream(key, file.file, size, kind)
    return UploadOut(key=key, method="POST", max_size=settings.max_upload_bytes)


@router.post(
    "/projects/{project_id}/images", status_code=status.HTTP_201_CREATED, response_model=ImageOut
)
async def create_image(
    project_id: uuid.UUID,
    body: ImageCreate,
    who: CurrentIdentity,
    svc: ServiceDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> ImageOut:
    """Queue one uploaded photo for staging (send an `Idempotency-Key` to retry safely)."""
    (image,) = await svc.create_images(who, project_id, [body], idempotency_key)
    return (await images_out(svc, [image]))[0]


@router.post(
    "/projects/{project_id}/images/batch",
    status_code=status.HTTP_201_CREATED,
    response_model=Page[ImageOut],
)
async def create_images(
    project_id: uuid.UUID,
    body: ImageBatchCreate,
    who: CurrentIdentity,
    svc: ServiceDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Page[ImageOut]:
    """Queue up to 50 photos at once: all are created, or none (with each problem listed)."""
    images = await svc.create_images(who, project_id, body.images, idempotency_key)
    return Page(items=await images_out(svc, images))


@router.get("/projects/{project_id}/images", response_model=Page[ImageOut])
async def list_images(
    project_id: uuid.UUID,
    who: CurrentIdentity,
    svc: ServiceDep,
    status_filter: Annotated[ImageStatus | None, Query(alias="status")] = None,
    cursor: str | None = None,
    limit: Limit = 50,
) -> Page[ImageOut]:
    """A project's images, newest first, optionally only those with one status."""
    await svc.project(who, project_id)
    rows = await svc.images.list(project_id, status_filter, cursor, limit)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=await images_out(svc, rows),
        next_cursor=encode_cursor(rows[-1].created_at, rows[-1].id) if more else None,
    )


@router.get("/images/{image_id}", response_model=ImageOut)
async def get_image(image_id: uuid.UUID, who: CurrentIdentity, svc: ServiceDep) -> ImageOut:
    """One image."""
    return (await images_out(svc, [await svc.image(who, image_id)]))[0]


@router.post("/images/{image_id}/restage", response_model=ImageOut)
async def restage_image(
    image_id: uuid.UUID, body: RestageRequest, who: CurrentIdentity, svc: ServiceDep
) -> ImageOut:
    """Stage a photo again, optionally with another room type, style or seed."""
    image = await svc.restage(
        who,
        image_id,
        body.room_type.value if body.room_type else None,
        body.style.value if body.style else None,
        body.seed,
    )
    return (await images_out(svc, [image]))[0]


@router.delete("/images/{image_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_image(image_id: uuid.UUID, who: CurrentIdentity, svc: ServiceDep) -> Response:
    """Delete an image and its stored photos."""
    await svc.delete_image(who, image_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/images/{image_id}/download", response_model=DownloadOut)
async def download_image(
    image_id: uuid.UUID,
    who: CurrentIdentity,
    svc: ServiceDep,
    storage: StorageDep,
    settings: SettingsDep,
    kind: Literal["original", "staged"] = "staged",
) -> DownloadOut:
    """A short-lived link to the original or the staged photo."""
    image = await svc.image(who, image_id)
    stem = download_stem(image.original_filename)
    if kind == "staged":
        if image.staged_key is None or image.status != ImageStatus.READY:
            raise NotFound("This photo has no staged version yet.", code="not_staged")
        key = image.staged_key
        filename = f"{stem}-staged{PurePosixPath(key).suffix or '.jpg'}"
    else:
        key = image.original_key
        filename = f"{stem}{PurePosixPath(key).suffix}"
    ttl = settings.download_url_ttl_seconds
    url = await storage.presign_get(key, timedelta(seconds=ttl), filename=filename)
    return DownloadOut(url=url, filename=filename, expires_in=ttl)


@router.get(
    "/projects/{project_id}/download.zip",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}}},
)
async def download_project(
    project_id: uuid.UUID, who: CurrentIdentity, svc: ServiceDep, storage: StorageDep
) -> StreamingResponse:
    """Every staged photo of a project as one zip, streamed as it is read from storage."""
    project = await svc.project(who, project_id)
    images = await svc.images.list(project_id, ImageStatus.READY, None, MAX_ZIP_IMAGES)
    if not images:
        raise NotFound("This project has no staged photos yet.", code="nothing_to_download")
    archive = zipstream.ZipStream(compress_type=zipstream.ZIP_STORED)
    names: set[str] = set()
    for image in images:
        if image.staged_key is None:
            continue
        stem = download_stem(image.original_filename)
        name = unique_name(f"{stem}-staged{PurePosixPath(image.staged_key).suffix}", names)
        # Each member is read lazily, chunk by chunk, while the response is being sent.
        archive.add(storage.iter_chunks(image.staged_key), name)
    filename = f"{_UNSAFE_NAME.sub('-', project.name).strip('-') or 'project'}-staged.zip"
    return StreamingResponse(
        iter(archive),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `name` with a counter, so two photos never overwrite each other in a zip."""
    candidate = name
    path = PurePosixPath(name)
    counter = 2
    while candidate in taken:
        candidate = f"{path.stem}-{counter}{path.suffix}"
        counter += 1
    taken.add(candidate)
    return candidate


@router.get("/usage", response_model=UsageOut)
async def usage(who: CurrentIdentity, svc: ServiceDep) -> UsageOut:
    """This period's allowance and how much of it is used."""
    return await svc.usage(who)


@router.get("/live/images", response_model=LiveImagesOut, include_in_schema=False)
async def live_images(
    who: CurrentIdentity,
    svc: ServiceDep,
    updated_since: datetime | None = None,
    image_id: Annotated[list[uuid.UUID] | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> LiveImagesOut:
    """The caller's images that are unfinished, changed since `updated_since`, or listed.

    The gateway's live snapshot and reconciler read the truth here; an image asked for by id
    and absent from a complete answer does not exist (it was deleted).
    """
    wanted: list[ColumnElement[bool]] = [
        Image.status.in_((ImageStatus.QUEUED, ImageStatus.PROCESSING))
    ]
    if updated_since is not None:
        wanted.append(Image.updated_at >= updated_since)
    if image_id:
        wanted.append(Image.id.in_(image_id))
    rows = (
        await svc.session.scalars(
            select(Image)
            .where(Image.user_id == who.user_id, or_(*wanted))
            .order_by(Image.updated_at.desc())
            .limit(limit + 1)
        )
    ).all()
    items = []
    for image in rows[:limit]:
        out = LiveImageOut.model_validate(image)
        out.has_staged = image.staged_key is not None and image.status == ImageStatus.READY
        items.append(out)
    return LiveImagesOut(items=items, complete=len(rows) <= limit)
