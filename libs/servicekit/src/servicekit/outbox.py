"""Transactional outbox and inbox: at-least-once delivery, exactly-once effects.

A producer adds its event to `outbox` in the same transaction as the state change; the relay
publishes committed rows (persistent, with publisher confirms) and marks them sent. A consumer
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

from sqlalchemy import DateTime, Index, Integer, String, Text, delete, func, select, text
from sqlalchemy.dialects.postgresql import JSONB, UUID, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

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
    session.info["outbox_dirty"] = True
    return envelope


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
    """Publishes committed outbox rows; several relays may run at once (SKIP LOCKED)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        publish: Publish,
        *,
        poll_seconds: float = 0.5,
        batch_size: int = 100,
        retention: timedelta = timedelta(days=7),
    ) -> None:
        self._sessionmaker = sessionmaker
        self._publish = publish
        self._poll_seconds = poll_seconds
        self._batch_size = batch_size
        self._retention = retention
        self._wakeup = asyncio.Event()
        self._last_prune = datetime.min.replace(tzinfo=UTC)

    def wake(self) -> None:
        """Publish soon: a transaction with new events just committed."""
        self._wakeup.set()

    async def run(self) -> None:
        """Relay until cancelled, backing off while the broker or database is down."""
        backoff = self._poll_seconds
        while True:
            try:
                sent = await self.relay_batch()
                await self._maybe_prune()
                backoff = self._poll_seconds
                if sent >= self._batch_size:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("outbox relay paused: %s", exc)
                backoff = min(backoff * 2, 5.0)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=backoff)

    async def relay_batch(self) -> int:
        """Publish one batch of pending rows; return how many were sent."""
        failure: tuple[uuid.UUID, str] | None = None
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
            sent = 0
            for row in rows:
                try:
                    await self._publish(row)
                except Exception as exc:
                    # Keep what was confirmed; the failed row stays pending for the next pass.
                    row.attempts += 1
                    row.last_error = str(exc)[:500]
                    failure = (row.id, row.last_error)
                    break
                row.published_at = datetime.now(UTC)
                sent += 1
        if failure is not None and sent == 0:
            raise ConnectionError(f"could not publish outbox row {failure[0]}: {failure[1]}")
        return sent

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
