"""Transactional outbox and inbox: at-least-once delivery, exactly-once effects.

A producer adds its event to `outbox` in the same transaction as the state change, which also
sends a NOTIFY at commit; the relay publishes committed rows (persistent, mandatory, with
publisher confirms) and marks them sent. A consumer
claims `(consumer, event_id)` in `inbox` in the same transaction as its effect, so a redelivered
event is recognised and skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import DateTime, Index, Integer, String, Text, delete, func, select, text
from sqlalchemy import event as sa_event
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, Session, mapped_column

from contracts.events import Envelope, Event
from servicekit.db import Base, unit_of_work

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)


class OutboxMessage(Base):
    """An event waiting to be published, written with the change that caused it."""

    __tablename__ = "outbox"

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    routing_key: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    correlation_id: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index(
            "ix_outbox_pending",
            "created_at",
            postgresql_where=text("published_at IS NULL"),
        ),
    )


class InboxMessage(Base):
    """An event a consumer has applied; its presence makes redelivery a no-op."""

    __tablename__ = "inbox"

    consumer: Mapped[str] = mapped_column(String(100), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    routing_key: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), index=True
    )


def add_event(
    session: AsyncSession,
    event: Event,
    *,
    producer: str,
    correlation_id: str | None = None,
) -> Envelope[Any]:
    """Stage `event` for publishing when `session` commits."""
    envelope = Envelope.wrap(event, producer=producer, correlation_id=correlation_id)
    session.add(
        OutboxMessage(
            id=envelope.event_id,
            routing_key=event.routing_key,
            payload=envelope.model_dump(mode="json"),
            correlation_id=correlation_id,
        )
    )
    if not session.info.get("outbox_dirty"):
        sa_event.listen(session.sync_session, "before_commit", _notify_relays)
    session.info["outbox_dirty"] = True
    return envelope


NOTIFY_CHANNEL = "realstaging_outbox"
"""Each service has its own database, and NOTIFY reaches only listeners on the same one."""
LISTENER_APPLICATION_NAME = "outbox-relay-listen"


def _notify_relays(session: Session) -> None:
    # In the committing transaction: listeners hear it at commit, never for a rollback.
    session.execute(text("SELECT pg_notify(:channel, '')"), {"channel": NOTIFY_CHANNEL})


async def claim(session: AsyncSession, consumer: str, envelope: Envelope[Any]) -> bool:
    """Record that `consumer` applies this event; False if it already did."""
    stmt = (
        insert(InboxMessage)
        .values(consumer=consumer, event_id=envelope.event_id, routing_key=envelope.event_type)
        .on_conflict_do_nothing()
        .returning(InboxMessage.event_id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


async def apply_once(
    sessionmaker: async_sessionmaker[AsyncSession],
    consumer: str,
    envelope: Envelope[E],
    effect: Callable[[AsyncSession, Envelope[E]], Awaitable[None]],
) -> bool:
    """Run `effect` and record the event in one transaction; False for a duplicate."""
    async with unit_of_work(sessionmaker) as session:
        if not await claim(session, consumer, envelope):
            return False
        await effect(session, envelope)
    return True


Publish = Callable[[OutboxMessage], Awaitable[None]]


class OutboxRelay:
    """Publishes committed outbox rows; several relays may run at once (SKIP LOCKED).

    It wakes when this process commits an event (`wake`), when any process commits one on the
    same database (LISTEN on `NOTIFY_CHANNEL`), and otherwise every `poll_seconds` as a fallback.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        publish: Publish,
        *,
        poll_seconds: float = 0.5,
        batch_size: int = 100,
        retention: timedelta = timedelta(days=7),
        listen_url: str | None = None,
        max_backoff_seconds: float = 5.0,
        listen_check_seconds: float = 30.0,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._publish = publish
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._retention = retention
        self._listen_dsn = _asyncpg_dsn(listen_url) if listen_url else None
        self._max_backoff = max_backoff_seconds
        self._listen_check = listen_check_seconds
        self._wakeup = asyncio.Event()
        self._last_prune = datetime.min.replace(tzinfo=UTC)
        self.listening = asyncio.Event()
        """Set while the LISTEN connection is up (tests wait on it)."""

    def wake(self) -> None:
        """Publish soon: a transaction with new events just committed."""
        self._wakeup.set()

    async def run(self) -> None:
        """Relay until cancelled, backing off while the broker or database is down."""
        listener = asyncio.ensure_future(self.listen()) if self._listen_dsn else None
        try:
            await self._relay_forever()
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(BaseException):
                    await listener

    async def _relay_forever(self) -> None:
        backoff = self._poll_seconds
        while True:
            # Cleared before reading: a commit that lands during the pass sets it again and
            # is picked up by the next pass instead of waiting for the poll.
            self._wakeup.clear()
            wait = self._poll_seconds
            try:
                while True:
                    found, sent = await self._relay_pass()
                    if found == 0 or sent < found:
                        break
                await self._maybe_prune()
                if found and sent < found:
                    # Some rows were refused (returned, or the broker failed mid-batch):
                    # come back after a pause instead of hammering them.
                    backoff = min(backoff * 2, self._max_backoff)
                    wait = backoff
                else:
                    backoff = self._poll_seconds
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("outbox relay paused: %s", exc)
                backoff = min(backoff * 2, self._max_backoff)
                wait = backoff
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=wait)

    async def relay_batch(self) -> int:
        """Publish one batch of pending rows; return how many were sent."""
        _, sent = await self._relay_pass()
        return sent

    async def _relay_pass(self) -> tuple[int, int]:
        """Publish one batch concurrently and mark the confirmed rows; (found, sent)."""
        async with unit_of_work(self._sessionmaker) as session:
            rows = (
                await session.scalars(
                    select(OutboxMessage)
                    .where(OutboxMessage.published_at.is_(None))
                    .order_by(OutboxMessage.created_at)
                    .limit(self._batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0, 0
            # Publish frames leave in order on one channel; the confirms are awaited together,
            # so a batch costs about one round trip instead of one per row.
            results = await asyncio.gather(
                *(self._publish(row) for row in rows), return_exceptions=True
            )
            now = datetime.now(UTC)
            sent = 0
            failures: list[str] = []
            for row, result in zip(rows, results, strict=True):
                if isinstance(result, BaseException):
                    if isinstance(result, asyncio.CancelledError):
                        raise result
                    # The row stays pending for a later pass; what was confirmed is kept.
                    row.attempts += 1
                    row.last_error = f"{type(result).__name__}: {result}"[:500]
                    failures.append(f"{row.id} ({row.routing_key}): {row.last_error}")
                else:
                    row.published_at = now
                    sent += 1
        if failures:
            logger.error(
                "outbox: %d of %d events not published, kept pending: %s",
                len(failures),
                len(rows),
                "; ".join(failures[:5]),
            )
        return len(rows), sent

    async def listen(self) -> None:
        """Wake the relay on NOTIFY from any process's commit; reconnect after outages."""
        if self._listen_dsn is None:
            return
        first_delay = min(self._poll_seconds, self._max_backoff)
        delay = first_delay
        while True:
            try:
                await self._listen_once(self._listen_dsn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("outbox LISTEN unavailable (%s); polling meanwhile", exc)
            if self.listening.is_set():
                # It was up: a fresh outage starts with a short pause again.
                delay = first_delay
            self.listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_backoff)

    async def _listen_once(self, dsn: str) -> None:
        """Hold one LISTEN connection until it is lost."""
        conn = await asyncpg.connect(
            dsn, timeout=10, server_settings={"application_name": LISTENER_APPLICATION_NAME}
        )
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _: lost.set())
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: self.wake())
            self.listening.set()
            # Whatever was committed while nobody listened.
            self.wake()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=self._listen_check)
                if not lost.is_set():
                    # A half-open connection never reports its loss: ask.
                    await conn.fetchval("SELECT 1", timeout=10)
            raise ConnectionError("the LISTEN connection was closed")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)

    async def _maybe_prune(self) -> None:
        now = datetime.now(UTC)
        if now - self._last_prune < timedelta(minutes=10):
            return
        self._last_prune = now
        cutoff = now - self._retention
        async with unit_of_work(self._sessionmaker) as session:
            await session.execute(
                delete(OutboxMessage).where(
                    OutboxMessage.published_at.is_not(None), OutboxMessage.published_at < cutoff
                )
            )
            await session.execute(delete(InboxMessage).where(InboxMessage.received_at < cutoff))


def _asyncpg_dsn(url: str) -> str:
    """A plain libpq URL for asyncpg from an SQLAlchemy one."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
