"""The staging service application: an HTTP face over the job consumers."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from servicekit.runtime import Runtime, create_service_app
from servicekit.settings import ServiceSettings
from servicekit.storage import Storage
from staging import api, consumers
from staging.backends.base import StagingBackend
from staging.backends.offline import LocalBackend
from staging.service import JobRunner
from staging.settings import StagingSettings

logger = logging.getLogger(__name__)


def make_backend(settings: StagingSettings) -> StagingBackend:
    """The backend chosen by settings."""
    return LocalBackend()


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the staging app; connections open in the lifespan."""
    cfg = settings if isinstance(settings, StagingSettings) else StagingSettings()
    storage = Storage(cfg)

    def register(runtime: Runtime) -> None:
        runner = JobRunner(runtime, storage, make_backend(cfg), cfg)
        app.state.runner = runner
        consumers.register(runtime, runner, storage)

    async def open_storage(_: Runtime) -> None:
        try:
            await storage.ensure_bucket()
        except Exception:
            logger.warning("object storage not reachable yet")

    async def storage_check(_: Runtime) -> None:
        await storage.ping()

    app = create_service_app(
        cfg,
        title="Real Staging staging",
        routers=[api.router],
        register_consumers=register,
        on_startup=[open_storage],
        extra_checks=[("storage", storage_check)],
    )
    return app
