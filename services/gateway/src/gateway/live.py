"""Live image status for browsers: the in-process fan-out and the server-sent event stream.

Every replica consumes every image status event (its own exclusive queue), records it in
`image_events` (the first replica's insert wins, the others find its id) and wakes the streams
of that user connected to it. A woken stream reads the user's rows after its cursor from the
database, so it sends them in id order, without gaps or duplicates, whichever replica recorded
them and in whatever order this replica heard of them. A resumed stream (`Last-Event-ID`)
replays from the same table, so reconnecting to any replica misses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from contracts.enums import IMAGE_STATUS_RANK, ImageStatus
from contracts.events import (
    IMAGE_STATUS_EVENTS,
    Envelope,
    Event,
    ImageFailed,
    ImageProcessing,
    ImageQueued,
    ImageReady,
)
from gateway.repository import ImageEventRepository
from gateway.settings import GatewaySettings
from servicekit.db import unit_of_work
from servicekit.errors import ServiceError, Unavailable

logger = logging.getLogger(__name__)

STATUS_EVENT = "image.status"
SNAPSHOT_EVENT = "snapshot"
_CLOSE = -1
"""Queue item that tells a stream to end (the replica is shutting down)."""


class TooManyStreams(ServiceError):
    """The caller already holds as many live streams on this replica as allowed."""

    status = 429
    code = "too_many_streams"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"You already have {limit} live update streams open; close one first.",
            headers={"Retry-After": "5"},
        )


@dataclass(eq=False)
class Subscription:
    """One connected stream: woken with the ids of its user's new events."""

    user_id: uuid.UUID
    queue: asyncio.Queue[int]
    dropped: bool = False


@dataclass
class LiveHub:
    """This replica's connected streams by user, bounded, so a slow client cannot grow memory."""

    queue_size: int = 256
    max_per_user: int = 10
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    order: asyncio.Lock = field(default_factory=asyncio.Lock)
    closing: bool = False
    _subs: dict[uuid.UUID, set[Subscription]] = field(default_factory=dict)

    def subscribe(self, user_id: uuid.UUID) -> Subscription:
        """Register a stream for `user_id` (before it reads the database, so nothing slips by)."""
        if self.closing:
            raise Unavailable("This server is restarting; reconnect.", headers={"Retry-After": "1"})
        subs = self._subs.setdefault(user_id, set())
        if len(subs) >= self.max_per_user:
            raise TooManyStreams(self.max_per_user)
        sub = Subscription(user_id, asyncio.Queue(self.queue_size))
        subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a stream."""
        subs = self._subs.get(sub.user_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.user_id]

    def publish(self, user_id: uuid.UUID, event_row_id: int) -> None:
        """Wake the user's streams on this replica; a stream whose queue is full is dropped."""
        for sub in list(self._subs.get(user_id, ())):
            try:
                sub.queue.put_nowait(event_row_id)
            except asyncio.QueueFull:
                # It will reconnect with Last-Event-ID and replay from the table.
                logger.info("dropping a slow live stream of user %s", user_id)
                sub.dropped = True
                self.unsubscribe(sub)

    def close(self) -> None:
        """End every stream (shutdown): each finishes cleanly and its client reconnects."""
        self.closing = True
        for subs in list(self._subs.values()):
            for sub in list(subs):
                sub.dropped = True
                with contextlib.suppress(asyncio.QueueFull):
                    sub.queue.put_nowait(_CLOSE)

    def streams(self, user_id: uuid.UUID | None = None) -> int:
        """How many streams are connected (for one user, or in all)."""
        if user_id is not None:
            return len(self._subs.get(user_id, ()))
        return sum(len(s) for s in self._subs.values())


STATUS_EVENT_TYPES: dict[str, type[Event]] = {
    ImageQueued.routing_key: ImageQueued,
    ImageProcessing.routing_key: ImageProcessing,
    ImageReady.routing_key: ImageReady,
    ImageFailed.routing_key: ImageFailed,
}


def status_payload(envelope: Envelope[Any]) -> tuple[ImageStatus, dict[str, Any]]:
    """The status an event announces and the `data` of its SSE event."""
    event = envelope.data
    status = IMAGE_STATUS_EVENTS[envelope.event_type]
    payload: dict[str, Any] = {
        "image_id": str(event.image_id),
        "status": status.value,
        "attempt": event.attempt,
        "staged": status is ImageStatus.READY,
        "occurred_at": envelope.occurred_at.isoformat(),
    }
    if isinstance(event, ImageFailed):
        payload["error"] = event.reason
    return status, payload


async def record_status(
    sessionmaker: async_sessionmaker[AsyncSession], envelope: Envelope[Any]
) -> int | None:
    """Record a status event once across replicas; its row id, or None when it is stale."""
    status, payload = status_payload(envelope)
    event = envelope.data
    async with unit_of_work(sessionmaker) as session:
        return await ImageEventRepository(session).record(
            event_id=envelope.event_id,
            user_id=event.user_id,
            image_id=event.image_id,
            status=status.value,
            rank=IMAGE_STATUS_RANK[status],
            attempt=event.attempt,
            payload=payload,
        )


def sse(data: Any, *, event: str | None = None, event_id: int | None = None) -> str:
    """One server-sent event."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return "\n".join(lines) + "\n\n"


class EventStream:
    """One client's stream: a snapshot or a replay, then live events, with heartbeats."""

    def __init__(
        self,
        hub: LiveHub,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: GatewaySettings,
        user_id: uuid.UUID,
        last_event_id: int | None,
    ) -> None:
        self.hub = hub
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.user_id = user_id
        self.last_event_id = last_event_id
        self.cursor = 0
        self._prepared: str | None = None
        # Subscribe before anything is read, so an event recorded meanwhile still wakes us.
        self.sub = hub.subscribe(user_id)

    async def events(self) -> AsyncIterator[str]:
        """The text of the stream, until the client leaves, is dropped or the server stops."""
        try:
            yield f"retry: {self.settings.sse_retry_ms}\n\n"
            start = self._prepared if self._prepared is not None else await self._start()
            if start:
                yield start
            async for chunk in self._catch_up():
                yield chunk
            heartbeat = self.settings.sse_heartbeat_seconds
            while not self.sub.dropped:
                try:
                    hint = await asyncio.wait_for(self.sub.queue.get(), timeout=heartbeat)
                except TimeoutError:
                    # Keeps proxies and load balancers from closing an idle connection.
                    yield ": ping\n\n"
                    continue
                while not self.sub.queue.empty():
                    hint = max(hint, self.sub.queue.get_nowait())
                if hint == _CLOSE or self.sub.dropped:
                    return
                if hint > self.cursor:
                    async for chunk in self._catch_up():
                        yield chunk
        finally:
            self.close()

    async def prepare(self) -> None:
        """Take the snapshot (or the resume point) now, before the response starts."""
        self._prepared = await self._start() or ""

    def close(self) -> None:
        """Leave the fan-out (idempotent)."""
        self.hub.unsubscribe(self.sub)

    async def _start(self) -> str | None:
        """A snapshot for a new stream; nothing for a resumed one."""
        async with unit_of_work(self.sessionmaker) as session:
            repo = ImageEventRepository(session)
            # An id from the future (the table was reset) cannot be resumed from.
            if self.last_event_id is not None and self.last_event_id <= await repo.last_id():
                self.cursor = self.last_event_id
                return None
            self.cursor = await repo.last_id(self.user_id)
            since = datetime.now(UTC) - timedelta(hours=self.settings.image_events_retention_hours)
            images = await repo.unfinished(self.user_id, up_to=self.cursor, since=since)
        return sse(
            {"images": list(images), "last_event_id": self.cursor},
            event=SNAPSHOT_EVENT,
            event_id=self.cursor,
        )

    async def _catch_up(self) -> AsyncIterator[str]:
        """Send the user's rows after the cursor, in id order, a batch at a time."""
        batch = self.settings.sse_batch_size
        while True:
            async with unit_of_work(self.sessionmaker) as session:
                rows = await ImageEventRepository(session).after(
                    self.user_id, self.cursor, limit=batch
                )
            for row_id, payload in rows:
                self.cursor = row_id
                yield sse(payload, event=STATUS_EVENT, event_id=row_id)
            if len(rows) < batch:
                return


class EventStreamResponse(StreamingResponse):
    """A `text/event-stream` that stops as soon as the client goes or stops reading."""

    def __init__(
        self,
        content: AsyncIterator[str],
        *,
        send_timeout: float,
        headers: dict[str, str],
        on_close: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self.send_timeout = send_timeout
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream until the content ends, the client disconnects, or a send stalls."""
        stream = asyncio.ensure_future(self._stream(send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({stream, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stream, gone):
                task.cancel()
            await asyncio.gather(stream, gone, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]
            if self.on_close is not None:
                # A generator that never started has no `finally` to run.
                self.on_close()
        if not stream.cancelled() and (exc := stream.exception()) is not None:
            logger.warning("live stream ended with %s", type(exc).__name__)

    async def _stream(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        async for chunk in self.body_iterator:
            body = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
            message: Message = {"type": "http.response.body", "body": body, "more_body": True}
            try:
                await asyncio.wait_for(send(message), timeout=self.send_timeout)
            except TimeoutError:
                # A client that stopped reading would hold the stream forever: drop it; it
                # reconnects with Last-Event-ID and replays what it missed.
                logger.info("dropping a live stream whose client stopped reading")
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def close_on_signals(hub: LiveHub) -> Callable[[], None]:
    """End the streams as soon as the server is told to stop; returns an undo function.

    The server waits for open responses before it runs the lifespan's shutdown, and a live
    stream never ends by itself, so the streams must hear of the signal directly.
    """
    loop = asyncio.get_running_loop()
    installed: dict[int, Any] = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            previous = signal.getsignal(sig)
        except ValueError:
            return lambda: None
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(hub.close)
            previous(signum, frame)

        try:
            signal.signal(sig, handler)
        except ValueError:
            # Signals can only be handled in the main thread; elsewhere shutdown closes them.
            return lambda: None
        installed[sig] = (handler, previous)

    def undo() -> None:
        for sig, (handler, previous) in installed.items():
            with contextlib.suppress(ValueError):
                if signal.getsignal(sig) is handler:
                    signal.signal(sig, previous)

    return undo
