"""Events the gateway consumes: `customer.linked` fills `users.stripe_customer_id`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.events import CustomerLinked, Envelope
from contracts.topology import GATEWAY_CUSTOMERS
from gateway import service
from servicekit.messaging import Consumer, PermanentError
from servicekit.outbox import apply_once
from servicekit.runtime import Runtime

logger = logging.getLogger(__name__)

CUSTOMERS_CONSUMER = "gateway.customers"


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


def register_consumers(runtime: Runtime) -> None:
    """Subscribe the gateway's handlers (called by the lifespan before the broker starts)."""
    Consumer(
        runtime.broker,
        GATEWAY_CUSTOMERS,
        {CustomerLinked.routing_key: CustomerLinked},
        customer_linked_handler(runtime),
    )
