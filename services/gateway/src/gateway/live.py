"""Live image status for browsers: the in-process fan-out and the server-sent event stream.

Every replica consumes every image status event (its own exclusive queue), records it in
`image_events` (the first replica's insert wins, the others find its id) and wakes the streams
of that user connected to it. A woken stream reads the user's rows after its cursor from the
database, so it sends them in id order, without gaps or duplicates, whichever replica recorded
them and in whatever order this replica heard of them. A resumed stream (`Last-Event-ID`)
replays from the same table, so reconnecting to any replica misses nothing.

The log can miss an event (a replica's queue exists only while it runs), so it is not the
truth: a new stream's snapshot is what projects says about the user's images, merged over the
log, and a reconciler asks projects about images the log has believed unfinished for too long.
Whatever projects knows better is recorded in the log as a correction (an event id derived
from the image, attempt and status, so every replica records it once) and streamed like any
event; images projects no longer has are forgotten. Each replica also wakes its streams for
rows another replica recorded, so a correction reaches every open stream without a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, cast
from urllib.parse import urlencode

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from contracts.enums import ImageStatus, Role
from contracts.events import (
    IMAGE_STATUS_EVENTS,
    Envelope,
    Event,
    ImageFailed,
    ImageProcessing,
    ImageQueued,
    ImageReady,
)
from contracts.identity import Identity
from gateway.proxy import PROJECTS, Forwarder
from gateway.repository import STATUS_ORDER, ImageEventRepository
from gateway.settings import GatewaySettings
from servicekit.db import unit_of_work
from servicekit.errors import ServiceError, Unavailable
from servicekit.logs import request_id_var
from servicekit.periodic import run_once

logger = logging.getLogger(__name__)

STATUS_EVENT = "image.status"
SNAPSHOT_EVENT = "snapshot"
_CLOSE = -1
"""Queue item that tells a stream to end (the replica is shutting down)."""
UNFINISHED = frozenset({ImageStatus.QUEUED.value, ImageStatus.PROCESSING.value})
CORRECTIONS = uuid.UUID("6c1f8a52-3a0e-4a43-9d8e-5b7f0f2a6e11")
"""Namespace of correction event ids: one id per image, attempt and status."""
RECONCILE_TASK = "gateway.live-reconcile"
IDS_PER_REQUEST = 100
"""Image ids per request to projects (keeps the URL short)."""


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
    _woken: dict[uuid.UUID, int] = field(default_factory=dict)

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
                self._woken.pop(sub.user_id, None)

    def users(self) -> list[uuid.UUID]:
        """Users with a stream on this replica."""
        return list(self._subs)

    def wake_up_to(self, user_id: uuid.UUID, event_row_id: int) -> bool:
        """Wake the user's streams for `event_row_id` unless they were woken for it already."""
        if user_id not in self._subs or event_row_id <= self._woken.get(user_id, 0):
            return False
        self.publish(user_id, event_row_id)
        return True

    def publish(self, user_id: uuid.UUID, event_row_id: int) -> None:
        """Wake the user's streams on this replica; a stream whose queue is full is dropped."""
        if user_id in self._subs:
            self._woken[user_id] = max(event_row_id, self._woken.get(user_id, 0))
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
            attempt=event.attempt,
            payload=payload,
        )


def order_key(payload: dict[str, Any]) -> tuple[int, int]:
    """Where a status payload stands in its image's life: attempt, then status order."""
    return int(payload["attempt"]), STATUS_ORDER[str(payload["status"])]


def correction_id(payload: dict[str, Any]) -> uuid.UUID:
    """The event id of a correction: the same on every replica for the same state."""
    return uuid.uuid5(
        CORRECTIONS, f"{payload['image_id']}:{payload['attempt']}:{payload['status']}"
    )


@dataclass(frozen=True)
class Truth:
    """What projects says about some of a user's images (their status payloads by id)."""

    images: dict[uuid.UUID, dict[str, Any]]
    complete: bool

    def absent(self, asked: Iterable[uuid.UUID]) -> list[uuid.UUID]:
        """Asked-for images projects does not have (deleted); none if the answer was cut short."""
        return [i for i in asked if i not in self.images] if self.complete else []


def truth_payload(item: dict[str, Any]) -> dict[str, Any]:
    """The status payload of an image as projects reports it (same shape as an event's)."""
    status = ImageStatus(item["status"])
    payload: dict[str, Any] = {
        "image_id": str(uuid.UUID(str(item["id"]))),
        "status": status.value,
        "attempt": int(item["attempt"]),
        "staged": status is ImageStatus.READY,
        "occurred_at": str(item["updated_at"]),
    }
    if status is ImageStatus.ERROR:
        payload["error"] = item.get("error")
    return payload


class ProjectsView:
    """Reads the owner's truth about a user's images from projects, with a signed identity.

    After a failure it does not ask again for a short while, so an outage of projects does not
    make every new stream wait for the timeout.
    """

    def __init__(self, forwarder: Forwarder, settings: GatewaySettings) -> None:
        self.forwarder = forwarder
        self.settings = settings
        self._quiet_until = 0.0

    async def images(
        self,
        user_id: uuid.UUID,
        *,
        ids: Collection[uuid.UUID] = (),
        updated_since: datetime | None = None,
    ) -> Truth | None:
        """The user's unfinished images, those changed since, and those asked for; None if away."""
        if time.monotonic() < self._quiet_until:
            return None
        identity = Identity(user_id=user_id, role=Role.USER, request_id=request_id_var.get() or "")
        wanted = list(ids)
        chunks = [wanted[i : i + IDS_PER_REQUEST] for i in range(0, len(wanted), IDS_PER_REQUEST)]
        images: dict[uuid.UUID, dict[str, Any]] = {}
        complete = True
        for chunk in chunks or [[]]:
            params: list[tuple[str, str]] = [("limit", str(self.settings.live_snapshot_limit))]
            params += [("image_id", str(i)) for i in chunk]
            if updated_since is not None:
                params.append(("updated_since", updated_since.isoformat()))
            body = await self.forwarder.get_json(
                PROJECTS,
                "/v1/live/images?" + urlencode(params),
                identity,
                within_seconds=self.settings.live_snapshot_timeout_seconds,
            )
            try:
                if not isinstance(body, dict):
                    raise ValueError("no answer")
                for item in body["items"]:
                    payload = truth_payload(item)
                    images[uuid.UUID(payload["image_id"])] = payload
                complete = complete and bool(body["complete"])
            except (ValueError, KeyError, TypeError):
                self._quiet_until = time.monotonic() + self.settings.live_projects_backoff_seconds
                return None
        return Truth(images, complete)


@dataclass
class Merged:
    """A snapshot merged from projects' truth and the log, and what the log should learn."""

    images: list[dict[str, Any]]
    recent: list[dict[str, Any]]
    corrections: list[uuid.UUID]
    gone: list[uuid.UUID]


def merge_snapshot(
    log: Sequence[dict[str, Any]], truth: Truth | None, asked: Collection[uuid.UUID]
) -> Merged:
    """Merge projects' truth over the log's latest payloads (the log alone when truth is None).

    The later state of an image wins, so a status the log heard before projects applied it is
    kept; on a tie projects wins. An image projects does not return is dropped when its answer
    is complete (it was deleted, or finished before the window), else the log's state stands.
    """
    by_image = {uuid.UUID(str(p["image_id"])): p for p in log}
    if truth is None:
        unfinished = [p for p in log if p["status"] in UNFINISHED]
        return Merged(images=unfinished, recent=[], corrections=[], gone=[])
    result: dict[uuid.UUID, dict[str, Any]] = {}
    corrections: list[uuid.UUID] = []
    for image_id, told in truth.images.items():
        heard = by_image.get(image_id)
        if heard is not None and order_key(heard) > order_key(told):
            result[image_id] = heard
        else:
            result[image_id] = told
            if heard is None or order_key(told) > order_key(heard):
                corrections.append(image_id)
    if not truth.complete:
        for image_id, heard in by_image.items():
            result.setdefault(image_id, heard)
    ordered = sorted(result.values(), key=lambda p: str(p["occurred_at"]))
    return Merged(
        images=[p for p in ordered if p["status"] in UNFINISHED],
        recent=[p for p in ordered if p["status"] not in UNFINISHED],
        corrections=corrections,
        gone=truth.absent(asked),
    )


async def heal(
    sessionmaker: async_sessionmaker[AsyncSession],
    hub: LiveHub,
    user_id: uuid.UUID,
    truth: Truth,
    *,
    record: Iterable[uuid.UUID],
    gone: Sequence[uuid.UUID],
) -> int:
    """Record projects' state of `record` images as corrections and forget `gone` ones.

    A correction that is not ahead of what the log holds is refused like any stale event.
    Returns how many corrections were new; the user's streams on this replica are woken.
    """
    recorded: list[int] = []
    async with unit_of_work(sessionmaker) as session:
        repo = ImageEventRepository(session)
        before = await repo.last_id(user_id)
        for image_id in record:
            payload = truth.images.get(image_id)
            if payload is None:
                continue
            row = await repo.record(
                event_id=correction_id(payload),
                user_id=user_id,
                image_id=image_id,
                status=str(payload["status"]),
                attempt=int(payload["attempt"]),
                payload=payload,
            )
            if row is not None and row > before:
                recorded.append(row)
        forgotten = await repo.forget(user_id, gone) if gone else 0
    if recorded:
        logger.info("live updates of user %s: %d corrected from projects", user_id, len(recorded))
        hub.publish(user_id, max(recorded))
    if forgotten:
        logger.info("live updates of user %s: %d deleted images forgotten", user_id, len(gone))
    return len(recorded)


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
        projects: ProjectsView | None = None,
    ) -> None:
        self.hub = hub
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.user_id = user_id
        self.last_event_id = last_event_id
        self.projects = projects
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
        """A snapshot for a new stream; nothing for a resumed one. Both heal the log first."""
        now = datetime.now(UTC)
        async with unit_of_work(self.sessionmaker) as session:
            repo = ImageEventRepository(session)
            head = await repo.last_id(self.user_id)
            # An id from the future (the table was reset) cannot be resumed from.
            resume_from = self.last_event_id
            if resume_from is not None and resume_from > await repo.last_id():
                resume_from = None
            self.cursor = head if resume_from is None else resume_from
            since = now - timedelta(hours=self.settings.image_events_retention_hours)
            log = await repo.latest(self.user_id, up_to=head, since=since)
        truth, merged = await self._ask_projects(log, now)
        if resume_from is not None:
            return None
        return sse(
            {
                "images": merged.images,
                "recent": merged.recent,
                "last_event_id": self.cursor,
                "source": "log" if truth is None else "projects",
            },
            event=SNAPSHOT_EVENT,
            event_id=self.cursor,
        )

    async def _ask_projects(
        self, log: Sequence[dict[str, Any]], now: datetime
    ) -> tuple[Truth | None, Merged]:
        """Merge projects' truth over the log and record what the log missed.

        The corrections get ids above the cursor, so they follow as ordinary events: a resumed
        stream (a browser reconnecting after a replica restart) replays them too.
        """
        asked = [uuid.UUID(str(p["image_id"])) for p in log if p["status"] in UNFINISHED]
        asked = asked[-self.settings.live_snapshot_limit :]
        truth = None
        if self.projects is not None:
            truth = await self.projects.images(
                self.user_id,
                ids=asked,
                updated_since=now - timedelta(seconds=self.settings.live_snapshot_recent_seconds),
            )
            if truth is None:
                logger.warning(
                    "projects did not answer; live updates of user %s start from the log",
                    self.user_id,
                )
        merged = merge_snapshot(log, truth, asked)
        if truth is not None and (merged.corrections or merged.gone):
            try:
                await heal(
                    self.sessionmaker,
                    self.hub,
                    self.user_id,
                    truth,
                    record=merged.corrections,
                    gone=merged.gone,
                )
            except Exception as exc:
                # The snapshot already shows the truth; the reconciler records it later.
                logger.warning("could not record live corrections: %s", type(exc).__name__)
        return truth, merged

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


class LiveReconciler:
    """Heals the log from projects: images it has believed unfinished for too long are asked
    about (one replica a pass), and every replica wakes its streams for rows recorded elsewhere.
    """

    def __init__(
        self,
        hub: LiveHub,
        sessionmaker: async_sessionmaker[AsyncSession],
        projects: ProjectsView,
        settings: GatewaySettings,
    ) -> None:
        self.hub = hub
        self.sessionmaker = sessionmaker
        self.projects = projects
        self.settings = settings

    async def reconcile_once(self) -> int:
        """One pass: correct stale unfinished images from projects; how many were corrected."""
        s = self.settings
        now = datetime.now(UTC)

        async def find(session: AsyncSession) -> Sequence[tuple[uuid.UUID, uuid.UUID]]:
            return await ImageEventRepository(session).stale_unfinished(
                older_than=now - timedelta(seconds=s.live_reconcile_stale_seconds),
                since=now - timedelta(hours=s.image_events_retention_hours),
                limit=s.live_reconcile_batch,
            )

        # Only the search runs under the pass lock: the calls to projects must not hold a
        # transaction (and the per-user lock the consumers need) open.
        found = await run_once(self.sessionmaker, RECONCILE_TASK, find)
        stale = cast(Sequence[tuple[uuid.UUID, uuid.UUID]], found or [])
        if not stale:
            return 0
        by_user: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
        for user_id, image_id in stale:
            by_user[user_id].append(image_id)
        corrected = 0
        for user_id, asked in by_user.items():
            truth = await self.projects.images(user_id, ids=asked)
            if truth is None:
                logger.warning("projects did not answer; live reconcile waits for the next pass")
                break
            corrected += await heal(
                self.sessionmaker,
                self.hub,
                user_id,
                truth,
                record=asked,
                gone=truth.absent(asked),
            )
        return corrected

    async def wake_once(self) -> int:
        """Wake this replica's streams whose user has rows they were not woken for."""
        users = self.hub.users()
        if not users:
            return 0
        async with unit_of_work(self.sessionmaker) as session:
            last = await ImageEventRepository(session).last_ids(users)
        return sum(self.hub.wake_up_to(user_id, row_id) for user_id, row_id in last.items())

    async def run_reconcile(self) -> None:
        """Reconcile about every `reconcile_interval_seconds` until cancelled."""
        interval = self.settings.reconcile_interval_seconds
        while True:
            await asyncio.sleep(interval * random.uniform(0.8, 1.2))
            try:
                await self.reconcile_once()
            except Exception as exc:
                logger.warning("live reconcile failed (will retry): %s", type(exc).__name__)

    async def run_wake(self) -> None:
        """Look for rows recorded elsewhere every `live_wake_interval_seconds` until cancelled."""
        failing = False
        while True:
            await asyncio.sleep(self.settings.live_wake_interval_seconds)
            try:
                await self.wake_once()
            except Exception as exc:
                # Every few seconds through a database outage: say it once, not each time.
                if not failing:
                    logger.warning("live wake-up check failing: %s", type(exc).__name__)
                failing = True
                continue
            if failing:
                logger.info("live wake-up check works again")
            failing = False


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
