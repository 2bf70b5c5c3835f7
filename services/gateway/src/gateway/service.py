"""The gateway's rules: provisioning users on first sight, roles, Stripe customer links."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.enums import Role
from contracts.events import UserCreated
from gateway.models import User
from gateway.repository import UserRepository
from servicekit.errors import Conflict, NotFound, ServiceError, Unavailable
from servicekit.outbox import add_event

PRODUCER = "gateway"


@dataclass(frozen=True)
class Provisioned:
    """The caller's user row, and whether this request created it."""

    user: User
    created: bool


async def provision(
    session: AsyncSession,
    sub: str,
    *,
    email: str | None,
    role: Role,
    request_id: str | None,
) -> Provisioned:
    """Find the user for `sub`, creating it (and announcing `user.created`) on first sight."""
    repo = UserRepository(session)
    # Known users cost one indexed lookup; only strangers reach the insert.
    user = await repo.get_by_sub(sub)
    if user is not None:
        return Provisioned(user, created=False)
    user = await repo.insert_if_absent(sub, email=email, role=role.value)
    if user is None:
        # A concurrent first request won the insert; its row is committed now (the insert
        # waited on the unique index), so this read sees it.
        user = await repo.get_by_sub(sub)
        if user is None:
            raise Unavailable("Could not set up your account just now; please try again.")
        return Provisioned(user, created=False)
    add_event(
        session,
        UserCreated(user_id=user.id, email=user.email),
        producer=PRODUCER,
        correlation_id=request_id,
    )
    return Provisioned(user, created=True)


async def set_role(
    session: AsyncSession, user_id: uuid.UUID, role: Role, *, acting_user_id: uuid.UUID
) -> User:
    """Give a user a role; an admin cannot demote themselves (so someone stays admin)."""
    if user_id == acting_user_id and role is not Role.ADMIN:
        raise Conflict("You cannot remove your own admin role; ask another admin.")
    user = await UserRepository(session).set_role(user_id, role.value)
    if user is None:
        raise NotFound("No such user.")
    return user


async def set_role_by_sub(
    session: AsyncSession, sub: str, role: Role, *, email: str | None = None
) -> Provisioned:
    """Give the user with `sub` a role, provisioning them first if they never signed in."""
    provisioned = await provision(session, sub, email=email, role=role, request_id=None)
    if provisioned.user.role != role.value:
        updated = await UserRepository(session).set_role(provisioned.user.id, role.value)
        assert updated is not None
        return Provisioned(updated, created=provisioned.created)
    return provisioned


async def link_customer(session: AsyncSession, user_id: uuid.UUID, customer_id: str) -> bool:
    """Remember the user's Stripe customer; False when the user is unknown."""
    return await UserRepository(session).set_stripe_customer(user_id, customer_id)


@dataclass(frozen=True)
class UserPage:
    """One page of users and the cursor of the next one."""

    items: Sequence[User]
    next_cursor: str | None


def encode_cursor(user: User) -> str:
    """An opaque cursor pointing just after `user` in the admin listing."""
    raw = f"{user.created_at.isoformat()}|{user.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The `(created_at, id)` position in a cursor, or 422-style `ServiceError`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, user_id = base64.urlsafe_b64decode(padded).decode().split("|", 1)
        return datetime.fromisoformat(created), uuid.UUID(user_id)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise ServiceError("The cursor is not valid.", code="invalid_cursor") from exc


async def list_users(session: AsyncSession, *, cursor: str | None, limit: int) -> UserPage:
    """A page of users, newest first."""
    after = decode_cursor(cursor) if cursor else None
    rows = await UserRepository(session).page(limit=limit + 1, after=after)
    items = rows[:limit]
    next_cursor = encode_cursor(items[-1]) if len(rows) > limit else None
    return UserPage(items=items, next_cursor=next_cursor)
