"""The shape every service shares: app factory, lifespan, unit-of-work session, health."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from faststream.rabbit import RabbitBroker
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.events import Envelope, Event
from contracts.identity import REQUEST_ID_HEADER
from contracts.topology import ALL_QUEUES, QueueSpec
from servicekit.db import create_engine, create_sessionmaker, ping
from servicekit.deadletters import refresh_gauge
from servicekit.errors import error_body, install_error_handlers
from servicekit.logs import configure_logging, request_id_var
from servicekit.messaging import (
    Consumer,
    RetryPolicy,
    create_broker,
    declare_topology,
    outbox_publisher,
)
from servicekit.outbox import OutboxRelay
from servicekit.settings import ServiceSettings

logger = logging.getLogger(__name__)

REQUESTS = Counter("http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram("http_request_duration_seconds", "HTTP request latency", ["method", "route"])
SHUTDOWN_STEP_SECONDS = 10.0
"""The longest a shutdown waits for background tasks, and for each connection to close."""
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

E = TypeVar("E", bound=Event)


class Runtime:
    """Connections a running service holds; created and closed by the lifespan."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.engine: AsyncEngine = create_engine(
            settings.database_url, pool_size=settings.database_pool_size
        )
        self.sessionmaker: async_sessionmaker[AsyncSession] = create_sessionmaker(self.engine)
        self.broker: RabbitBroker = create_broker(
            settings.amqp_url, prefetch=settings.consumer_prefetch, app_id=settings.service_name
        )
        self.retry_policy = RetryPolicy.from_settings(settings)
        self.relay = OutboxRelay(
            self.sessionmaker,
            outbox_publisher(self.broker),
            poll_seconds=settings.outbox_poll_seconds,
            listen_url=settings.database_url,
        )
        self.broker_ready = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []
        self.consumers: list[Consumer[Any]] = []

    def consumer(
        self,
        spec: QueueSpec,
        event_types: dict[str, type[E]],
        handler: Callable[[Envelope[E]], Awaitable[None]],
        *,
        on_give_up: Callable[[Envelope[E], str], Awaitable[None]] | None = None,
        is_transient: Callable[[BaseException], bool] | None = None,
    ) -> Consumer[E]:
        """Subscribe `handler` to `spec`'s queue with this service's retry policy."""
        consumer = Consumer(
            self.broker,
            spec,
            event_types,
            handler,
            on_give_up=on_give_up,
            is_transient=is_transient,
            policy=self.retry_policy,
        )
        self.consumers.append(consumer)
        return consumer

    async def start_broker(self) -> None:
        """Connect, declare the topology and start consuming; retry until RabbitMQ answers."""
        delay = 0.5
        while True:
            try:
                await self.broker.connect()
                await declare_topology(self.broker, ALL_QUEUES, self.retry_policy)
                await self.broker.start()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("broker not available yet (%s); retrying", exc)
                with contextlib.suppress(Exception):
                    await self.broker.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.broker_ready.set()
            logger.info("broker connected")
            return

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        """Run a background task for the life of the service."""
        self.tasks.append(asyncio.ensure_future(coro))
        self.tasks[-1].set_name(name)

    async def close(self) -> None:
        """Stop consuming, finish in-flight work, then close connections.

        Every step is bounded, so a background task or a broker that does not answer can delay
        a shutdown but never hang it (an orchestrator would kill the process anyway).
        """
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.broker.stop(), timeout=SHUTDOWN_STEP_SECONDS * 4)
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=SHUTDOWN_STEP_SECONDS)
            if pending:
                logger.warning(
                    "background tasks did not stop in time: %s",
                    ", ".join(sorted(t.get_name() for t in pending)),
                )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.engine.dispose(), timeout=SHUTDOWN_STEP_SECONDS)


def get_runtime(request: Request) -> Runtime:
    """FastAPI dependency: the service's runtime."""
    runtime: Runtime = request.app.state.runtime
    return runtime


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's unit of work: commit on success, roll back on error."""
    runtime = get_runtime(request)
    async with runtime.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise
    if session.info.get("outbox_dirty"):
        runtime.relay.wake()


# Commit before the response is sent, so a 2xx always means the change is durable.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class RequestContextMiddleware:
    """Give every request an id (honouring a sane incoming one), time it and count it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI call."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = ""
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
        rid = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            REQUESTS.labels(scope["method"], path, str(status)).inc()
            LATENCY.labels(scope["method"], path).observe(time.perf_counter() - started)
            request_id_var.reset(token)


Check = Callable[["Runtime"], Awaitable[None]]


def health_router(
    extra_checks: Sequence[tuple[str, Check]] = (), *, public: bool = False
) -> APIRouter:
    """`/healthz` (alive), `/readyz` (database, broker and any extra checks), `/metrics`.

    A `public` service (the one the internet reaches) serves no `/metrics` here and a `/readyz`
    that names no dependency: which checks failed goes to its log instead.
    """
    router = APIRouter(include_in_schema=False)

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(runtime: RuntimeDep) -> JSONResponse:
        async def broker_check() -> None:
            if not runtime.broker_ready.is_set() or not await runtime.broker.ping(timeout=2):
                raise ConnectionError("broker not connected")

        checks: list[tuple[str, Callable[[], Awaitable[None]]]] = [
            ("database", lambda: ping(runtime.engine)),
            ("broker", broker_check),
            *((name, _bind(check, runtime)) for name, check in extra_checks),
        ]
        results: dict[str, str] = {}
        for name, check in checks:
            try:
                await asyncio.wait_for(check(), timeout=3)
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"unavailable: {type(exc).__name__}"
        ready = all(v == "ok" for v in results.values())
        if public:
            if ready:
                return JSONResponse({"status": "ready"})
            logger.warning("not ready: %s", results)
            return JSONResponse(
                error_body("not_ready", "The service is not ready.", None), status_code=503
            )
        if ready:
            return JSONResponse({"status": "ready", "checks": results})
        return JSONResponse(
            error_body("not_ready", "A dependency is unavailable.", results), status_code=503
        )

    if not public:

        @router.get("/metrics")
        async def metrics() -> Response:
            return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


def _bind(check: Check, runtime: Runtime) -> Callable[[], Awaitable[None]]:
    return lambda: check(runtime)


Hook = Callable[[Runtime], Awaitable[None]]


def create_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    routers: Sequence[APIRouter],
    register_consumers: Callable[[Runtime], None] | None = None,
    on_startup: Sequence[Hook] = (),
    on_shutdown: Sequence[Hook] = (),
    extra_checks: Sequence[tuple[str, Check]] = (),
    internal: bool = True,
) -> FastAPI:
    """Build a service's FastAPI app; nothing connects until the lifespan starts.

    `internal=False` is the public door: it serves neither `/metrics` nor readiness details
    (it exposes its metrics elsewhere, e.g. on a port of its own). No service gets FastAPI's
    `/docs`, which loads Swagger UI from a CDN: the public door serves its own.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.service_name, settings.log_level)
        runtime = Runtime(settings)
        app.state.runtime = runtime
        app.state.settings = settings
        app.state.service_name = settings.service_name
        app.state.internal_secret = settings.internal_secret.get_secret_value()
        if register_consumers is not None:
            register_consumers(runtime)
        for hook in on_startup:
            await hook(runtime)
        runtime.spawn(runtime.start_broker(), "broker")
        runtime.spawn(_relay_when_ready(runtime), "outbox-relay")
        runtime.spawn(_watch_dead_letters(runtime), "dead-letter-gauge")
        logger.info("%s started", settings.service_name)
        try:
            yield
        finally:
            for hook in on_shutdown:
                with contextlib.suppress(Exception):
                    await hook(runtime)
            await runtime.close()
            logger.info("%s stopped", settings.service_name)

    app = FastAPI(
        title=title,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
    )
    app.add_middleware(RequestContextMiddleware)
    install_error_handlers(app)

    app.include_router(health_router(extra_checks, public=not internal))
    for router in routers:
        app.include_router(router)
    return app


async def _relay_when_ready(runtime: Runtime) -> None:
    await runtime.broker_ready.wait()
    await runtime.relay.run()


async def _watch_dead_letters(runtime: Runtime) -> None:
    """Keep the parked-messages gauge of this service's own queues fresh."""
    await runtime.broker_ready.wait()
    while True:
        specs = tuple(c.spec for c in runtime.consumers)
        if specs:
            try:
                await refresh_gauge(runtime.settings.amqp_url, specs)
            except Exception as exc:
                logger.warning("could not count parked messages: %s", exc)
        await asyncio.sleep(runtime.settings.reconcile_interval_seconds)
