"""Outbox, inbox, retries and dead-lettering against the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.enums import RoomType, Style
from contracts.events import Envelope, ImageQueued
from contracts.topology import QueueSpec
from servicekit.db import create_engine, create_sessionmaker, unit_of_work
from servicekit.messaging import (
    EVENTS_EXCHANGE,
    Consumer,
    PermanentError,
    create_broker,
    declare_topology,
    outbox_publisher,
)
from servicekit.outbox import InboxMessage, OutboxMessage, OutboxRelay, add_event, apply_once
from servicekit.testing import InfraUrls, wait_for

pytestmark = pytest.mark.integration


def _event() -> ImageQueued:
    return ImageQueued(
        image_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        original_key="uploads/x/y.jpg",
        room_type=RoomType.BEDROOM,
        style=Style.RUSTIC,
    )


def _spec() -> QueueSpec:
    tag = uuid.uuid4().hex[:8]
    return QueueSpec(f"test.{tag}", (f"test.{tag}",), retry_delays_ms=(100, 200))


@pytest.fixture
async def amqp(infra: InfraUrls) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A raw channel for inspecting queues."""
    connection = await aio_pika.connect_robust(infra.amqp_url)
    async with connection:
        yield await connection.channel()


@pytest.fixture
async def sessionmaker(database_factory: Callable[..., Any]) -> AsyncIterator[Any]:
    """Sessions on a database that has the outbox and inbox tables."""
    engine = create_engine(await database_factory("projects"))
    yield create_sessionmaker(engine)
    await engine.dispose()


async def _drain(channel: aio_pika.abc.AbstractChannel, name: str) -> list[Any]:
    queue = await channel.get_queue(name, ensure=False)
    found = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        found.append(message)
    return found


async def _delete(channel: aio_pika.abc.AbstractChannel, spec: QueueSpec) -> None:
    for name in (spec.name, spec.dead_letter, *(spec.retry_queue(i + 1) for i in range(2))):
        await channel.queue_delete(name)


async def _publish_raw(infra: InfraUrls, spec: QueueSpec, body: bytes) -> None:
    broker = create_broker(infra.amqp_url)
    async with broker:
        await broker.connect()
        await broker.publish(
            body, exchange=EVENTS_EXCHANGE, routing_key=spec.routing_keys[0], persist=True
        )


class TestConsumer:
    """Parsing, bounded retries and dead-lettering."""

    async def test_failing_message_is_retried_then_parked_with_its_reason(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel
    ) -> None:
        spec = _spec()
        calls: list[uuid.UUID] = []
        given_up: list[str] = []

        async def handler(envelope: Envelope[ImageQueued]) -> None:
            calls.append(envelope.event_id)
            raise ConnectionError("storage hiccup")

        async def on_give_up(envelope: Envelope[ImageQueued], reason: str) -> None:
            given_up.append(reason)

        broker = create_broker(infra.amqp_url)
        Consumer(broker, spec, {"image.queued": ImageQueued}, handler, on_give_up=on_give_up)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,))
            await broker.start()
            envelope = Envelope.wrap(_event(), producer="test")
            await _publish_raw(infra, spec, envelope.model_dump_json().encode())
            await wait_for(lambda: len(given_up) == 1, within=15)
            parked = await wait_for(lambda: _drain(amqp, spec.dead_letter), within=5)
        finally:
            await broker.stop()
            await _delete(amqp, spec)
        assert len(calls) == 3, "one delivery and two retries"
        assert set(calls) == {envelope.event_id}
        assert "storage hiccup" in given_up[0]
        assert json.loads(parked[0].body)["event_id"] == str(envelope.event_id)
        assert "storage hiccup" in parked[0].headers["x-death-reason"]

    async def test_poison_message_is_parked_and_the_queue_keeps_flowing(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel
    ) -> None:
        spec = _spec()
        handled: list[uuid.UUID] = []

        async def handler(envelope: Envelope[ImageQueued]) -> None:
            handled.append(envelope.event_id)

        broker = create_broker(infra.amqp_url)
        Consumer(broker, spec, {"image.queued": ImageQueued}, handler)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,))
            await broker.start()
            good = Envelope.wrap(_event(), producer="test")
            for body in (b"\x00not json", b'{"event_type": "image.queued"}', b"[1, 2]"):
                await _publish_raw(infra, spec, body)
            await _publish_raw(infra, spec, good.model_dump_json().encode())
            await wait_for(lambda: handled == [good.event_id], within=10)
            parked: list[Any] = []

            async def three_parked() -> bool:
                parked.extend(await _drain(amqp, spec.dead_letter))
                return len(parked) >= 3

            await wait_for(three_parked, within=10)
        finally:
            await broker.stop()
            await _delete(amqp, spec)
        assert all(m.headers["x-death-reason"].startswith("malformed") for m in parked)

    async def test_permanent_error_is_parked_without_retry(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel
    ) -> None:
        spec = _spec()
        calls: list[int] = []

        async def handler(envelope: Envelope[ImageQueued]) -> None:
            calls.append(1)
            raise PermanentError("the photo is corrupt")

        broker = create_broker(infra.amqp_url)
        Consumer(broker, spec, {"image.queued": ImageQueued}, handler)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,))
            await broker.start()
            envelope = Envelope.wrap(_event(), producer="test")
            await _publish_raw(infra, spec, envelope.model_dump_json().encode())
            parked = await wait_for(lambda: _drain(amqp, spec.dead_letter), within=10)
        finally:
            await broker.stop()
            await _delete(amqp, spec)
        assert calls == [1]
        assert parked[0].headers["x-death-reason"] == "the photo is corrupt"


class TestOutboxAndInbox:
    """Events leave with their transaction and are applied once."""

    async def test_relay_publishes_committed_events_only(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel, sessionmaker: Any
    ) -> None:
        spec = QueueSpec(f"test.{uuid.uuid4().hex[:8]}", ("image.queued",), retry_delays_ms=())
        broker = create_broker(infra.amqp_url)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,))
            committed = _event()
            async with unit_of_work(sessionmaker) as session:
                add_event(session, committed, producer="test")
            with contextlib.suppress(RuntimeError):
                async with unit_of_work(sessionmaker) as session:
                    add_event(session, _event(), producer="test")
                    raise RuntimeError("the change failed, so its event must not leave")
            relay = OutboxRelay(sessionmaker, outbox_publisher(broker))
            sent = await relay.relay_batch()
            messages = await wait_for(lambda: _drain(amqp, spec.name), within=5)
        finally:
            await broker.stop()
            await amqp.queue_delete(spec.name)
            await amqp.queue_delete(spec.dead_letter)
        assert sent >= 1
        ids = [json.loads(m.body)["data"]["image_id"] for m in messages]
        assert str(committed.image_id) in ids
        for message in messages:
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert message.message_id == json.loads(message.body)["event_id"]
        async with sessionmaker() as session:
            pending = await session.scalar(
                select(func.count()).where(OutboxMessage.published_at.is_(None))
            )
        assert pending == 0

    async def test_duplicate_event_is_ignored(self, sessionmaker: Any) -> None:
        envelope = Envelope.wrap(_event(), producer="test")
        applied: list[uuid.UUID] = []

        async def effect(session: AsyncSession, env: Envelope[ImageQueued]) -> None:
            await session.execute(text("SELECT 1"))
            applied.append(env.event_id)

        first = await apply_once(sessionmaker, "test-consumer", envelope, effect)
        second = await apply_once(sessionmaker, "test-consumer", envelope, effect)
        other = await apply_once(sessionmaker, "another-consumer", envelope, effect)
        assert (first, second, other) == (True, False, True)
        assert applied == [envelope.event_id, envelope.event_id]
        async with sessionmaker() as session:
            rows = await session.scalar(
                select(func.count()).where(InboxMessage.event_id == envelope.event_id)
            )
        assert rows == 2

    async def test_failed_effect_leaves_no_inbox_record(self, sessionmaker: Any) -> None:
        envelope = Envelope.wrap(_event(), producer="test")

        async def failing(session: AsyncSession, env: Envelope[ImageQueued]) -> None:
            raise ConnectionError("down")

        with pytest.raises(ConnectionError):
            await apply_once(sessionmaker, "test-consumer", envelope, failing)
        applied: list[int] = []

        async def effect(session: AsyncSession, env: Envelope[ImageQueued]) -> None:
            applied.append(1)

        assert await apply_once(sessionmaker, "test-consumer", envelope, effect) is True
        assert applied == [1]


class TestGarbage:
    """Bytes that are not even text are parked, whatever content type they claim."""

    @pytest.mark.parametrize("content_type", [None, "application/json", "text/plain"])
    async def test_undecodable_bytes_are_parked(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel, content_type: str | None
    ) -> None:
        spec = _spec()
        handled: list[uuid.UUID] = []

        async def handler(envelope: Envelope[ImageQueued]) -> None:
            handled.append(envelope.event_id)

        broker = create_broker(infra.amqp_url)
        Consumer(broker, spec, {"image.queued": ImageQueued}, handler)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,))
            await broker.start()
            channel = amqp
            await channel.default_exchange.publish(
                aio_pika.Message(b"not json at all \xff\xfe", content_type=content_type),
                routing_key=spec.name,
            )
            good = Envelope.wrap(_event(), producer="test")
            await _publish_raw(infra, spec, good.model_dump_json().encode())
            await wait_for(lambda: handled == [good.event_id], within=10)
            parked = await wait_for(lambda: _drain(amqp, spec.dead_letter), within=10)
        finally:
            await broker.stop()
            await _delete(amqp, spec)
        assert parked[0].body == b"not json at all \xff\xfe"
        assert parked[0].headers["x-death-reason"].startswith("malformed")
