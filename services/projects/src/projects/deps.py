"""FastAPI dependencies of the projects service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from projects.service import ProjectsService
from projects.settings import ProjectsSettings
from servicekit.runtime import SessionDep
from servicekit.storage import Storage


def get_storage(request: Request) -> Storage:
    """The object storage client."""
    storage: Storage = request.app.state.storage
    return storage


def get_settings(request: Request) -> ProjectsSettings:
    """The service settings."""
    settings: ProjectsSettings = request.app.state.settings
    return settings


StorageDep = Annotated[Storage, Depends(get_storage)]
SettingsDep = Annotated[ProjectsSettings, Depends(get_settings)]


def get_service(session: SessionDep, storage: StorageDep, settings: SettingsDep) -> ProjectsService:
    """The projects service bound to this request's unit of work."""
    return ProjectsService(session, storage, settings)


ServiceDep = Annotated[ProjectsService, Depends(get_service)]
