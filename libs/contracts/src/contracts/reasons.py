"""The fixed catalogue of reasons an owner may read when staging a photo fails.

Every `image.failed` reason is one of these sentences, whoever publishes it. The technical
detail of a failure (exception text, object keys, setting names) goes only to logs and the
admin job view, never to the owner.
"""

from __future__ import annotations

from enum import StrEnum


class FailureReason(StrEnum):
    """A failure as its owner reads it: what happened and what they can do."""

    DAMAGED_PHOTO = "The photo is damaged or incomplete and cannot be read. Upload it again."
    PHOTO_TOO_LARGE = "The photo is too large to stage. Upload a smaller version of it."
    UNSUPPORTED_PHOTO = (
        "The file is not a photo we can stage. Upload a JPEG, PNG, WebP or HEIC photo."
    )
    PHOTO_MISSING = "The uploaded photo could not be found. Upload it again."
    MODEL_REFUSED_SAFETY = (
        "The AI staging model's safety filter rejected this photo. "
        "Try a different photo of the room."
    )
    MODEL_REFUSED = (
        "The AI staging model could not stage this photo. Try a different photo of the room."
    )
    SERVICE_BUSY = (
        "The staging service is busy or unavailable right now. Restage the photo to try again."
    )
    TOOK_TOO_LONG = "Staging took too long and was stopped. Restage the photo to try again."
    DELETED = "The image was deleted."
    INTERNAL = "Something went wrong on our side while staging this photo. Restage it to try again."


CATALOGUE: frozenset[str] = frozenset(reason.value for reason in FailureReason)
"""Every sentence an owner may read as a failure reason."""
