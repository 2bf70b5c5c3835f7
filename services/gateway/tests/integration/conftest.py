"""Helpers for gateway integration tests that need real sockets: servers and an SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from servicekit.testing import wait_for


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
