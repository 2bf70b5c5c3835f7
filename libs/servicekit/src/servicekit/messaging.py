"""RabbitMQ plumbing: the broker, the declared topology, retrying consumers, publishing.

A consumer that fails is retried through delay queues with growing TTLs, a bounded number of
times, then parked in its dead-letter queue with the reason in the headers. A message that
cannot be parsed, or that its handler rejects as permanent, is parked at once. A worker that
dies mid-message leaves it unacked; RabbitMQ redelivers it, and the quorum queue's delivery
limit parks it if it keeps killing workers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from faststream import AckPolicy
from faststream.rabbit import Channel, ExchangeType, QueueType, RabbitBroker, RabbitExchange
from faststream.rabbit import RabbitQueue as FSQueue
from faststream.rabbit.annotations import RabbitMessage
from pydantic import ValidationError

from contracts.events import Envelope, Event, parse_envelope
from contracts.topology import ALL_QUEUES, EXCHANGE, QueueSpec
from servicekit.logs import request_id_var
from servicekit.outbox import OutboxMessage

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)

DELIVERY_LIMIT = 10
"""Deliveries without an ack (crashes) before RabbitMQ parks a message itself."""

EVENTS_EXCHANGE = RabbitExchange(EXCHANGE, type=ExchangeType.TOPIC, durable=True)


class PermanentError(Exception):
    """A failure that no retry can fix: park the message (and fail its work) at once."""


def create_broker(url: str, *, prefetch: int = 8, app_id: str = "realstaging") -> RabbitBroker:
    """A broker with publisher confirms and a bounded prefetch."""
    return RabbitBroker(
        url,
        default_channel=Channel(prefetch_count=prefetch, publisher_confirms=True),
        app_id=app_id,
        graceful_timeout=30.0,
        fail_fast=False,
        reconnect_interval=2.0,
        logger=logging.getLogger("faststream"),
    )


def main_queue(spec: QueueSpec) -> FSQueue:
    """The consumer's quorum queue; crash loops end in its dead-letter queue."""
    return FSQueue(
        spec.name,
        queue_type=QueueType.QUORUM,
        durable=True,
        arguments={
            "x-delivery-limit": DELIVERY_LIMIT,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": spec.dead_letter,
        },
    )


def _retry_queue(spec: QueueSpec, attempt: int, delay_ms: int) -> FSQueue:
    return FSQueue(
        spec.retry_queue(attempt),
        durable=True,
        arguments={
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": spec.name,
        },
    )


def _dead_letter_queue(spec: QueueSpec) -> FSQueue:
    return FSQueue(spec.dead_letter, queue_type=QueueType.QUORUM, durable=True)


async def declare_topology(broker: RabbitBroker, specs: tuple[QueueSpec, ...] = ALL_QUEUES) -> None:
    """Declare the exchange and every queue, so no event is published into the void."""
    exchange = await broker.declare_exchange(EVENTS_EXCHANGE)
    for spec in specs:
        queue = await broker.declare_queue(main_queue(spec))
        for key in spec.routing_keys:
            await queue.bind(exchange, routing_key=key)
        await broker.declare_queue(_dead_letter_queue(spec))
        for attempt, delay in enumerate(spec.retry_delays_ms, start=1):
            await broker.declare_queue(_retry_queue(spec, attempt, delay))


def outbox_publisher(broker: RabbitBroker) -> Callable[[OutboxMessage], Awaitable[None]]:
    """The relay's publish step: persistent, confirmed, with ids for tracing and dedup."""

    async def publish(row: OutboxMessage) -> None:
        await broker.publish(
            json.dumps(row.payload).encode(),
            exchange=EVENTS_EXCHANGE,
            routing_key=row.routing_key,
            persist=True,
            message_id=str(row.id),
            correlation_id=row.correlation_id,
            content_type="application/json",
            headers={"x-event-type": row.routing_key},
            timeout=10,
        )

    return publish


async def _raw_body(msg: Any) -> bytes:
    """Hand the handler raw bytes: parsing (and parking what will not parse) is ours to do.

    FastStream would otherwise decode by content type before the handler runs, and a body that
    is not valid text would fail there, out of reach of the dead-letter logic.
    """
    return bytes(msg.body)


class Consumer(Generic[E]):
    """Subscribes a handler to a queue with parsing, bounded retries and dead-lettering."""

    def __init__(
        self,
        broker: RabbitBroker,
        spec: QueueSpec,
        event_types: dict[str, type[E]],
        handler: Callable[[Envelope[E]], Awaitable[None]],
        *,
        on_give_up: Callable[[Envelope[E], str], Awaitable[None]] | None = None,
    ) -> None:
        self.broker = broker
        self.spec = spec
        self.event_types = event_types
        self.handler = handler
        self.on_give_up = on_give_up
        broker.subscriber(main_queue(spec), ack_policy=AckPolicy.MANUAL, decoder=_raw_body)(
            self._consume
        )

    async def _consume(self, msg: RabbitMessage) -> None:
        headers: dict[str, Any] = dict(msg.headers or {})
        retries = int(headers.get("x-retry-count", 0) or 0)
        try:
            envelope = self._parse(msg)
        except (ValidationError, ValueError, KeyError) as exc:
            await self._park(msg, headers, f"malformed message: {str(exc)[:300]}")
            return
        token = request_id_var.set(envelope.correlation_id or str(envelope.event_id))
        try:
            await self.handler(envelope)
        except PermanentError as exc:
            await self._give_up(msg, headers, envelope, str(exc))
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"[:500]
            if retries < len(self.spec.retry_delays_ms):
                logger.warning(
                    "retrying %s %s (retry %d): %s",
                    envelope.event_type,
                    envelope.event_id,
                    retries + 1,
                    reason,
                )
                await self._forward(msg, headers, self.spec.retry_queue(retries + 1), retries + 1)
            else:
                await self._give_up(msg, headers, envelope, f"gave up after retries: {reason}")
        else:
            await msg.ack()
        finally:
            request_id_var.reset(token)

    def _parse(self, msg: RabbitMessage) -> Envelope[E]:
        raw = json.loads(msg.body)
        if not isinstance(raw, dict):
            raise ValueError("the body is not a JSON object")
        event_type = raw.get("event_type")
        model = self.event_types.get(str(event_type))
        if model is None:
            raise ValueError(f"unexpected event type {event_type!r}")
        return parse_envelope(raw, model)

    async def _give_up(
        self, msg: RabbitMessage, headers: dict[str, Any], envelope: Envelope[E], reason: str
    ) -> None:
        logger.error("parking %s %s: %s", envelope.event_type, envelope.event_id, reason)
        if self.on_give_up is not None:
            try:
                await self.on_give_up(envelope, reason)
            except Exception:
                logger.exception("give-up hook failed; redelivering")
                await msg.nack(requeue=True)
                return
        await self._park(msg, headers, reason)

    async def _park(self, msg: RabbitMessage, headers: dict[str, Any], reason: str) -> None:
        headers["x-death-reason"] = reason
        await self._forward(msg, headers, self.spec.dead_letter, None)

    async def _forward(
        self, msg: RabbitMessage, headers: dict[str, Any], queue: str, retries: int | None
    ) -> None:
        if retries is not None:
            headers["x-retry-count"] = retries
        headers["x-original-queue"] = self.spec.name
        try:
            await self.broker.publish(
                msg.body,
                queue=queue,
                persist=True,
                headers=headers,
                message_id=msg.message_id,
                correlation_id=msg.correlation_id,
                content_type=msg.content_type or "application/json",
                timeout=10,
            )
        except Exception:
            # Not forwarded: let RabbitMQ redeliver rather than lose the message.
            logger.exception("could not forward message to %s", queue)
            await msg.nack(requeue=True)
            return
        await msg.ack()
