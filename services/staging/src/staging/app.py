"""The staging service application: an HTTP face over the job consumers."""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI

from servicekit.runtime import Runtime, create_service_app
from servicekit.settings import ServiceSettings
from servicekit.storage import Storage
from staging import api, consumers
from staging.backends.base import StagingBackend
from staging.backends.registry import build_backends
from staging.maintenance import Maintenance
from staging.service import JobRunner
from staging.settings import StagingSettings

logger = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the staging app; connections open in the lifespan."""
    cfg = settings if isinstance(settings, StagingSettings) else StagingSettings()
    storage = Storage(cfg)
    backends: dict[str, StagingBackend] = {}

    def register(runtime: Runtime) -> None:
        backends.update(build_backends(cfg))
        runner = JobRunner(runtime, storage, backends, cfg)
        app.state.runner = runner
        consumers.register(runtime, runner, storage)

    async def open_storage(_: Runtime) -> None:
        try:
            await storage.ensure_bucket()
        except Exception:
            logger.warning("object storage not reachable yet")

    async def start_maintenance(runtime: Runtime) -> None:
        maintenance = Maintenance(runtime.sessionmaker, storage, cfg)
        app.state.maintenance = maintenance
        maintenance.start(runtime.spawn, runtime.relay.wake)

    async def hand_back_jobs(_: Runtime) -> None:
        # Runs before the broker stops: unfinished jobs release their leases (keeping any
        # prediction id), so their redelivered messages resume at once on another worker.
        await app.state.runner.shutdown()

    async def close_backends(_: Runtime) -> None:
        for backend in backends.values():
            with contextlib.suppress(Exception):
                await backend.aclose()
        backends.clear()

    async def storage_check(_: Runtime) -> None:
        await storage.ping()

    app = create_service_app(
        cfg,
        title="Real Staging staging",
        routers=[api.router],
        register_consumers=register,
        on_startup=[open_storage, start_maintenance],
        on_shutdown=[hand_back_jobs, close_backends],
        extra_checks=[("storage", storage_check)],
    )
    return app
