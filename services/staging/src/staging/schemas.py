"""Request and response bodies of the staging admin API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


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
    detail: str | None
    backend: str | None
    model: str | None
    prediction_id: str | None
    runs: int
    duration_ms: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobList(BaseModel):
    """Recent jobs."""

    items: list[JobOut]


class BackendOption(BaseModel):
    """A backend this code knows, its models, and whether this deployment can run it."""

    backend: str
    models: list[str]
    configured: bool


class BackendIn(BaseModel):
    """The backend (and model) new jobs should use."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(min_length=1, max_length=40)
    model: str | None = Field(default=None, max_length=200)


class BackendOut(BaseModel):
    """The backend and model new jobs use, and the alternatives."""

    backend: str
    model: str
    available: list[BackendOption]
