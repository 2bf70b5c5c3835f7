"""Errors specific to projects and images."""

from __future__ import annotations

from servicekit.errors import NotFound, ServiceError


class ProjectNotFound(NotFound):
    """No such project for this user."""

    def __init__(self) -> None:
        super().__init__("Project not found.", code="project_not_found")


class ImageNotFound(NotFound):
    """No such image for this user."""

    def __init__(self) -> None:
        super().__init__("Image not found.", code="image_not_found")


class InvalidUpload(ServiceError):
    """The uploaded object cannot be staged."""

    status = 422
    code = "invalid_upload"


class AllowanceExceeded(ServiceError):
    """The monthly allowance would be exceeded."""

    status = 402
    code = "allowance_exceeded"


class IdempotentImagesDeleted(ServiceError):
    """An Idempotency-Key is replayed after the images it created were deleted."""

    status = 409
    code = "idempotency_images_deleted"
