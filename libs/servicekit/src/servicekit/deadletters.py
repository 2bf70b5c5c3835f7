"""Dead-letter queues made operable: list, inspect, replay and purge parked messages.

Every queue of the topology has a dead-letter queue `<queue>.dlq` where the shared consumer
parks what it cannot handle, with the reason in the `x-death-reason` header. These operations
work over a plain AMQP connection, so the command line, the gateway's admin API and the
services' metrics use the same code:

    uv run python -m servicekit.deadletters list [QUEUE]
    uv run python -m servicekit.deadletters show QUEUE --id ID
    uv run python -m servicekit.deadletters replay QUEUE (--id ID | --all)
    uv run python -m servicekit.deadletters purge QUEUE (--id ID | --all)

Browsing takes messages without acking them and gives them back at the end (or when its channel
closes), so a failure half way (a publish refused, a lost connection) never loses a parked
message; a replayed message is acked in the dead-letter queue only after its copy is confirmed
in its own queue. AMQP cannot peek: the messages a listing shows go back to the end of their
quorum queue, and the queue's count lags such a hand-back by some milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import aio_pika
import aio_pika.abc
import aiormq.exceptions
from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.params import Depends as DependsParam
from prometheus_client import Gauge
from pydantic import BaseModel, Field

from contracts.topology import ALL_QUEUES, QueueSpec
from servicekit.errors import NotFound, Unavailable
from servicekit.messaging import (
    DEATH_REASON,
    FIRST_FAILED_AT,
    ORIGINAL_QUEUE,
    PARKED_AT,
    RETRY_COUNT,
    RETRY_HEADERS,
)

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
PREVIEW_CHARS = 500

PARKED = Gauge("dead_letter_messages", "Messages parked in a dead-letter queue", ["queue"])


class DeadLetterQueueOut(BaseModel):
    """A queue and how many of its messages are parked."""

    queue: str = Field(description="The consumer's queue.")
    dead_letter_queue: str
    count: int


class DeadLetterQueuesOut(BaseModel):
    """Every dead-letter queue of the topology."""

    items: list[DeadLetterQueueOut]


class ParkedMessageOut(BaseModel):
    """A parked message, as much as an operator needs to decide on it."""

    message_id: str | None
    event_type: str | None
    reason: str | None = Field(description="Why it was parked (the x-death-reason header).")
    original_queue: str
    retries: int
    first_failed_at: datetime | None
    parked_at: datetime | None
    body_preview: str


class DeadLetterPageOut(BaseModel):
    """A dead-letter queue's size and its first messages."""

    queue: str
    dead_letter_queue: str
    count: int
    messages: list[ParkedMessageOut]


class ReplayIn(BaseModel):
    """Which parked message to replay; all of them when no id is given."""

    message_id: str | None = None


class ReplayedOut(BaseModel):
    """How many parked messages went back to their queue."""

    replayed: int


class PurgedOut(BaseModel):
    """How many parked messages were deleted."""

    purged: int


class UnknownQueue(NotFound):
    """Not a queue of the topology."""

    code = "unknown_queue"


def resolve(queue: str, specs: Sequence[QueueSpec] = ALL_QUEUES) -> QueueSpec:
    """The spec named by a queue or by its dead-letter queue."""
    for spec in specs:
        if queue in (spec.name, spec.dead_letter):
            return spec
    raise UnknownQueue(f"No queue {queue!r}.", details={"queues": [spec.name for spec in specs]})


def _when(value: Any) -> datetime | None:
    """A header time: a timestamp, or epoch milliseconds as our consumer writes them."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    except (TypeError, ValueError, OverflowError):
        return None


def describe(message: aio_pika.abc.AbstractIncomingMessage, spec: QueueSpec) -> ParkedMessageOut:
    """What a parked message says about itself."""
    headers: dict[str, Any] = dict(message.headers or {})
    deaths = headers.get("x-death")
    death: dict[str, Any] = deaths[0] if isinstance(deaths, list) and deaths else {}
    reason = headers.get(DEATH_REASON)
    if reason is None and death:
        # Parked by RabbitMQ itself (the delivery limit: it kept killing workers).
        reason = f"rabbitmq: {death.get('reason')}"
    event_type = headers.get("x-event-type")
    if event_type is None:
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            raw = json.loads(message.body)
            if isinstance(raw, dict) and isinstance(raw.get("event_type"), str):
                event_type = raw["event_type"]
    retries = headers.get(RETRY_COUNT) or 0
    return ParkedMessageOut(
        message_id=message.message_id,
        event_type=None if event_type is None else str(event_type),
        reason=None if reason is None else str(reason),
        original_queue=str(headers.get(ORIGINAL_QUEUE) or spec.name),
        retries=int(retries) if isinstance(retries, int | float) else 0,
        first_failed_at=_when(headers.get(FIRST_FAILED_AT)),
        parked_at=_when(headers.get(PARKED_AT)) or _when(death.get("time")),
        body_preview=message.body[:PREVIEW_CHARS].decode("utf-8", errors="replace"),
    )


def replay_copy(message: aio_pika.abc.AbstractIncomingMessage) -> aio_pika.Message:
    """The message to send back to its queue: same body and ids, a fresh retry budget."""
    headers = {k: v for k, v in (message.headers or {}).items() if k not in RETRY_HEADERS}
    headers["x-replayed-at-ms"] = int(time.time() * 1000)
    return aio_pika.Message(
        message.body,
        headers=headers,
        content_type=message.content_type or "application/json",
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        app_id=message.app_id,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )


class _Browse:
    """A dead-letter queue being looked through; remembers what it took."""

    def __init__(
        self,
        channel: aio_pika.abc.AbstractChannel,
        queue: aio_pika.abc.AbstractQueue,
        count: int,
        timeout: float,
    ) -> None:
        self.channel = channel
        self.queue = queue
        self.count = count
        self.timeout = timeout
        self.taken: list[aio_pika.abc.AbstractIncomingMessage] = []

    async def next(self) -> aio_pika.abc.AbstractIncomingMessage | None:
        """The next message not yet seen, or None."""
        message = await self.queue.get(no_ack=False, fail=False, timeout=self.timeout)
        if message is not None:
            self.taken.append(message)
        return message


class DeadLetters:
    """Operations on the topology's dead-letter queues over one AMQP connection."""

    def __init__(
        self,
        connection: aio_pika.abc.AbstractConnection,
        specs: Sequence[QueueSpec] = ALL_QUEUES,
        *,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.connection = connection
        self.specs = tuple(specs)
        self.timeout = timeout_seconds
        self._channel: aio_pika.abc.AbstractChannel | None = None

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        amqp_url: str,
        specs: Sequence[QueueSpec] = ALL_QUEUES,
        *,
        timeout_seconds: float = 10.0,
    ) -> AsyncIterator[DeadLetters]:
        """Connect for the duration of the block."""
        connection = await aio_pika.connect(amqp_url, timeout=timeout_seconds)
        async with connection:
            yield cls(connection, specs, timeout_seconds=timeout_seconds)

    async def _channel_for_browsing(self) -> aio_pika.abc.AbstractChannel:
        if self._channel is None or self._channel.is_closed:
            self._channel = await self.connection.channel(
                publisher_confirms=True, on_return_raises=True
            )
        return self._channel

    @contextlib.asynccontextmanager
    async def _browse(self, spec: QueueSpec) -> AsyncIterator[_Browse]:
        # Messages are taken without ack and handed back (nack with requeue) at the end, on
        # the same channel, so the next operation finds them in place; should anything fail,
        # the channel closes and RabbitMQ hands them back all the same.
        channel = await self._channel_for_browsing()
        try:
            queue = await channel.declare_queue(
                spec.dead_letter, passive=True, timeout=self.timeout
            )
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise NotFound(f"{spec.dead_letter} does not exist yet.") from None
        browse = _Browse(
            channel, queue, int(queue.declaration_result.message_count or 0), self.timeout
        )
        try:
            yield browse
        except BaseException:
            with contextlib.suppress(Exception):
                await channel.close()
            raise
        for message in browse.taken:
            if not message.processed:
                await message.nack(requeue=True)

    async def count(self, queue: str) -> int:
        """How many messages are parked for `queue` (0 if its dead-letter queue is missing)."""
        spec = resolve(queue, self.specs)
        try:
            async with self._browse(spec) as browse:
                return browse.count
        except NotFound:
            return 0

    async def summary(self) -> list[DeadLetterQueueOut]:
        """Every dead-letter queue with its size."""
        return [
            DeadLetterQueueOut(
                queue=spec.name,
                dead_letter_queue=spec.dead_letter,
                count=await self.count(spec.name),
            )
            for spec in self.specs
        ]

    async def list(self, queue: str, *, limit: int = 20) -> DeadLetterPageOut:
        """The size of `queue`'s dead-letter queue and its first `limit` messages."""
        spec = resolve(queue, self.specs)
        messages: list[ParkedMessageOut] = []
        async with self._browse(spec) as browse:
            while len(messages) < limit and (message := await browse.next()) is not None:
                messages.append(describe(message, spec))
        return DeadLetterPageOut(
            queue=spec.name,
            dead_letter_queue=spec.dead_letter,
            count=browse.count,
            messages=messages,
        )

    async def show(self, queue: str, message_id: str) -> ParkedMessageOut:
        """One parked message by id."""
        spec = resolve(queue, self.specs)
        async with self._browse(spec) as browse:
            while (message := await browse.next()) is not None:
                if message.message_id == message_id:
                    return describe(message, spec)
        raise NotFound(f"No parked message {message_id!r} in {spec.dead_letter}.")

    async def replay(self, queue: str, message_id: str | None = None) -> int:
        """Send one parked message (or all) back to its queue; how many went."""
        spec = resolve(queue, self.specs)
        started_ms = int(time.time() * 1000)
        done: set[str | None] = set()
        replayed = 0
        async with self._browse(spec) as browse:
            while (message := await browse.next()) is not None:
                if message_id is not None and message.message_id != message_id:
                    continue
                parked_at = (message.headers or {}).get(PARKED_AT)
                if message.message_id in done or (
                    isinstance(parked_at, int) and parked_at >= started_ms
                ):
                    # Replayed by this very call and parked again: once is enough.
                    continue
                # Confirmed in its queue before the parked copy goes: if this raises, the
                # parked copy stays.
                await browse.channel.default_exchange.publish(
                    replay_copy(message), routing_key=spec.name, timeout=self.timeout
                )
                await message.ack()
                done.add(message.message_id)
                replayed += 1
                if message_id is not None:
                    break
        if message_id is not None and not replayed:
            raise NotFound(f"No parked message {message_id!r} in {spec.dead_letter}.")
        return replayed

    async def purge(self, queue: str, message_id: str | None = None) -> int:
        """Delete one parked message (or all); how many went."""
        spec = resolve(queue, self.specs)
        async with self._browse(spec) as browse:
            if message_id is None:
                result = await browse.queue.purge(timeout=self.timeout)
                return int(getattr(result, "message_count", 0) or 0)
            while (message := await browse.next()) is not None:
                if message.message_id == message_id:
                    await message.ack()
                    return 1
        raise NotFound(f"No parked message {message_id!r} in {spec.dead_letter}.")


async def refresh_gauge(amqp_url: str, specs: Sequence[QueueSpec] = ALL_QUEUES) -> None:
    """Set the parked-messages gauge of `specs` from the broker."""
    async with DeadLetters.open(amqp_url, specs) as dead_letters:
        for item in await dead_letters.summary():
            PARKED.labels(item.queue).set(item.count)


async def open_dead_letters(request: Request) -> AsyncIterator[DeadLetters]:
    """FastAPI dependency: dead-letter operations on the app's broker, for one request."""
    url: str = request.app.state.settings.amqp_url
    try:
        opened = DeadLetters.open(url)
        dead_letters = await opened.__aenter__()
    except (OSError, aiormq.exceptions.AMQPError, TimeoutError) as exc:
        raise Unavailable("The message broker is unavailable.") from exc
    try:
        yield dead_letters
    finally:
        with contextlib.suppress(Exception):
            await opened.__aexit__(None, None, None)


DeadLettersDep = Annotated[DeadLetters, Depends(open_dead_letters)]


def admin_router(*, dependencies: Sequence[DependsParam] = ()) -> APIRouter:
    """The admin API over dead-letter queues; the caller supplies the admin gate.

    It reads the broker URL from `app.state.settings.amqp_url`.
    """
    router = APIRouter(tags=["admin"], dependencies=list(dependencies))

    @router.get("")
    async def list_dead_letter_queues(dead_letters: DeadLettersDep) -> DeadLetterQueuesOut:
        """Every dead-letter queue and how many messages it holds (admins only)."""
        return DeadLetterQueuesOut(items=await dead_letters.summary())

    @router.get("/{queue}")
    async def list_dead_letters(
        queue: str,
        dead_letters: DeadLettersDep,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> DeadLetterPageOut:
        """A queue's parked messages, oldest first (admins only)."""
        return await dead_letters.list(queue, limit=limit)

    @router.get("/{queue}/{message_id}")
    async def show_dead_letter(
        queue: str, message_id: str, dead_letters: DeadLettersDep
    ) -> ParkedMessageOut:
        """One parked message (admins only)."""
        return await dead_letters.show(queue, message_id)

    @router.post("/{queue}/replay")
    async def replay_dead_letters(
        queue: str,
        dead_letters: DeadLettersDep,
        body: Annotated[ReplayIn | None, Body()] = None,
    ) -> ReplayedOut:
        """Send one parked message, or all of them, back to their queue (admins only)."""
        message_id = body.message_id if body is not None else None
        return ReplayedOut(replayed=await dead_letters.replay(queue, message_id))

    @router.delete("/{queue}")
    async def purge_dead_letters(
        queue: str,
        dead_letters: DeadLettersDep,
        message_id: Annotated[str | None, Query(max_length=200)] = None,
    ) -> PurgedOut:
        """Delete one parked message, or all of them (admins only)."""
        return PurgedOut(purged=await dead_letters.purge(queue, message_id))

    return router


def _print_page(page: DeadLetterPageOut) -> None:
    print(f"{page.dead_letter_queue}: {page.count} parked")
    for m in page.messages:
        parked = m.parked_at.isoformat(timespec="seconds") if m.parked_at else "?"
        print(f"- {m.message_id}  {m.event_type or '?'}  parked {parked}  retries {m.retries}")
        print(f"  reason: {m.reason}")
        print(f"  body: {m.body_preview[:200]}")


async def _command(args: argparse.Namespace) -> int:
    async with DeadLetters.open(args.amqp_url) as dead_letters:
        if args.action == "list" and args.queue is None:
            for item in await dead_letters.summary():
                print(f"{item.dead_letter_queue:40} {item.count}")
            return 0
        if args.queue is None:
            raise SystemExit(f"{args.action} needs a QUEUE")
        if args.action == "list":
            _print_page(await dead_letters.list(args.queue, limit=args.limit))
        elif args.action == "show":
            if not args.id:
                raise SystemExit("show needs --id")
            shown = await dead_letters.show(args.queue, args.id)
            print(json.dumps(shown.model_dump(mode="json"), indent=2))
        else:
            if not args.id and not args.all:
                raise SystemExit(f"{args.action} needs --id ID or --all")
            message_id = None if args.all else args.id
            if args.action == "replay":
                print(f"replayed {await dead_letters.replay(args.queue, message_id)}")
            else:
                print(f"purged {await dead_letters.purge(args.queue, message_id)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The `deadletters` command; exit status 1 when something is not found."""
    parser = argparse.ArgumentParser(
        prog="python -m servicekit.deadletters", description="Operate dead-letter queues."
    )
    parser.add_argument("action", choices=("list", "show", "replay", "purge"))
    parser.add_argument("queue", nargs="?", help="a queue (or its .dlq); all for list")
    parser.add_argument("--id", help="one message by its message id")
    parser.add_argument("--all", action="store_true", help="every parked message of the queue")
    parser.add_argument("--limit", type=int, default=20, help="messages to list")
    parser.add_argument(
        "--amqp-url", default=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL), help="broker URL"
    )
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_command(args))
    except NotFound as exc:
        print(exc.message, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
