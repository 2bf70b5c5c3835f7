"""The gateway's FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from contracts.identity import REQUEST_ID_HEADER
from gateway.api import dev_router, proxy_router, router
from gateway.consumers import register_consumers
from gateway.deps import GatewayClients
from gateway.settings import GatewaySettings
from servicekit.runtime import create_service_app
from servicekit.settings import ServiceSettings


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the gateway; nothing connects until the lifespan starts."""
    if settings is None:
        settings = GatewaySettings()
    if not isinstance(settings, GatewaySettings):
        raise TypeError("the gateway needs GatewaySettings")
    clients = GatewayClients(settings)
    routers = [router]
    if settings.dev_mode:
        routers.append(dev_router)
    # Last: the catch-all prefixes must not shadow the gateway's own `/v1/...` endpoints.
    routers.append(proxy_router())
    app = create_service_app(
        settings,
        title="Real Staging API",
        routers=routers,
        register_consumers=register_consumers,
        on_startup=[clients.start],
        on_shutdown=[clients.stop],
        internal=False,
    )
    app.state.gateway = clients
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
