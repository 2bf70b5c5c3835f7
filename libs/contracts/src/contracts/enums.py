"""Shared vocabularies: room types, styles and statuses."""

from enum import StrEnum


class RoomType(StrEnum):
    """The kinds of room a photo can be staged as."""

    LIVING_ROOM = "living_room"
    BEDROOM = "bedroom"
    KITCHEN = "kitchen"
    BATHROOM = "bathroom"
    DINING_ROOM = "dining_room"
    OFFICE = "office"
    ENTRYWAY = "entryway"
    OUTDOOR = "outdoor"


class Style(StrEnum):
    """The furnishing styles a room can be staged in."""

    MODERN = "modern"
    CONTEMPORARY = "contemporary"
    TRADITIONAL = "traditional"
    INDUSTRIAL = "industrial"
    SCANDINAVIAN = "scandinavian"
    RUSTIC = "rustic"
    COASTAL = "coastal"
    BOHEMIAN = "bohemian"
    MINIMALIST = "minimalist"
    MID_CENTURY_MODERN = "mid_century_modern"


class ImageStatus(StrEnum):
    """Lifecycle of an image as users see it (the `image_status` enum)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    READY = "ready"
    ERROR = "error"


IMAGE_STATUS_RANK: dict[ImageStatus, int] = {
    ImageStatus.QUEUED: 0,
    ImageStatus.PROCESSING: 1,
    ImageStatus.READY: 2,
    ImageStatus.ERROR: 2,
}
"""Order of image statuses: an update may only move an image forward."""


class JobStatus(StrEnum):
    """Lifecycle of one staging attempt (`jobs.status`)."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class Role(StrEnum):
    """What a user may do (`users.role`)."""

    USER = "user"
    ADMIN = "admin"


class PlanCode(StrEnum):
    """Subscription plans."""

    FREE = "free"
    PRO = "pro"
    BUSINESS = "business"
