"""A per-user limit on writes, counted in PostgreSQL so every replica shares it.

A fixed window: each write under `/v1` adds one to the user's counter for the current window
(`INSERT ... ON CONFLICT DO UPDATE ... RETURNING count`), and a count over the limit is a 429
that says when the window ends. The whole limit may be spent at once (a burst), then the user
waits for the next window. Reads are never counted.
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import UTC, datetime

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.repository import RateLimitRepository
from gateway.settings import GatewaySettings
from servicekit.db import unit_of_work
from servicekit.errors import ServiceError

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class RateLimited(ServiceError):
    """The caller made too many writes in this window."""

    status = 429
    code = "rate_limited"

    def __init__(self, limit: int, window: int, retry_after: int) -> None:
        super().__init__(
            f"Too many changes: at most {limit} every {window} s. Try again in {retry_after} s.",
            details={"limit": limit, "window_seconds": window, "retry_after": retry_after},
            headers={"Retry-After": str(retry_after)},
        )


def is_limited(settings: GatewaySettings, request: Request) -> bool:
    """Whether this request counts against the caller's write limit."""
    if not settings.rate_limit_enabled or request.method not in WRITE_METHODS:
        return False
    path = request.url.path
    if not path.startswith("/v1/"):
        return False
    return not any(
        path == exempt or path.startswith(exempt.rstrip("/") + "/")
        for exempt in settings.rate_limit_exempt_paths
    )


async def enforce(
    settings: GatewaySettings,
    sessionmaker: async_sessionmaker[AsyncSession],
    user_id: uuid.UUID,
    request: Request,
    *,
    clock: float | None = None,
) -> None:
    """Count the request if it is a write; `RateLimited` when the user is over the limit."""
    if not is_limited(settings, request):
        return
    now = time.time() if clock is None else clock
    window = settings.rate_limit_window_seconds
    start = math.floor(now / window) * window
    # Its own short transaction: the count must hold even if the request later fails.
    async with unit_of_work(sessionmaker) as session:
        count = await RateLimitRepository(session).hit(user_id, datetime.fromtimestamp(start, UTC))
    if count > settings.rate_limit_writes:
        retry_after = max(1, math.ceil(start + window - now))
        raise RateLimited(settings.rate_limit_writes, window, retry_after)
