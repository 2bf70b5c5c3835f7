"""Events the gateway consumes.

`customer.linked` fills `users.stripe_customer_id` (a durable, retried queue). Image status
events feed live updates: every replica reads all of them through its own exclusive,
auto-deleted queue, because each replica must wake the streams connected to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from faststream import AckPolicy
from faststream.rabbit import Channel, RabbitQueue
from faststream.rabbit.annotations import RabbitMessage
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.events import IMAGE_STATUS_EVENTS, CustomerLinked, Envelope, parse_envelope
from contracts.topology import GATEWAY_CUSTOMERS
from gateway import service
from gateway.live import STATUS_EVENT_TYPES, LiveHub, record_status
from servicekit.logs import request_id_var
from servicekit.messaging import EVENTS_EXCHANGE, PermanentError
from servicekit.outbox import apply_once
from servicekit.runtime import Runtime

logger = logging.getLogger(__name__)

CUSTOMERS_CONSUMER = "gateway.customers"
IMAGE_STATUS_KEYS: tuple[str, ...] = tuple(IMAGE_STATUS_EVENTS)
RECORD_ATTEMPTS = 3


async def link_customer(session: AsyncSession, envelope: Envelope[CustomerLinked]) -> None:
    """Record the Stripe customer billing created for a user."""
    event = envelope.data
    if not await service.link_customer(session, event.user_id, event.stripe_customer_id):
        # Billing only links users the gateway announced; an unknown id will not appear later.
        raise PermanentError(f"no user {event.user_id}")


def customer_linked_handler(
    runtime: Runtime,
) -> Callable[[Envelope[CustomerLinked]], Awaitable[None]]:
    """The `customer.linked` handler bound to this runtime's database."""

    async def handle(envelope: Envelope[CustomerLinked]) -> None:
        """Apply `customer.linked` once per event id."""
        applied = await apply_once(
            runtime.sessionmaker, CUSTOMERS_CONSUMER, envelope, link_customer
        )
        if not applied:
            logger.info("duplicate %s ignored", envelope.event_id)

    return handle


def live_updates_queue() -> RabbitQueue:
    """This replica's own queue of image status events; it vanishes with the connection."""
    return RabbitQueue(
        f"gateway.sse.{uuid.uuid4().hex}",
        exclusive=True,
        auto_delete=True,
        durable=False,
        routing_key=IMAGE_STATUS_KEYS[0],
    )


def image_status_handler(runtime: Runtime, hub: LiveHub) -> Callable[..., Awaitable[None]]:
    """The live updates handler bound to this runtime's database and this replica's streams."""

    async def handle(msg: RabbitMessage) -> None:
        """Record an image status change, then wake its owner's streams on this replica."""
        try:
            raw = json.loads(msg.body)
            model = STATUS_EVENT_TYPES[str(raw.get("event_type"))]
            envelope: Envelope[Any] = parse_envelope(raw, model)
        except (ValueError, KeyError, AttributeError, ValidationError) as exc:
            logger.warning("ignoring a malformed image status message: %s", type(exc).__name__)
            return
        token = request_id_var.set(envelope.correlation_id or str(envelope.event_id))
        try:
            row_id = await _record(runtime, hub, envelope)
            if row_id is None:
                logger.info(
                    "image %s: stale %s ignored", envelope.data.image_id, envelope.event_type
                )
                return
            logger.info(
                "image %s: %s (event %d)", envelope.data.image_id, envelope.event_type, row_id
            )
            hub.publish(envelope.data.user_id, row_id)
        finally:
            request_id_var.reset(token)

    return handle


async def _record(runtime: Runtime, hub: LiveHub, envelope: Envelope[Any]) -> int | None:
    delay = 0.2
    for attempt in range(1, RECORD_ATTEMPTS + 1):
        try:
            # One at a time, in the order the queue delivered them, so one replica never
            # records an image's `ready` before its `processing`.
            async with hub.order:
                return await record_status(runtime.sessionmaker, envelope)
        except Exception as exc:
            if attempt == RECORD_ATTEMPTS:
                # A notification, not work: other replicas record it too, so let it go.
                logger.error("could not record %s: %s", envelope.event_id, type(exc).__name__)
                return None
            await asyncio.sleep(delay)
            delay *= 2
    return None


async def bind_live_updates(runtime: Runtime, hub: LiveHub, queue: RabbitQueue) -> None:
    """Bind the remaining status routing keys once the broker runs, then report ready.

    FastStream binds a queue with one routing key; the other bindings are made through the
    same robust queue object, so they are restored with it after a reconnect.
    """
    await runtime.broker_ready.wait()
    delay = 0.5
    while True:
        try:
            exchange = await runtime.broker.declare_exchange(EVENTS_EXCHANGE)
            declared = await runtime.broker.declare_queue(queue)
            for key in IMAGE_STATUS_KEYS[1:]:
                await declared.bind(exchange, routing_key=key)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("could not bind live updates yet (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        hub.ready.set()
        return


def register_consumers(runtime: Runtime, hub: LiveHub | None = None) -> RabbitQueue | None:
    """Subscribe the gateway's handlers (called by the lifespan before the broker starts)."""
    runtime.consumer(
        GATEWAY_CUSTOMERS,
        {CustomerLinked.routing_key: CustomerLinked},
        customer_linked_handler(runtime),
    )
    if hub is None:
        return None
    queue = live_updates_queue()
    # One message at a time: handled concurrently, an image's `ready` could be recorded before
    # its `processing`, which would then be dropped as stale and never reach the streams.
    runtime.broker.subscriber(
        queue, EVENTS_EXCHANGE, ack_policy=AckPolicy.ACK, channel=Channel(prefetch_count=1)
    )(image_status_handler(runtime, hub))
    return queue
