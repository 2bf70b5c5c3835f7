"""Request and response bodies of the projects API."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from contracts.enums import ImageStatus, RoomType, Style
from servicekit.text import FileName, Name, ObjectKey

T = TypeVar("T")

ChargeState = Literal["reserved", "charged", "released"]

ProjectName = Name


class Page(BaseModel, Generic[T]):
    """A page of results; pass `next_cursor` back as `cursor` for the next one."""

    items: list[T]
    next_cursor: str | None = None


class ProjectCreate(BaseModel):
    """A new project."""

    model_config = ConfigDict(extra="forbid")

    name: ProjectName


class ProjectUpdate(BaseModel):
    """A rename."""

    model_config = ConfigDict(extra="forbid")

    name: ProjectName


class ProjectOut(BaseModel):
    """A project as the owner sees it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    created_at: datetime
    updated_at: datetime


UPLOAD_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (".jpg", ".jpeg"),
    "image/png": (".png",),
    "image/webp": (".webp",),
    "image/heic": (".heic", ".heif"),
    "image/heif": (".heic", ".heif"),
}


class PresignRequest(BaseModel):
    """What the browser is about to upload."""

    model_config = ConfigDict(extra="forbid")

    filename: FileName
    content_type: Literal["image/jpeg", "image/png", "image/webp", "image/heic", "image/heif"]
    size: int = Field(gt=0, description="Size of the file in bytes")


class UploadOut(BaseModel):
    """Where to PUT the file, and the key to create an image from afterwards."""

    key: str
    upload_url: str | None = None
    method: str = "PUT"
    headers: dict[str, str] = Field(default_factory=dict)
    expires_in: int | None = None
    max_size: int


class ImageCreate(BaseModel):
    """A photo to stage: an uploaded key, a room type and a style."""

    model_config = ConfigDict(extra="forbid")

    key: ObjectKey
    room_type: RoomType
    style: Style
    seed: int | None = Field(default=None, ge=0, le=4_294_967_295)
    filename: FileName | None = None


class ImageBatchCreate(BaseModel):
    """Up to 50 photos, created all together or not at all."""

    model_config = ConfigDict(extra="forbid")

    images: list[ImageCreate] = Field(min_length=1, max_length=50)


class RestageRequest(BaseModel):
    """Stage the same photo again, optionally differently."""

    model_config = ConfigDict(extra="forbid")

    room_type: RoomType | None = None
    style: Style | None = None
    seed: int | None = Field(default=None, ge=0, le=4_294_967_295)


class ImageOut(BaseModel):
    """An image as its owner sees it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    project_id: uuid.UUID
    status: ImageStatus
    room_type: str | None
    style: str | None
    seed: int | None
    error: str | None
    attempt: int
    original_filename: str | None
    has_staged: bool = False
    model_used: str | None
    processing_time_ms: int | None
    cost_usd: Decimal | None
    charge: ChargeState | None = Field(
        default=None,
        description=(
            "What the current attempt costs the owner's allowance: `reserved` while it is being "
            "staged, `charged` once staged, `released` when it ended in error (a failure is "
            "never paid for; a later success of the same attempt charges it again, once). "
            "Null when the attempt was never charged."
        ),
    )
    created_at: datetime
    updated_at: datetime


class DownloadOut(BaseModel):
    """A short-lived link to a stored photo."""

    url: str
    filename: str
    expires_in: int


class UsageOut(BaseModel):
    """This period's allowance and how much of it is used.

    `used` = `staged` + `in_flight`; `failed` photos were released and cost nothing.
    """

    plan: str
    used: int = Field(description="Photos counted this period: staged plus in flight.")
    limit: int
    remaining: int
    period_start: datetime
    period_end: datetime
    staged: int = Field(
        default=0, description="Charged photos whose staging finished (or that were deleted)."
    )
    failed: int = Field(
        default=0, description="Photos whose staging failed this period: not charged."
    )
    in_flight: int = Field(default=0, description="Photos reserved while they are being staged.")
    status: str = Field(
        default="active",
        description=(
            "Billing's status for the plan (`active`, `trialing`, `past_due`, `free`, ...), or "
            "`renewal_grace` (a paid period ended and its renewal is awaited: the plan holds "
            "until `renewal_grace_until`), `lapsed` (no renewal came: the fallback plan "
            "applies), `default` (billing has announced nothing for this user yet)."
        ),
    )
    renewal_grace_until: datetime | None = Field(
        default=None, description="While `status` is `renewal_grace`: when the paid plan lapses."
    )


class ProjectSummary(BaseModel):
    """Counts by status and the model cost so far."""

    project_id: uuid.UUID
    image_count: int
    by_status: dict[str, int]
    total_cost_usd: Decimal


class LiveImageOut(BaseModel):
    """An image's current status, as the gateway's live updates show it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    status: ImageStatus
    attempt: int
    error: str | None
    has_staged: bool = False
    updated_at: datetime


class LiveImagesOut(BaseModel):
    """The caller's images in progress, changed lately or asked for; `complete` if none left out."""

    items: list[LiveImageOut]
    complete: bool
