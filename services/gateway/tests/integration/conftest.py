"""Helpers for gateway integration tests: servers, an SSE reader, users and status events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from faststream.rabbit import RabbitBroker

from contracts.enums import RoomType, Style
from contracts.events import (
    Envelope,
    Event,
    ImageFailed,
    ImageProcessing,
    ImageQueued,
    ImageReady,
)
from gateway.settings import GatewaySettings
from servicekit.messaging import EVENTS_EXCHANGE
from servicekit.testing import TEST_INTERNAL_SECRET, wait_for


class ServerThread:
    """An ASGI app served by uvicorn on a free port, in its own thread and event loop."""

    def __init__(self, app: FastAPI, *, lifespan: str = "on") -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                lifespan=lifespan,
                access_log=False,
                timeout_graceful_shutdown=3,
            )
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self.sock])

        asyncio.run(main())

    def start(self) -> ServerThread:
        """Start serving (returns at once; wait for readiness separately)."""
        self.thread.start()
        return self

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Run `fn` on the server's event loop."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)

    def stop(self) -> None:
        """Ask the server to exit and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(15)


async def wait_ready(url: str, path: str = "/readyz", within: float = 30) -> None:
    """Wait until `url + path` answers 200."""

    async def ready() -> bool:
        async with httpx.AsyncClient(timeout=2) as client:
            try:
                return (await client.get(url + path)).status_code == 200
            except httpx.HTTPError:
                return False

    await wait_for(ready, within=within, interval=0.1)


@pytest.fixture(scope="module")
def serve() -> Iterator[Callable[[FastAPI], ServerThread]]:
    """Start apps on real ports; all of them stop when the module ends."""
    started: list[ServerThread] = []

    def start(app: FastAPI, lifespan: str = "on") -> ServerThread:
        server = ServerThread(app, lifespan=lifespan).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@dataclass
class SseEvent:
    """One server-sent event as a client sees it."""

    event: str
    data: Any
    id: str | None


@dataclass
class SseReader:
    """Reads a live stream in the background and keeps what arrived."""

    response: httpx.Response
    events: list[SseEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: str | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Disconnect, as a browser tab that goes away."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.response.aclose()

    async def pump(self) -> None:
        """Parse the stream until it ends."""
        fields: dict[str, str] = {}
        try:
            async for line in self.response.aiter_lines():
                if line == "":
                    if "data" in fields:
                        self.events.append(
                            SseEvent(
                                event=fields.get("event", "message"),
                                data=json.loads(fields["data"]),
                                id=fields.get("id"),
                            )
                        )
                    fields = {}
                elif line.startswith(":"):
                    self.comments.append(line[1:].strip())
                else:
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "retry":
                        self.retry = value
                    else:
                        fields[name] = value
        except httpx.HTTPError:
            pass
        finally:
            self.ended.set()

    @property
    def statuses(self) -> list[SseEvent]:
        """The `image.status` events so far."""
        return [e for e in self.events if e.event == "image.status"]

    @property
    def last_id(self) -> str | None:
        """The id of the last event with one (what a browser sends as Last-Event-ID)."""
        ids = [e.id for e in self.events if e.id is not None]
        return ids[-1] if ids else None

    async def wait_statuses(self, count: int, within: float = 15) -> list[SseEvent]:
        """Wait until at least `count` status events arrived."""
        await wait_for(lambda: len(self.statuses) >= count, within=within, interval=0.01)
        return self.statuses


@pytest.fixture
async def sse() -> AsyncIterator[Callable[..., Any]]:
    """Open SSE streams (`await sse(url, params=..., headers=...)`); closed after the test."""
    stack = contextlib.AsyncExitStack()
    tasks: list[asyncio.Task[None]] = []

    async def open_stream(
        url: str, *, params: dict[str, str] | None = None, headers: dict[str, str] | None = None
    ) -> SseReader:
        client = await stack.enter_async_context(
            httpx.AsyncClient(timeout=httpx.Timeout(30, read=60))
        )
        response = await stack.enter_async_context(
            client.stream("GET", url, params=params, headers=headers)
        )
        reader = SseReader(response)
        if response.status_code == 200:
            reader.task = asyncio.ensure_future(reader.pump())
            tasks.append(reader.task)
        else:
            await response.aread()
        return reader

    async with stack:
        yield open_stream
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def settings_for(infra: Any, database_url: str, key_dir: Path, **overrides: Any) -> GatewaySettings:
    """Settings of a test replica (projects unreachable unless overridden)."""
    values: dict[str, Any] = {
        "environment": "development",
        "database_url": database_url,
        "amqp_url": infra.amqp_url,
        "internal_secret": TEST_INTERNAL_SECRET,
        "dev_key_path": key_dir / "dev-issuer.pem",
        "public_url": "http://gw",
        "projects_url": "http://127.0.0.1:9",
        "billing_url": "http://127.0.0.1:9",
        "staging_url": "http://127.0.0.1:9",
        "upstream_connect_timeout_seconds": 0.5,
        "sse_heartbeat_seconds": 0.5,
        "openapi_refresh_seconds": 600,
    }
    values.update(overrides)
    return GatewaySettings(**values)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the development issuer keeps its key, shared by a module's replicas."""
    return tmp_path_factory.mktemp("keys")


@pytest.fixture(scope="module")
async def publisher(infra: Any) -> AsyncIterator[RabbitBroker]:
    """A broker connection that publishes as the other services do."""
    broker = RabbitBroker(infra.amqp_url)
    await broker.connect()
    await broker.declare_exchange(EVENTS_EXCHANGE)
    yield broker
    await broker.stop()


class Journey:
    """Publishes image status events as staging does."""

    def __init__(self, broker: RabbitBroker, user_id: uuid.UUID) -> None:
        self.broker = broker
        self.user_id = user_id

    async def send(self, event: Event, event_id: uuid.UUID | None = None) -> Envelope[Any]:
        envelope = Envelope.wrap(event, producer="staging", correlation_id=f"c-{uuid.uuid4().hex}")
        if event_id is not None:
            envelope = envelope.model_copy(update={"event_id": event_id})
        await self.broker.publish(
            envelope.model_dump_json().encode(),
            exchange=EVENTS_EXCHANGE,
            routing_key=event.routing_key,
            persist=True,
            message_id=str(envelope.event_id),
            content_type="application/json",
        )
        return envelope

    async def processing(self, image: uuid.UUID, attempt: int = 1) -> Envelope[Any]:
        return await self.send(
            ImageProcessing(image_id=image, user_id=self.user_id, attempt=attempt, backend="local")
        )

    async def ready(self, image: uuid.UUID, attempt: int = 1) -> Envelope[Any]:
        return await self.send(
            ImageReady(
                image_id=image,
                user_id=self.user_id,
                attempt=attempt,
                staged_key=f"staged/{image}.jpg",
                backend="local",
            )
        )

    async def failed(
        self, image: uuid.UUID, reason: str = "Too dark.", attempt: int = 1
    ) -> Envelope[Any]:
        return await self.send(
            ImageFailed(image_id=image, user_id=self.user_id, reason=reason, attempt=attempt)
        )

    async def queued(self, image: uuid.UUID, attempt: int = 1) -> Envelope[Any]:
        return await self.send(
            ImageQueued(
                image_id=image,
                user_id=self.user_id,
                project_id=uuid.uuid4(),
                original_key=f"originals/{image}.jpg",
                room_type=RoomType.BEDROOM,
                style=Style.MODERN,
                attempt=attempt,
            )
        )


class User:
    """A signed-in user of the gateway replicas."""

    def __init__(self, token: str, user_id: uuid.UUID) -> None:
        self.token = token
        self.id = user_id

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def ticket(self, base_url: str) -> str:
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.post("/v1/events/ticket", headers=self.auth)
        assert response.status_code == 200, response.text
        assert response.json()["expires_in"] == 60
        return str(response.json()["ticket"])


async def sign_up(server: ServerThread) -> User:
    """A new user signed in through the development issuer of `server`."""
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        sub = f"dev|{uuid.uuid4().hex[:12]}"
        token = (await client.post("/v1/dev/token", json={"sub": sub})).json()["access_token"]
        me = await client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200, me.text
    return User(token, uuid.UUID(me.json()["id"]))


async def connect(
    sse: Callable[..., Any],
    server: ServerThread,
    user: User,
    *,
    last_event_id: str | None = None,
) -> SseReader:
    """Open a stream with a fresh ticket, as a browser would."""
    params = {"ticket": await user.ticket(server.url)}
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    reader: SseReader = await sse(f"{server.url}/v1/events", params=params, headers=headers)
    assert reader.response.status_code == 200, reader.response.text
    return reader


def summary(reader: SseReader) -> list[tuple[str, str]]:
    return [(e.data["image_id"], e.data["status"]) for e in reader.statuses]
