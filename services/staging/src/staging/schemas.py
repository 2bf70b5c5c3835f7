"""Response bodies of the staging admin API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict


class JobOut(BaseModel):
    """A staging attempt as an admin sees it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    image_id: uuid.UUID
    user_id: uuid.UUID
    attempt: int
    type: str
    status: str
    error: str | None
    backend: str | None
    model: str | None
    runs: int
    duration_ms: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobList(BaseModel):
    """Recent jobs."""

    items: list[JobOut]


class BackendOut(BaseModel):
    """The backend staging uses."""

    backend: str
