"""RabbitMQ plumbing: the broker, the declared topology, retrying consumers, publishing.

A failing message is forwarded to a delay queue and comes back to its queue when the delay runs
out; the delays come from the retry policy (the service's settings), the last one repeating.
How long it keeps coming back depends on why it failed:

- a permanent failure (`PermanentError`, a message that cannot be parsed) is parked in the
  dead-letter queue at once, with the reason in its headers;
- an infrastructure failure (database, broker, S3 away, a timeout) is retried for as long as
  the message is younger than the policy's maximum age (days), then parked;
- anything else (a bug, a flaky remote backend) is retried once per step of the ladder, then
  given up: the consumer's give-up hook runs and the message is parked.

A worker that dies mid-message leaves it unacked; RabbitMQ redelivers it, and the quorum
queue's delivery limit parks it if it keeps killing workers. Nothing here requeues a message
it could not handle: that would spin at full speed against the delivery limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aio_pika.exceptions
import aiormq.exceptions
import asyncpg
import minio.error
import sqlalchemy.exc
import urllib3.exceptions
from faststream import AckPolicy
from faststream.rabbit import Channel, ExchangeType, QueueType, RabbitBroker, RabbitExchange
from faststream.rabbit import RabbitQueue as FSQueue
from faststream.rabbit.annotations import RabbitMessage
from pamqp.commands import Basic
from prometheus_client import Counter
from pydantic import ValidationError

from contracts.events import Envelope, Event, parse_envelope
from contracts.topology import ALL_QUEUES, EXCHANGE, QueueSpec
from servicekit.logs import request_id_var
from servicekit.outbox import OutboxMessage
from servicekit.settings import ServiceSettings

logger = logging.getLogger(__name__)

E = TypeVar("E", bound=Event)

DELIVERY_LIMIT = 10
"""Deliveries without an ack (crashes) before RabbitMQ parks a message itself."""

EVENTS_EXCHANGE = RabbitExchange(EXCHANGE, type=ExchangeType.TOPIC, durable=True)

RETRY_COUNT = "x-retry-count"
# Epoch milliseconds as integers: AMQP tables carry Python floats as 32-bit floats, which lose
# whole minutes at today's epoch.
FIRST_FAILED_AT = "x-first-failed-at-ms"
PARKED_AT = "x-parked-at-ms"
HOOK_FAILED_AT = "x-give-up-failed-at-ms"
DEATH_REASON = "x-death-reason"
ORIGINAL_QUEUE = "x-original-queue"
RETRY_HEADERS = (RETRY_COUNT, FIRST_FAILED_AT, PARKED_AT, HOOK_FAILED_AT, DEATH_REASON, "x-death")
"""Headers a replayed message starts without, so it gets a fresh retry budget."""

RETRIES = Counter("messages_retried_total", "Failed messages sent to a delay queue", ["queue"])
PARKS = Counter("messages_parked_total", "Messages parked in a dead-letter queue", ["queue"])


class PermanentError(Exception):
    """A failure that no retry can fix: park the message (and fail its work) at once."""


class UnroutableError(ConnectionError):
    """RabbitMQ returned a mandatory message: no queue is bound to receive it."""


@dataclass(frozen=True)
class RetryPolicy:
    """How failing messages are retried: the delay ladder and how long transient ones last."""

    delays_seconds: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0)
    max_age_seconds: float = 7 * 24 * 3600.0
    dead_letter_max_length: int = 100_000

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> RetryPolicy:
        """The policy a service's settings describe."""
        return cls(
            delays_seconds=tuple(settings.retry_delays_seconds) or cls.delays_seconds,
            max_age_seconds=settings.retry_max_age_seconds,
            dead_letter_max_length=settings.dead_letter_max_length,
        )

    def delay_ms(self, retry: int) -> int:
        """The delay before retry number `retry` (1-based); the last step repeats."""
        step = self.delays_seconds[min(max(retry, 1), len(self.delays_seconds)) - 1]
        return max(1, round(step * 1000))

    @property
    def delays_ms(self) -> tuple[int, ...]:
        """Every distinct delay of the ladder, each of which needs its delay queue."""
        return tuple(sorted({self.delay_ms(i + 1) for i in range(len(self.delays_seconds))}))


INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError, TimeoutError (asyncio's too) and socket errors
    sqlalchemy.exc.DBAPIError,  # OperationalError, InterfaceError, IntegrityError, ...
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    minio.error.MinioException,
    urllib3.exceptions.HTTPError,
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,  # a RuntimeError: the channel is closed
    aio_pika.exceptions.AMQPException,
)


def is_infrastructure_error(exc: BaseException) -> bool:
    """Whether `exc` says a database, the broker or S3 is away: worth retrying for days.

    An IntegrityError counts too: a constraint that refuses a valid change is an operator's
    temporary state (a migration half done), not something the message can fix.
    """
    return isinstance(exc, INFRASTRUCTURE_ERRORS)


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


def delay_queue(spec: QueueSpec, delay_ms: int) -> FSQueue:
    """Where a message waits `delay_ms` before RabbitMQ dead-letters it back to its queue."""
    return FSQueue(
        spec.delay_queue(delay_ms),
        durable=True,
        arguments={
            "x-message-ttl": delay_ms,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": spec.name,
        },
    )


def dead_letter_arguments(max_length: int) -> dict[str, Any]:
    """A dead-letter queue's arguments: quorum, bounded, dropping the oldest beyond the bound."""
    return {"x-queue-type": "quorum", "x-max-length": max_length, "x-overflow": "drop-head"}


async def declare_dead_letter_queue(broker: RabbitBroker, name: str, max_length: int) -> None:
    """Declare a bounded dead-letter queue, accepting one an older version declared unbounded.

    RabbitMQ refuses to redeclare a queue with other arguments and closes the channel, so this
    runs on a channel of its own; an existing unbounded queue is kept (bound it with a policy).
    """
    connection = await broker.connect()
    channel = await connection.channel()
    try:
        await channel.declare_queue(name, durable=True, arguments=dead_letter_arguments(max_length))
    except aiormq.exceptions.ChannelPreconditionFailed:
        logger.warning(
            "dead-letter queue %s exists with other arguments (no size bound); keeping it. "
            'Bound it with: rabbitmqctl set_policy dlq-bound "\\.dlq$" '
            '\'{"max-length": %d, "overflow": "drop-head"}\' --apply-to queues',
            name,
            max_length,
        )
    finally:
        with contextlib.suppress(Exception):
            if not channel.is_closed:
                await channel.close()


async def declare_topology(
    broker: RabbitBroker,
    specs: tuple[QueueSpec, ...] = ALL_QUEUES,
    policy: RetryPolicy | None = None,
) -> None:
    """Declare the exchange and every queue, so no event is published into the void."""
    policy = policy or RetryPolicy()
    exchange = await broker.declare_exchange(EVENTS_EXCHANGE)
    for spec in specs:
        queue = await broker.declare_queue(main_queue(spec))
        for key in spec.routing_keys:
            await queue.bind(exchange, routing_key=key)
        await declare_dead_letter_queue(broker, spec.dead_letter, policy.dead_letter_max_length)
        for delay in policy.delays_ms:
            await broker.declare_queue(delay_queue(spec, delay))
            DECLARED_DELAYS.add(delay)


DECLARED_DELAYS: set[int] = set()
"""Delays this process declared queues for (so test fixtures can empty them)."""


def check_confirmed(result: object, where: str) -> None:
    """Raise unless a publish was confirmed: a returned (unroutable) message is a failure.

    FastStream's channel does not raise on returns; the confirmation then carries the returned
    message instead of an ack.
    """
    if result is not None and not isinstance(result, Basic.Ack):
        raise UnroutableError(f"RabbitMQ returned the message: nothing is bound for {where}")


def outbox_publisher(
    broker: RabbitBroker, *, timeout_seconds: float = 10.0
) -> Callable[[OutboxMessage], Awaitable[None]]:
    """The relay's publish step: persistent, mandatory, confirmed, with ids for dedup."""

    async def publish(row: OutboxMessage) -> None:
        result = await broker.publish(
            json.dumps(row.payload).encode(),
            exchange=EVENTS_EXCHANGE,
            routing_key=row.routing_key,
            mandatory=True,
            persist=True,
            message_id=str(row.id),
            correlation_id=row.correlation_id,
            content_type="application/json",
            headers={"x-event-type": row.routing_key},
            timeout=timeout_seconds,
        )
        check_confirmed(result, f"routing key {row.routing_key!r}")

    return publish


async def _raw_body(msg: Any) -> bytes:
    """Hand the handler raw bytes: parsing (and parking what will not parse) is ours to do.

    FastStream would otherwise decode by content type before the handler runs, and a body that
    is not valid text would fail there, out of reach of the dead-letter logic.
    """
    return bytes(msg.body)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


class Consumer(Generic[E]):
    """Subscribes a handler to a queue with parsing, retries by kind of failure, and parking."""

    def __init__(
        self,
        broker: RabbitBroker,
        spec: QueueSpec,
        event_types: dict[str, type[E]],
        handler: Callable[[Envelope[E]], Awaitable[None]],
        *,
        on_give_up: Callable[[Envelope[E], str], Awaitable[None]] | None = None,
        is_transient: Callable[[BaseException], bool] | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.broker = broker
        self.spec = spec
        self.event_types = event_types
        self.handler = handler
        self.on_give_up = on_give_up
        self.is_transient = is_transient or is_infrastructure_error
        self.policy = policy or RetryPolicy()
        broker.subscriber(main_queue(spec), ack_policy=AckPolicy.MANUAL, decoder=_raw_body)(
            self._consume
        )

    async def _consume(self, msg: RabbitMessage) -> None:
        headers: dict[str, Any] = dict(msg.headers or {})
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
            await self._failed(msg, headers, envelope, exc)
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

    async def _failed(
        self, msg: RabbitMessage, headers: dict[str, Any], envelope: Envelope[E], exc: Exception
    ) -> None:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        retries = int(_number(headers.get(RETRY_COUNT)) or 0)
        now = _now_ms()
        first_failed = int(_number(headers.get(FIRST_FAILED_AT)) or now)
        if self.is_transient(exc):
            age = (now - first_failed) / 1000
            retry = age < self.policy.max_age_seconds
            why = f"still failing after {age:.0f} s: {reason}"
        else:
            retry = retries < len(self.policy.delays_seconds)
            why = f"gave up after {retries} retries: {reason}"
        if not retry:
            await self._give_up(msg, headers, envelope, why)
            return
        level = logging.WARNING if retries < len(self.policy.delays_seconds) else logging.INFO
        logger.log(
            level,
            "retrying %s %s (retry %d): %s",
            envelope.event_type,
            envelope.event_id,
            retries + 1,
            reason,
        )
        headers[FIRST_FAILED_AT] = first_failed
        RETRIES.labels(self.spec.name).inc()
        await self._retry_later(msg, headers, retries + 1)

    async def _retry_later(self, msg: RabbitMessage, headers: dict[str, Any], retry: int) -> None:
        headers[RETRY_COUNT] = retry
        headers.setdefault(FIRST_FAILED_AT, _now_ms())
        delay = self.policy.delay_ms(retry)
        await self._forward(msg, headers, self.spec.delay_queue(delay))

    async def _give_up(
        self, msg: RabbitMessage, headers: dict[str, Any], envelope: Envelope[E], reason: str
    ) -> None:
        if self.on_give_up is not None:
            try:
                await self.on_give_up(envelope, reason)
            except Exception as exc:
                now = _now_ms()
                since = int(_number(headers.get(HOOK_FAILED_AT)) or now)
                if (now - since) / 1000 < self.policy.max_age_seconds:
                    # Its database is away too: come back after the longest delay and try
                    # again, rather than requeue at once (a hot loop that ends at the
                    # delivery limit).
                    logger.warning(
                        "give-up hook for %s %s failed (%s); trying again later",
                        envelope.event_type,
                        envelope.event_id,
                        type(exc).__name__,
                    )
                    headers[HOOK_FAILED_AT] = since
                    retries = int(_number(headers.get(RETRY_COUNT)) or 0)
                    await self._retry_later(
                        msg, headers, max(retries + 1, len(self.policy.delays_seconds))
                    )
                    return
                reason = f"{reason} (and the give-up hook kept failing: {type(exc).__name__})"
        logger.error("parking %s %s: %s", envelope.event_type, envelope.event_id, reason)
        await self._park(msg, headers, reason)

    async def _park(self, msg: RabbitMessage, headers: dict[str, Any], reason: str) -> None:
        headers[DEATH_REASON] = reason
        headers[PARKED_AT] = _now_ms()
        headers.setdefault(FIRST_FAILED_AT, headers[PARKED_AT])
        PARKS.labels(self.spec.name).inc()
        await self._forward(msg, headers, self.spec.dead_letter)

    async def _forward(self, msg: RabbitMessage, headers: dict[str, Any], queue: str) -> None:
        headers[ORIGINAL_QUEUE] = self.spec.name
        try:
            result = await self.broker.publish(
                msg.body,
                queue=queue,
                mandatory=True,
                persist=True,
                headers=headers,
                message_id=msg.message_id,
                correlation_id=msg.correlation_id,
                content_type=msg.content_type or "application/json",
                timeout=10,
            )
            check_confirmed(result, f"queue {queue!r}")
        except Exception:
            # Not forwarded: let RabbitMQ redeliver rather than lose the message, but not at
            # once; the delivery limit parks it if this keeps failing.
            logger.exception("could not forward message to %s", queue)
            await asyncio.sleep(self.policy.delays_seconds[0])
            with contextlib.suppress(Exception):
                await msg.nack(requeue=True)
            return
        await msg.ack()
