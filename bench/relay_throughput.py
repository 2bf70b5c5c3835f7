"""Benchmark: the outbox relay's throughput and commit-to-publish latency, before and after.

"before" reproduces the previous relay: one publisher confirm at a time inside the batch, and
no LISTEN (a commit in another process waits for the next poll). "after" is servicekit's relay:
confirms pipelined per batch, and a LISTEN connection woken by the committing transaction's
NOTIFY. Runs on a throwaway database and a private RabbitMQ vhost.

    uv run python bench/relay_throughput.py [--rows 2000] [--samples 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.enums import RoomType, Style
from contracts.events import ImageQueued
from contracts.topology import QueueSpec
from servicekit.db import create_engine, create_sessionmaker, unit_of_work
from servicekit.messaging import create_broker, declare_topology, outbox_publisher
from servicekit.outbox import OutboxMessage, OutboxRelay, add_event
from servicekit.testing import create_database, drop_database, migrate, private_vhost
from tests.support.stackkit import infra_from_env


class SequentialRelay(OutboxRelay):
    """The relay as it was: each row's confirm awaited before the next row is sent."""

    async def _relay_pass(self) -> tuple[int, int]:
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
                    row.attempts += 1
                    row.last_error = str(exc)[:500]
                    break
                row.published_at = datetime.now(UTC)
                sent += 1
        return len(rows), sent


def _event() -> ImageQueued:
    return ImageQueued(
        image_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        project_id=uuid.uuid4(),
        original_key="uploads/bench/photo.jpg",
        room_type=RoomType.BEDROOM,
        style=Style.MODERN,
    )


async def _pending(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(OutboxMessage)
            .where(OutboxMessage.published_at.is_(None))
        )
    return int(count or 0)


@contextlib.asynccontextmanager
async def _relaying(relay: OutboxRelay) -> AsyncIterator[None]:
    task = asyncio.ensure_future(relay.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def throughput(
    relay_class: type[OutboxRelay], db_url: str, broker: Any, spec: QueueSpec, rows: int
) -> float:
    """Rows per second for a backlog of `rows` committed events."""
    engine = create_engine(db_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        for start in range(0, rows, 500):
            async with unit_of_work(sessionmaker) as session:
                for _ in range(min(500, rows - start)):
                    add_event(session, _event(), producer="bench")
        relay = relay_class(sessionmaker, outbox_publisher(broker), poll_seconds=0.5)
        started = time.perf_counter()
        async with _relaying(relay):
            # Polling the table is the measurement's own clock, not a wait for an event.
            while await _pending(engine):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        return rows / (time.perf_counter() - started)
    finally:
        await engine.dispose()


async def latency(
    db_url: str,
    broker: Any,
    arrivals: dict[str, asyncio.Future[float]],
    *,
    listen: bool,
    samples: int,
) -> list[float]:
    """Seconds from a commit in another engine (process) to the message reaching its queue."""
    loop = asyncio.get_running_loop()
    relay_engine, writer_engine = create_engine(db_url), create_engine(db_url)
    relay = OutboxRelay(
        create_sessionmaker(relay_engine),
        outbox_publisher(broker),
        poll_seconds=0.5,
        listen_url=db_url if listen else None,
    )
    writer = create_sessionmaker(writer_engine)
    found: list[float] = []
    try:
        async with _relaying(relay):
            if listen:
                await asyncio.wait_for(relay.listening.wait(), timeout=10)
            for _ in range(samples):
                # Commits land at random moments relative to the relay's poll.
                await asyncio.sleep(random.uniform(0.05, 0.6))
                async with unit_of_work(writer) as session:
                    envelope = add_event(session, _event(), producer="bench")
                    arrival = arrivals[str(envelope.event_id)] = loop.create_future()
                committed = time.perf_counter()
                found.append(await asyncio.wait_for(arrival, timeout=10) - committed)
    finally:
        await relay_engine.dispose()
        await writer_engine.dispose()
    return found


def _ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run(args: argparse.Namespace) -> None:
    """Measure both relays and print the figures."""
    infra = infra_from_env()
    name = f"bench_relay_{uuid.uuid4().hex[:8]}"
    db_url = await create_database(infra.pg_base_url, name)
    try:
        await asyncio.to_thread(migrate, "projects", db_url)
        with private_vhost(infra.amqp_url) as amqp_url:
            spec = QueueSpec("bench.relay", ("image.queued",))
            broker = create_broker(amqp_url)
            await broker.connect()
            await declare_topology(broker, (spec,))
            arrivals: dict[str, asyncio.Future[float]] = {}
            connection = await aio_pika.connect(amqp_url)
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1000)
            queue = await channel.get_queue(spec.name)

            async def arrived(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                waiter = arrivals.pop(str(message.message_id), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(time.perf_counter())
                await message.ack()

            await queue.consume(arrived)
            try:
                rates: dict[str, list[float]] = {"before": [], "after": []}
                for _ in range(args.repeats):
                    for label, cls in (("before", SequentialRelay), ("after", OutboxRelay)):
                        rate = await throughput(cls, db_url, broker, spec, args.rows)
                        rates[label].append(rate)
                before = statistics.median(rates["before"])
                after = statistics.median(rates["after"])
                print(f"throughput, {args.rows} pending rows (median of {args.repeats}):")
                print(f"  before (one confirm at a time): {before:8.0f} rows/s")
                print(
                    f"  after  (confirms pipelined):    {after:8.0f} rows/s  x{after / before:.1f}"
                )
                print(
                    f"commit in another process -> message in its queue ({args.samples} samples):"
                )
                for label, listen in (
                    ("before (poll 0.5 s)", False),
                    ("after  (LISTEN/NOTIFY)", True),
                ):
                    values = await latency(
                        db_url, broker, arrivals, listen=listen, samples=args.samples
                    )
                    p50, p95, top = _ms(values, 0.5), _ms(values, 0.95), _ms(values, 1.0)
                    print(f"  {label}: p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  max {top:6.1f} ms")
            finally:
                await connection.close()
                await broker.stop()
    finally:
        await drop_database(infra.pg_base_url, name)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark once and print its figures."""
    parser = argparse.ArgumentParser(description="Outbox relay throughput and latency.")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    asyncio.run(run(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
