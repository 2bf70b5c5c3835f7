"""Periodic maintenance (reconcilers, sweepers, retention) that is safe with several replicas.

Each pass runs in its own transaction under a PostgreSQL transaction-level advisory lock named
after the task, so when several replicas run the same task only one does a given pass; the
others skip it. A failing pass is logged and retried at the next tick: maintenance never stops a
service, and it keeps trying through an outage of its database.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from servicekit.db import unit_of_work

logger = logging.getLogger(__name__)

Pass = Callable[[AsyncSession], Awaitable[object]]


def lock_id(name: str) -> int:
    """A stable 63-bit advisory lock id for a task name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


async def run_once(
    sessionmaker: async_sessionmaker[AsyncSession], name: str, work: Pass
) -> object | None:
    """Run one pass of `work` if no other replica is running it; None when skipped."""
    async with unit_of_work(sessionmaker) as session:
        got = (
            await session.execute(
                text("SELECT pg_try_advisory_xact_lock(:id)"), {"id": lock_id(name)}
            )
        ).scalar_one()
        if not got:
            return None
        return await work(session)


async def every(
    sessionmaker: async_sessionmaker[AsyncSession],
    name: str,
    interval_seconds: float,
    work: Pass,
    *,
    after_pass: Callable[[], None] | None = None,
) -> None:
    """Run `work` about every `interval_seconds` until cancelled, with jitter so replicas spread."""
    while True:
        await asyncio.sleep(interval_seconds * random.uniform(0.8, 1.2))
        try:
            await run_once(sessionmaker, name, work)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("%s pass failed (will retry): %s", name, exc)
            continue
        if after_pass is not None:
            after_pass()
