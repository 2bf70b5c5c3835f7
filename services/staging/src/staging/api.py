"""Admin API of the staging service (reached only through the gateway)."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Query

from servicekit.errors import ServiceError
from servicekit.identity import AdminIdentity
from servicekit.logs import request_id_var
from servicekit.runtime import SessionDep
from staging.backends.registry import KNOWN_MODELS, InvalidChoice, validate_choice
from staging.deps import RunnerDep
from staging.repository import JobRepository, SettingRepository
from staging.schemas import BackendIn, BackendOption, BackendOut, JobList, JobOut
from staging.service import BACKEND_SETTING, JobRunner, retry_failed_job

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


@router.post("/jobs/{job_id}/retry", response_model=JobOut, status_code=202)
async def retry_job(_: AdminIdentity, session: SessionDep, job_id: uuid.UUID) -> JobOut:
    """Run a failed job again (same attempt, so the user is not charged again)."""
    job = await retry_failed_job(session, job_id, correlation_id=request_id_var.get())
    return JobOut.model_validate(job)


def _backend_out(runner: JobRunner, backend: str, model: str) -> BackendOut:
    return BackendOut(
        backend=backend,
        model=model,
        available=[
            BackendOption(backend=name, models=list(models), configured=name in runner.backends)
            for name, models in KNOWN_MODELS.items()
        ],
    )


@router.get("/backend", response_model=BackendOut)
async def active_backend(_: AdminIdentity, runner: RunnerDep) -> BackendOut:
    """The staging backend and model new jobs use."""
    runner.forget_choice()
    choice = await runner.choice()
    return _backend_out(runner, choice.backend, choice.model)


@router.put("/backend", response_model=BackendOut)
async def choose_backend(
    admin: AdminIdentity, session: SessionDep, runner: RunnerDep, body: BackendIn
) -> BackendOut:
    """Switch every replica to another backend or model (within a few seconds)."""
    try:
        choice = validate_choice(body.backend, body.model, runner.backends)
    except InvalidChoice as exc:
        raise ServiceError(str(exc), code="invalid_backend", status=422) from exc
    await SettingRepository(session).put(
        BACKEND_SETTING, {"backend": choice.backend, "model": choice.model}, admin.user_id
    )
    runner.forget_choice()
    return _backend_out(runner, choice.backend, choice.model)
