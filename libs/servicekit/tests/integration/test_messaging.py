"""Outbox, inbox, retries and dead-lettering against the real RabbitMQ and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import pytest
from minio.error import S3Error
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from contracts.enums import RoomType, Style
from contracts.events import Envelope, ImageQueued
from contracts.topology import QueueSpec
from servicekit.db import create_engine, create_sessionmaker, unit_of_work
from servicekit.messaging import (
    EVENTS_EXCHANGE,
    Consumer,
    PermanentError,
    RetryPolicy,
    create_broker,
    declare_topology,
    outbox_publisher,
)
from servicekit.outbox import (
    LISTENER_APPLICATION_NAME,
    InboxMessage,
    OutboxMessage,
    OutboxRelay,
    add_event,
    apply_once,
)
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


POLICY = RetryPolicy(delays_seconds=(0.1, 0.2), max_age_seconds=60)


def _spec() -> QueueSpec:
    tag = uuid.uuid4().hex[:8]
    return QueueSpec(f"test.{tag}", (f"test.{tag}",))


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


async def _delete(
    channel: aio_pika.abc.AbstractChannel, spec: QueueSpec, policy: RetryPolicy = POLICY
) -> None:
    for name in (spec.name, spec.dead_letter, *(spec.delay_queue(d) for d in policy.delays_ms)):
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

    async def test_failing_handler_is_retried_along_the_ladder_then_given_up(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel
    ) -> None:
        spec = _spec()
        calls: list[uuid.UUID] = []
        given_up: list[str] = []

        async def handler(envelope: Envelope[ImageQueued]) -> None:
            calls.append(envelope.event_id)
            raise RuntimeError("storage hiccup")

        async def on_give_up(envelope: Envelope[ImageQueued], reason: str) -> None:
            given_up.append(reason)

        broker = create_broker(infra.amqp_url)
        Consumer(
            broker,
            spec,
            {"image.queued": ImageQueued},
            handler,
            on_give_up=on_give_up,
            policy=POLICY,
        )
        try:
            await broker.connect()
            await declare_topology(broker, (spec,), POLICY)
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
        Consumer(broker, spec, {"image.queued": ImageQueued}, handler, policy=POLICY)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,), POLICY)
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
        Consumer(broker, spec, {"image.queued": ImageQueued}, handler, policy=POLICY)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,), POLICY)
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
        spec = QueueSpec(f"test.{uuid.uuid4().hex[:8]}", ("image.queued",))
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
            await _delete(amqp, spec, RetryPolicy())
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
        Consumer(broker, spec, {"image.queued": ImageQueued}, handler, policy=POLICY)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,), POLICY)
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


@contextlib.asynccontextmanager
async def _consuming(
    infra: InfraUrls,
    amqp: aio_pika.abc.AbstractChannel,
    spec: QueueSpec,
    handler: Callable[[Envelope[ImageQueued]], Awaitable[None]],
    policy: RetryPolicy,
    **options: Any,
) -> AsyncIterator[None]:
    broker = create_broker(infra.amqp_url)
    Consumer(broker, spec, {"image.queued": ImageQueued}, handler, policy=policy, **options)
    try:
        await broker.connect()
        await declare_topology(broker, (spec,), policy)
        await broker.start()
        yield
    finally:
        await broker.stop()
        await _delete(amqp, spec, policy)


class TestTransientFailures:
    """Infrastructure errors are retried while the message is young; the rest are not."""

    async def test_infrastructure_error_is_retried_past_the_ladder_then_succeeds(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel
    ) -> None:
        spec = _spec()
        policy = RetryPolicy(delays_seconds=(0.05, 0.1), max_age_seconds=30)
        calls: list[float] = []
        given_up: list[str] = []

        async def handler(envelope: Envelope[ImageQueued]) -> None:
            calls.append(time.monotonic())
            if len(calls) <= 6:
                # What asyncpg says while the database restarts, wrapped as SQLAlchemy does.
                raise OperationalError("UPDATE images", {}, ConnectionRefusedError("down"))

        async def on_give_up(envelope: Envelope[ImageQueued], reason: str) -> None:
            given_up.append(reason)

        async with _consuming(infra, amqp, spec, handler, policy, on_give_up=on_give_up):
            await _publish_raw(
                infra, spec, Envelope.wrap(_event(), producer="t").model_dump_json().encode()
            )
            await wait_for(lambda: len(calls) == 7, within=15)
            parked = await _drain(amqp, spec.dead_letter)
        assert given_up == []
        assert parked == []
        # Six retries on a two-step ladder: the last step repeats.
        gaps = [b - a for a, b in itertools.pairwise(calls)]
        assert min(gaps[1:]) >= 0.09

    @pytest.mark.parametrize(
        "error",
        [
            IntegrityError("UPDATE images", {}, Exception("violates check constraint")),
            TimeoutError("S3 did not answer"),
            S3Error("SlowDown", "busy", "r", "h", "id", None),  # type: ignore[arg-type]
        ],
        ids=["check-constraint", "timeout", "s3"],
    )
    async def test_infrastructure_error_is_parked_only_after_the_maximum_age(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel, error: Exception
    ) -> None:
        spec = _spec()
        policy = RetryPolicy(delays_seconds=(0.05, 0.1), max_age_seconds=1.5)
        calls: list[float] = []
        given_up: list[str] = []

        async def handler(envelope: Envelope[ImageQueued]) -> None:
            calls.append(time.monotonic())
            raise error

        async def on_give_up(envelope: Envelope[ImageQueued], reason: str) -> None:
            given_up.append(reason)

        async with _consuming(infra, amqp, spec, handler, policy, on_give_up=on_give_up):
            envelope = Envelope.wrap(_event(), producer="t")
            await _publish_raw(infra, spec, envelope.model_dump_json().encode())
            await wait_for(lambda: given_up, within=15)
            parked = await wait_for(lambda: _drain(amqp, spec.dead_letter), within=5)
        assert len(calls) > 3, "retried past the two-step ladder"
        # The age is checked after each failed try, so the last try may start up to one delay
        # before the maximum age runs out; the ladder alone would have ended after 0.15 s.
        assert calls[-1] - calls[0] >= 1.5 - 0.1
        assert given_up[0].startswith("still failing after")
        assert parked[0].headers["x-death-reason"] == given_up[0]
        assert parked[0].headers["x-retry-count"] == len(calls) - 1
        assert json.loads(parked[0].body)["event_id"] == str(envelope.event_id)

    async def test_classification_is_overridable_per_consumer(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel
    ) -> None:
        spec = _spec()
        policy = RetryPolicy(delays_seconds=(0.05,), max_age_seconds=30)
        calls: list[int] = []

        async def handler(envelope: Envelope[ImageQueued]) -> None:
            calls.append(1)
            if len(calls) <= 4:
                raise LookupError("the backend is warming up")

        async with _consuming(
            infra, amqp, spec, handler, policy, is_transient=lambda e: isinstance(e, LookupError)
        ):
            await _publish_raw(
                infra, spec, Envelope.wrap(_event(), producer="t").model_dump_json().encode()
            )
            await wait_for(lambda: len(calls) == 5, within=10)
            assert await _drain(amqp, spec.dead_letter) == []

    async def test_failing_give_up_hook_comes_back_later_instead_of_spinning(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel
    ) -> None:
        spec = _spec()
        policy = RetryPolicy(delays_seconds=(0.05, 0.3), max_age_seconds=30)
        deliveries: list[float] = []
        hook_calls: list[float] = []

        async def handler(envelope: Envelope[ImageQueued]) -> None:
            deliveries.append(time.monotonic())
            raise PermanentError("the photo is corrupt")

        async def on_give_up(envelope: Envelope[ImageQueued], reason: str) -> None:
            hook_calls.append(time.monotonic())
            if len(hook_calls) <= 3:
                raise OperationalError("UPDATE jobs", {}, ConnectionRefusedError("db down"))

        async with _consuming(infra, amqp, spec, handler, policy, on_give_up=on_give_up):
            await _publish_raw(
                infra, spec, Envelope.wrap(_event(), producer="t").model_dump_json().encode()
            )
            parked = await wait_for(lambda: _drain(amqp, spec.dead_letter), within=15)
        assert len(hook_calls) == 4
        assert len(deliveries) == 4, "one delivery per hook attempt, no requeue loop"
        gaps = [b - a for a, b in itertools.pairwise(deliveries)]
        assert min(gaps) >= 0.25, "each retry waits the longest delay"
        assert parked[0].headers["x-death-reason"] == "the photo is corrupt"
        # Never redelivered by RabbitMQ: each try was a new message from a delay queue.
        assert parked[0].headers.get("x-delivery-count", 0) == 0

    async def test_a_give_up_hook_that_never_recovers_is_parked_after_the_maximum_age(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel
    ) -> None:
        spec = _spec()
        policy = RetryPolicy(delays_seconds=(0.05, 0.1), max_age_seconds=0.6)
        hook_calls: list[float] = []

        async def handler(envelope: Envelope[ImageQueued]) -> None:
            raise PermanentError("the photo is corrupt")

        async def on_give_up(envelope: Envelope[ImageQueued], reason: str) -> None:
            hook_calls.append(time.monotonic())
            raise RuntimeError("a bug in the hook")

        async with _consuming(infra, amqp, spec, handler, policy, on_give_up=on_give_up):
            await _publish_raw(
                infra, spec, Envelope.wrap(_event(), producer="t").model_dump_json().encode()
            )
            parked = await wait_for(lambda: _drain(amqp, spec.dead_letter), within=15)
        assert 2 <= len(hook_calls) <= 10
        assert hook_calls[-1] - hook_calls[0] >= 0.6
        reason = parked[0].headers["x-death-reason"]
        assert reason.startswith("the photo is corrupt (and the give-up hook kept failing")


class TestRelay:
    """Wake-ups are never lost, confirms are pipelined, returns are failures."""

    async def test_unroutable_event_stays_pending_and_the_rest_is_published(
        self,
        infra: InfraUrls,
        amqp: aio_pika.abc.AbstractChannel,
        sessionmaker: Any,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        spec = QueueSpec(f"test.{uuid.uuid4().hex[:8]}", ("image.queued",))
        broker = create_broker(infra.amqp_url)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,))
            async with unit_of_work(sessionmaker) as session:
                session.add(
                    OutboxMessage(
                        id=uuid.uuid4(),
                        routing_key=f"nobody.listens.{uuid.uuid4().hex[:6]}",
                        payload={"event_type": "nobody.listens"},
                    )
                )
                routable = add_event(session, _event(), producer="test")
            relay = OutboxRelay(sessionmaker, outbox_publisher(broker))
            with caplog.at_level(logging.ERROR, logger="servicekit.outbox"):
                sent = await relay.relay_batch()
            messages = await wait_for(lambda: _drain(amqp, spec.name), within=5)
        finally:
            await broker.stop()
            await _delete(amqp, spec, RetryPolicy())
        assert sent == 1
        assert [json.loads(m.body)["event_id"] for m in messages] == [str(routable.event_id)]
        async with sessionmaker() as session:
            pending = (
                await session.scalars(
                    select(OutboxMessage).where(OutboxMessage.published_at.is_(None))
                )
            ).all()
        assert len(pending) == 1
        assert pending[0].attempts == 1
        assert "UnroutableError" in (pending[0].last_error or "")
        assert any("not published" in r.getMessage() for r in caplog.records)

    async def test_commit_during_a_pass_is_published_without_waiting_for_the_poll(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel, sessionmaker: Any
    ) -> None:
        spec = QueueSpec(f"test.{uuid.uuid4().hex[:8]}", ("image.queued",))
        broker = create_broker(infra.amqp_url)
        publish = outbox_publisher(broker)
        late: list[uuid.UUID] = []
        relay: OutboxRelay

        async def publish_and_commit_meanwhile(row: OutboxMessage) -> None:
            if not late:
                # Another request commits (and wakes the relay) while this pass runs.
                async with unit_of_work(sessionmaker) as session:
                    late.append(add_event(session, _event(), producer="test").event_id)
                relay.wake()
            await publish(row)

        relay = OutboxRelay(sessionmaker, publish_and_commit_meanwhile, poll_seconds=60)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,))
            async with unit_of_work(sessionmaker) as session:
                first = add_event(session, _event(), producer="test")
            task = asyncio.ensure_future(relay.run())
            seen: set[str] = set()

            async def both_arrived() -> bool:
                seen.update(json.loads(m.body)["event_id"] for m in await _drain(amqp, spec.name))
                return {str(first.event_id), *map(str, late)} <= seen and bool(late)

            await wait_for(both_arrived, within=5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await broker.stop()
            await _delete(amqp, spec, RetryPolicy())

    async def test_notify_from_another_process_wakes_the_relay(
        self,
        infra: InfraUrls,
        amqp: aio_pika.abc.AbstractChannel,
        database_factory: Callable[..., Any],
    ) -> None:
        url = await database_factory("projects")
        relay_engine, writer_engine = create_engine(url), create_engine(url)
        spec = QueueSpec(f"test.{uuid.uuid4().hex[:8]}", ("image.queued",))
        broker = create_broker(infra.amqp_url)
        relay = OutboxRelay(
            create_sessionmaker(relay_engine),
            outbox_publisher(broker),
            poll_seconds=60,
            listen_url=url,
            max_backoff_seconds=0.2,
        )
        task: asyncio.Future[None] | None = None
        try:
            await broker.connect()
            await declare_topology(broker, (spec,))
            task = asyncio.ensure_future(relay.run())
            await wait_for(relay.listening.is_set, within=10)
            await wait_for(lambda: _idle(relay_engine), within=10)
            for round_ in range(2):
                # The writer has its own engine: nothing in this relay's process is told.
                async with unit_of_work(create_sessionmaker(writer_engine)) as session:
                    envelope = add_event(session, _event(), producer="test")
                started = time.monotonic()
                messages = await wait_for(lambda: _drain(amqp, spec.name), within=5)
                assert json.loads(messages[0].body)["event_id"] == str(envelope.event_id)
                assert time.monotonic() - started < 5
                if round_ == 0:
                    # The database drops the LISTEN connection: the relay reconnects.
                    await _terminate_listener(writer_engine)
                    await wait_for(lambda: not relay.listening.is_set(), within=5)
                    await wait_for(relay.listening.is_set, within=10)
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await broker.stop()
            await _delete(amqp, spec, RetryPolicy())
            await relay_engine.dispose()
            await writer_engine.dispose()


async def _idle(engine: AsyncEngine) -> bool:
    """Nothing pending in the outbox (the relay's first pass is done)."""
    async with engine.connect() as conn:
        pending = await conn.scalar(text("SELECT count(*) FROM outbox WHERE published_at IS NULL"))
    return bool(pending == 0)


async def _terminate_listener(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name AND datname = current_database()"
            ),
            {"name": LISTENER_APPLICATION_NAME},
        )
