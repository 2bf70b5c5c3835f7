"""FastAPI dependencies of the staging service."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from staging.service import JobRunner


def get_runner(request: Request) -> JobRunner:
    """The service's job runner (it knows the configured backends)."""
    runner: JobRunner = request.app.state.runner
    return runner


RunnerDep = Annotated[JobRunner, Depends(get_runner)]
