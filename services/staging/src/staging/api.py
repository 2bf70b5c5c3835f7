"""Admin API of the staging service (reached only through the gateway)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from servicekit.identity import AdminIdentity
from servicekit.runtime import SessionDep
from staging.repository import JobRepository
from staging.schemas import BackendOut, JobList, JobOut

router = APIRouter(prefix="/v1/admin/staging")


@router.get("/jobs", response_model=JobList)
async def list_jobs(
    _: AdminIdentity,
    session: SessionDep,
    status: Literal["queued", "processing", "completed", "failed"] | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobList:
    """Recent jobs, e.g. the failed ones with their reasons."""
    jobs = await JobRepository(session).list(status, limit)
    return JobList(items=[JobOut.model_validate(j) for j in jobs])


@router.get("/backend", response_model=BackendOut)
async def active_backend(_: AdminIdentity, request: Request) -> BackendOut:
    """The staging backend in use."""
    return BackendOut(backend=request.app.state.runner.backend.name)
