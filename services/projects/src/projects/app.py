"""The projects service application."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from projects import api, consumers
from projects.maintenance import start_maintenance
from projects.settings import ProjectsSettings
from servicekit.runtime import Runtime, create_service_app
from servicekit.settings import ServiceSettings
from servicekit.storage import Storage

logger = logging.getLogger(__name__)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the projects app; connections open in the lifespan."""
    cfg = settings if isinstance(settings, ProjectsSettings) else ProjectsSettings()
    storage = Storage(cfg)

    async def open_storage(_: Runtime) -> None:
        app.state.storage = storage
        try:
            await storage.ensure_bucket()
        except Exception:
            # Storage may come up after us; readiness reports it until it does.
            logger.warning("object storage not reachable yet")

    async def open_maintenance(runtime: Runtime) -> None:
        start_maintenance(runtime, storage, cfg)

    async def storage_check(_: Runtime) -> None:
        await storage.ping()

    app = create_service_app(
        cfg,
        title="Real Staging projects",
        routers=[api.router],
        register_consumers=lambda rt: consumers.register(rt, bucket=cfg.s3_bucket),
        on_startup=[open_storage, open_maintenance],
        extra_checks=[("storage", storage_check)],
    )
    return app
