"""The gateway's FastAPI application."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from wsgiref.simple_server import WSGIServer

from fastapi import Depends, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from faststream.rabbit import RabbitQueue
from prometheus_client import start_http_server
from starlette.middleware.cors import CORSMiddleware

from contracts.identity import REQUEST_ID_HEADER
from gateway.api import dev_router, proxy_router, router
from gateway.consumers import bind_live_updates, register_consumers
from gateway.deps import GatewayClients, admin_user
from gateway.docs import mount_docs
from gateway.live import LiveReconciler, close_on_signals
from gateway.openapi import PublicOpenApi
from gateway.proxy import is_forwarded, is_public
from gateway.repository import ImageEventRepository, RateLimitRepository, StreamTicketRepository
from gateway.settings import GatewaySettings
from servicekit.db import unit_of_work
from servicekit.deadletters import admin_router as dead_letters_router
from servicekit.runtime import Runtime, create_service_app
from servicekit.settings import ServiceSettings

logger = logging.getLogger(__name__)


class Lifecycle:
    """What the gateway starts and stops beside servicekit's runtime."""

    def __init__(self, clients: GatewayClients) -> None:
        self.clients = clients
        self.settings = clients.settings
        self.openapi: PublicOpenApi | None = None
        self._queue: RabbitQueue | None = None
        self._undo_signals: Callable[[], None] = lambda: None
        self._metrics: MetricsServer | None = None

    def register(self, runtime: Runtime) -> None:
        """Subscribe the consumers (before the broker starts)."""
        self._queue = register_consumers(runtime, self.clients.live)

    async def start(self, runtime: Runtime) -> None:
        """Open clients, then run the background work of this replica."""
        if self.settings.metrics_port is not None:
            self._metrics = await MetricsServer.start(
                self.settings.metrics_host, self.settings.metrics_port
            )
        await self.clients.start()
        if self._queue is not None:
            runtime.spawn(bind_live_updates(runtime, self.clients.live, self._queue), "sse-bind")
        runtime.spawn(self._maintain(runtime), "maintenance")
        live = LiveReconciler(
            self.clients.live, runtime.sessionmaker, self.clients.projects_view, self.settings
        )
        runtime.spawn(live.run_reconcile(), "live-reconcile")
        runtime.spawn(live.run_wake(), "live-wake")
        if self.openapi is not None:
            runtime.spawn(self.openapi.run(), "openapi-refresh")
        self._undo_signals = close_on_signals(self.clients.live)

    async def stop(self, _: Runtime) -> None:
        """End live streams and close clients."""
        self.clients.live.close()
        self._undo_signals()
        await self.clients.stop()
        if self._metrics is not None:
            await self._metrics.stop()

    async def _maintain(self, runtime: Runtime) -> None:
        """Prune old image events, spent rate-limit windows and expired tickets."""
        s = self.settings
        while True:
            now = datetime.now(UTC)
            try:
                async with unit_of_work(runtime.sessionmaker) as session:
                    events = await ImageEventRepository(session).prune(
                        now - timedelta(hours=s.image_events_retention_hours)
                    )
                    windows = await RateLimitRepository(session).prune(
                        now - timedelta(seconds=2 * s.rate_limit_window_seconds)
                    )
                    used = await StreamTicketRepository(session).prune(now - timedelta(minutes=1))
                if events or windows or used:
                    logger.info(
                        "pruned %d image events, %d rate windows, %d tickets", events, windows, used
                    )
            except Exception as exc:
                logger.warning("pruning failed: %s", type(exc).__name__)
            await asyncio.sleep(s.maintenance_interval_seconds)


class MetricsServer:
    """Prometheus metrics on a port of their own (`GATEWAY_METRICS_PORT`), off the public one."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @classmethod
    async def start(cls, host: str, port: int) -> MetricsServer:
        """Listen on `host:port` in a daemon thread (prometheus_client's own server)."""
        server, thread = await asyncio.to_thread(start_http_server, port, host)
        logger.info("metrics on http://%s:%d/metrics", host, port)
        return cls(server, thread)

    async def stop(self) -> None:
        """Stop listening (waits for the serving loop to notice)."""
        await asyncio.to_thread(self.server.shutdown)
        self.server.server_close()


WEBAPP = resources.files("gateway") / "webapp"


def webapp_headers(settings: GatewaySettings) -> dict[str, str]:
    """Security headers of the web app's page; it may talk to the Auth0 tenant, nothing else."""
    auth0 = f" https://{settings.auth0_domain}" if settings.auth0_domain else ""
    return {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' data: blob: http: https:; "
            f"style-src 'self'; script-src 'self'; connect-src 'self'{auth0}; "
            "frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
    }


def mount_webapp(app: FastAPI, settings: GatewaySettings) -> None:
    """Serve the web app: its assets under /app, its page at / (and /billing, Stripe's return)."""
    app.mount("/app", StaticFiles(directory=str(WEBAPP)), name="webapp")
    headers = webapp_headers(settings)

    async def page() -> FileResponse:
        return FileResponse(str(WEBAPP / "index.html"), headers=headers)

    for path in ("/", "/billing"):
        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the gateway; nothing connects until the lifespan starts."""
    if settings is None:
        settings = GatewaySettings()
    if not isinstance(settings, GatewaySettings):
        raise TypeError("the gateway needs GatewaySettings")
    clients = GatewayClients(settings)
    lifecycle = Lifecycle(clients)
    routers = [router]
    if settings.dev_mode:
        routers.append(dev_router)
    # Last: the catch-all prefixes must not shadow the gateway's own `/v1/...` endpoints.
    routers.append(proxy_router())

    async def live_ready(_: Runtime) -> None:
        if not clients.live.ready.is_set():
            raise ConnectionError("live updates are not bound yet")

    app = create_service_app(
        settings,
        title="Real Staging API",
        routers=routers,
        register_consumers=lifecycle.register,
        on_startup=[lifecycle.start],
        on_shutdown=[lifecycle.stop],
        extra_checks=[("live_updates", live_ready)],
        internal=False,
    )
    mount_webapp(app, settings)
    mount_docs(app)
    app.include_router(
        dead_letters_router(dependencies=[Depends(admin_user)]), prefix="/v1/admin/dead-letters"
    )
    app.state.gateway = clients
    app.state.lifecycle = lifecycle
    public_openapi = PublicOpenApi(
        app, settings, clients.forwarder, forwarded=is_forwarded, public=is_public
    )
    lifecycle.openapi = public_openapi
    app.state.public_openapi = public_openapi
    app.openapi = public_openapi.schema  # type: ignore[method-assign]
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_credentials=False,
            allow_methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Accept",
                "If-None-Match",
                "Last-Event-ID",
                REQUEST_ID_HEADER,
            ],
            expose_headers=[
                REQUEST_ID_HEADER,
                "ETag",
                "Location",
                "Retry-After",
                "Content-Disposition",
            ],
            max_age=600,
        )
    return app
