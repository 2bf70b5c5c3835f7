"""Parked messages: listed, shown, replayed and purged; bounded queues; the gauge; the command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from prometheus_client import REGISTRY

from contracts.enums import RoomType, Style
from contracts.events import Envelope, ImageQueued
from contracts.topology import QueueSpec
from servicekit.deadletters import DeadLetters, UnknownQueue, main, refresh_gauge
from servicekit.errors import NotFound
from servicekit.messaging import (
    EVENTS_EXCHANGE,
    Consumer,
    PermanentError,
    RetryPolicy,
    create_broker,
    declare_topology,
)
from servicekit.testing import InfraUrls, wait_for

pytestmark = pytest.mark.integration

POLICY = RetryPolicy(delays_seconds=(0.05,), max_age_seconds=30)


def _envelope() -> Envelope[ImageQueued]:
    event = ImageQueued(
        image_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        original_key="uploads/x/y.jpg",
        room_type=RoomType.KITCHEN,
        style=Style.MODERN,
    )
    return Envelope.wrap(event, producer="test")


@pytest.fixture
async def amqp(infra: InfraUrls) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """A raw channel for inspecting queues."""
    connection = await aio_pika.connect_robust(infra.amqp_url)
    async with connection:
        yield await connection.channel()


class Parking:
    """A consumer that parks what it is told to refuse, and applies the rest."""

    def __init__(self) -> None:
        self.spec = QueueSpec(f"test.{uuid.uuid4().hex[:8]}", (f"test.{uuid.uuid4().hex[:8]}",))
        self.refuse: set[uuid.UUID] = set()
        self.applied: list[uuid.UUID] = []

    async def handle(self, envelope: Envelope[ImageQueued]) -> None:
        """Refuse (park) or apply."""
        if envelope.event_id in self.refuse:
            raise PermanentError(f"refused {envelope.event_id}")
        self.applied.append(envelope.event_id)


@pytest.fixture
async def parking(
    infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel
) -> AsyncIterator[tuple[Parking, Any]]:
    """A running parking consumer and a function that sends it envelopes."""
    parking = Parking()
    broker = create_broker(infra.amqp_url)
    Consumer(broker, parking.spec, {"image.queued": ImageQueued}, parking.handle, policy=POLICY)

    async def send(envelope: Envelope[ImageQueued]) -> None:
        await broker.publish(
            envelope.model_dump_json().encode(),
            exchange=EVENTS_EXCHANGE,
            routing_key=parking.spec.routing_keys[0],
            persist=True,
            message_id=str(envelope.event_id),
            headers={"x-event-type": envelope.event_type},
        )

    try:
        await broker.connect()
        await declare_topology(broker, (parking.spec,), POLICY)
        await broker.start()
        yield parking, send
    finally:
        await broker.stop()
        for name in (
            parking.spec.name,
            parking.spec.dead_letter,
            *(parking.spec.delay_queue(d) for d in POLICY.delays_ms),
        ):
            await amqp.queue_delete(name)


async def _parked(infra: InfraUrls, spec: QueueSpec, n: int) -> None:
    async def enough() -> bool:
        async with DeadLetters.open(infra.amqp_url, (spec,)) as dl:
            return await dl.count(spec.name) == n

    await wait_for(enough, within=10)


class TestDeadLetters:
    """Operations on a dead-letter queue never lose a message."""

    async def test_list_show_replay_and_purge(
        self, infra: InfraUrls, parking: tuple[Parking, Any]
    ) -> None:
        consumer, send = parking
        spec = consumer.spec
        envelopes = [_envelope() for _ in range(4)]
        consumer.refuse = {e.event_id for e in envelopes}
        for envelope in envelopes:
            await send(envelope)
        await _parked(infra, spec, 4)
        ids = [str(e.event_id) for e in envelopes]

        async with DeadLetters.open(infra.amqp_url, (spec,)) as dl:
            page = await dl.list(spec.dead_letter, limit=3)
            assert page.count == 4
            assert [m.message_id for m in page.messages] == ids[:3]
            first = page.messages[0]
            assert first.event_type == "image.queued"
            assert first.reason == f"refused {ids[0]}"
            assert first.original_queue == spec.name
            assert first.parked_at is not None
            assert first.first_failed_at is not None
            assert json.loads(first.body_preview)["event_id"] == ids[0]
            # Listing took nothing away (the count catches up with the hand-back at once).
            await wait_for(lambda: _count_is(dl, spec, 4), within=5)
            shown = await dl.show(spec.name, ids[2])
            assert shown.reason == f"refused {ids[2]}"
            with pytest.raises(NotFound):
                await dl.show(spec.name, "no-such-id")

            # The cause is fixed: replay one by id, and it is applied.
            consumer.refuse.clear()
            assert await dl.replay(spec.name, ids[1]) == 1
            await wait_for(lambda: consumer.applied == [envelopes[1].event_id], within=10)
            await wait_for(lambda: _count_is(dl, spec, 3), within=5)
            with pytest.raises(NotFound):
                await dl.replay(spec.name, ids[1])

            assert await dl.purge(spec.name, ids[0]) == 1
            await wait_for(lambda: _count_is(dl, spec, 2), within=5)
            remaining = {m.message_id for m in (await dl.list(spec.name)).messages}
            assert remaining == {ids[2], ids[3]}

            assert await dl.replay(spec.name) == 2
            await wait_for(lambda: len(consumer.applied) == 3, within=10)
            assert set(consumer.applied) == {envelopes[i].event_id for i in (1, 2, 3)}
            await wait_for(lambda: _count_is(dl, spec, 0), within=5)

    async def test_replayed_message_gets_a_fresh_retry_budget_and_purge_all(
        self, infra: InfraUrls, parking: tuple[Parking, Any]
    ) -> None:
        consumer, send = parking
        spec = consumer.spec
        envelope = _envelope()
        consumer.refuse = {envelope.event_id}
        await send(envelope)
        await _parked(infra, spec, 1)
        async with DeadLetters.open(infra.amqp_url, (spec,)) as dl:
            # Still refused: it comes back with a reason of its own, once.
            assert await dl.replay(spec.name) == 1
            await _parked(infra, spec, 1)
            again = (await dl.list(spec.name)).messages[0]
            assert again.message_id == str(envelope.event_id)
            assert again.retries == 0
            assert await dl.purge(spec.name) == 1
            assert await dl.count(spec.name) == 0

    async def test_a_failed_replay_leaves_the_message_parked(
        self, infra: InfraUrls, parking: tuple[Parking, Any], amqp: aio_pika.abc.AbstractChannel
    ) -> None:
        consumer, send = parking
        spec = consumer.spec
        envelope = _envelope()
        consumer.refuse = {envelope.event_id}
        await send(envelope)
        await _parked(infra, spec, 1)
        # Its queue is gone (an operator deleted it): the publish is returned, not lost.
        gone = QueueSpec(f"test.{uuid.uuid4().hex[:8]}", spec.routing_keys)
        await amqp.declare_queue(
            gone.dead_letter, durable=True, arguments={"x-queue-type": "quorum"}
        )
        try:
            await amqp.default_exchange.publish(
                aio_pika.Message(b"{}", message_id="orphan"), routing_key=gone.dead_letter
            )
            async with DeadLetters.open(infra.amqp_url, (gone,)) as dl:
                await wait_for(lambda: dl.count(gone.name), within=5)
                with pytest.raises(Exception, match=r"NO_ROUTE|returned|Publish"):
                    await dl.replay(gone.name)
                assert await dl.count(gone.name) == 1
        finally:
            await amqp.queue_delete(gone.dead_letter)

    async def test_unknown_queue_is_refused(self, infra: InfraUrls) -> None:
        async with DeadLetters.open(infra.amqp_url) as dl:
            with pytest.raises(UnknownQueue):
                await dl.list("no.such.queue")

    async def test_gauge_counts_parked_messages(
        self, infra: InfraUrls, parking: tuple[Parking, Any]
    ) -> None:
        consumer, send = parking
        envelopes = [_envelope() for _ in range(2)]
        consumer.refuse = {e.event_id for e in envelopes}
        for envelope in envelopes:
            await send(envelope)
        await _parked(infra, consumer.spec, 2)
        await refresh_gauge(infra.amqp_url, (consumer.spec,))
        labels = {"queue": consumer.spec.name}
        assert REGISTRY.get_sample_value("dead_letter_messages", labels) == 2
        parks = REGISTRY.get_sample_value("messages_parked_total", labels)
        assert parks == 2


class TestBoundedQueues:
    """A dead-letter queue keeps at most `dead_letter_max_length` messages."""

    async def test_oldest_parked_messages_are_dropped_beyond_the_bound(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel
    ) -> None:
        spec = QueueSpec(f"test.{uuid.uuid4().hex[:8]}", ("test.nothing",))
        policy = RetryPolicy(delays_seconds=(0.05,), dead_letter_max_length=2)
        broker = create_broker(infra.amqp_url)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,), policy)
            for n in range(3):
                await amqp.default_exchange.publish(
                    aio_pika.Message(b"{}", message_id=f"m{n}"), routing_key=spec.dead_letter
                )
            async with DeadLetters.open(infra.amqp_url, (spec,)) as dl:
                page = await wait_for(lambda: _page_of(dl, spec, 2), within=5)
            assert [m.message_id for m in page.messages] == ["m1", "m2"]
        finally:
            await broker.stop()
            for name in (spec.name, spec.dead_letter, spec.delay_queue(50)):
                await amqp.queue_delete(name)

    async def test_an_unbounded_queue_from_an_older_version_does_not_stop_start_up(
        self, infra: InfraUrls, amqp: aio_pika.abc.AbstractChannel
    ) -> None:
        spec = QueueSpec(f"test.{uuid.uuid4().hex[:8]}", (f"test.{uuid.uuid4().hex[:8]}",))
        await amqp.declare_queue(
            spec.dead_letter, durable=True, arguments={"x-queue-type": "quorum"}
        )
        broker = create_broker(infra.amqp_url)
        try:
            await broker.connect()
            await declare_topology(broker, (spec,), POLICY)
            await declare_topology(broker, (spec,), POLICY)
            # The broker's own channels still work.
            await broker.publish(b"{}", exchange=EVENTS_EXCHANGE, routing_key=spec.routing_keys[0])
            queue = await amqp.declare_queue(spec.name, passive=True)
            await wait_for(lambda: _has_message(queue), within=5)
        finally:
            await broker.stop()
            for name in (spec.name, spec.dead_letter, *map(spec.delay_queue, POLICY.delays_ms)):
                await amqp.queue_delete(name)


async def _count_is(dl: DeadLetters, spec: QueueSpec, count: int) -> bool:
    return await dl.count(spec.name) == count


async def _page_of(dl: DeadLetters, spec: QueueSpec, count: int) -> Any:
    page = await dl.list(spec.name)
    return page if page.count == count else None


async def _has_message(queue: aio_pika.abc.AbstractQueue) -> bool:
    await queue.declare()
    return bool(queue.declaration_result.message_count)


class TestCommand:
    """`python -m servicekit.deadletters` over the topology's queues."""

    async def test_list_show_and_purge_from_the_command_line(
        self, infra: InfraUrls, capsys: pytest.CaptureFixture[str]
    ) -> None:
        broker = create_broker(infra.amqp_url)
        try:
            await broker.connect()
            await declare_topology(broker, policy=POLICY)
        finally:
            await broker.stop()
        connection = await aio_pika.connect(infra.amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.default_exchange.publish(
                aio_pika.Message(
                    b'{"event_type": "user.created"}',
                    message_id="cli-1",
                    headers={"x-death-reason": "malformed message: test"},
                ),
                routing_key="billing.users.dlq",
            )
        url = ["--amqp-url", infra.amqp_url]

        def run(*args: str) -> int:
            return main([*args, *url])

        assert await asyncio.to_thread(run, "list") == 0
        listed = capsys.readouterr().out
        assert "billing.users.dlq" in listed
        assert "projects.image-status.dlq" in listed
        assert await asyncio.to_thread(run, "list", "billing.users") == 0
        assert "malformed message: test" in capsys.readouterr().out
        assert await asyncio.to_thread(run, "show", "billing.users", "--id", "cli-1") == 0
        assert json.loads(capsys.readouterr().out)["event_type"] == "user.created"
        assert await asyncio.to_thread(run, "show", "billing.users", "--id", "nope") == 1
        with contextlib.suppress(SystemExit), pytest.raises(SystemExit):
            await asyncio.to_thread(run, "purge", "billing.users")
        assert await asyncio.to_thread(run, "purge", "billing.users", "--id", "cli-1") == 0
        assert "purged 1" in capsys.readouterr().out
