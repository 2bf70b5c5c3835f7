"""Stream tickets: short-lived, single-use credentials that `EventSource` can put in a URL.

A browser cannot set headers on an `EventSource`, and a long-lived access token in a URL ends up
in logs and histories. So a client trades its bearer token for a ticket (HS256, audience `sse`,
the user id as subject, 60 s) and opens `GET /v1/events?ticket=...`. Each ticket opens one
stream: its `jti` is recorded on use, and a second use is refused, on any replica.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import jwt
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from gateway.repository import StreamTicketRepository
from gateway.settings import GatewaySettings
from servicekit.db import unit_of_work
from servicekit.errors import Unauthorized

AUDIENCE = "sse"
ISSUER = "realstaging-gateway"
ALGORITHM = "HS256"
MAX_TICKET_LENGTH = 2048


class InvalidTicket(Unauthorized):
    """The stream ticket is unknown, expired or already used."""

    def __init__(self) -> None:
        super().__init__(
            "The stream ticket is not valid; request a new one.",
            code="invalid_ticket",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )


@dataclass(frozen=True)
class Ticket:
    """What a verified ticket says."""

    user_id: uuid.UUID
    jti: uuid.UUID
    expires_at: datetime


def mint(settings: GatewaySettings, user_id: uuid.UUID) -> str:
    """A new ticket for `user_id`."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": str(user_id),
        "jti": str(uuid.uuid4()),
        "iat": now,
        "exp": now + settings.stream_ticket_ttl_seconds,
    }
    return jwt.encode(claims, settings.ticket_key, algorithm=ALGORITHM)


def verify(settings: GatewaySettings, token: str) -> Ticket:
    """The ticket's claims, or `InvalidTicket` (this does not consume it)."""
    if not token or len(token) > MAX_TICKET_LENGTH:
        raise InvalidTicket()
    try:
        claims = jwt.decode(
            token,
            settings.ticket_key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=2,
            options={"require": ["exp", "iat", "sub", "jti", "aud", "iss"]},
        )
        return Ticket(
            user_id=uuid.UUID(claims["sub"]),
            jti=uuid.UUID(claims["jti"]),
            expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC),
        )
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise InvalidTicket() from exc


async def redeem(
    settings: GatewaySettings, sessionmaker: async_sessionmaker[AsyncSession], token: str
) -> uuid.UUID:
    """Verify and use up a ticket; the user it was issued to."""
    ticket = verify(settings, token)
    async with unit_of_work(sessionmaker) as session:
        first_use = await StreamTicketRepository(session).use(
            ticket.jti, ticket.user_id, ticket.expires_at
        )
    if not first_use:
        raise InvalidTicket()
    return ticket.user_id
