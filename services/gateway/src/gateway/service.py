"""The gateway's rules: provisioning users, roles that follow the source, Stripe customer links."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from contracts.enums import Role
from contracts.events import UserCreated
from gateway.models import RoleChange, User
from gateway.repository import RoleChangeRepository, UserRepository
from servicekit import pagination
from servicekit.errors import Conflict, NotFound, Unavailable
from servicekit.outbox import add_event

PRODUCER = "gateway"


SIGN_IN = "sign-in"
"""A role applied from the token's roles claim or `GATEWAY_ADMIN_SUBS` on a request."""
ADMIN_API = "admin-api"
"""A role set by an admin through `PATCH /v1/admin/users/{id}`."""
CLI = "cli"
"""A role set by an operator with `python -m gateway.cli set-role`."""


@dataclass(frozen=True)
class Provisioned:
    """The caller's user row, and whether this request created it."""

    user: User
    created: bool


def source_role(sub: str, roles: Iterable[str], admin_subs: Iterable[str]) -> Role:
    """The role the identity source gives: admin by the roles claim or the admin list."""
    return Role.ADMIN if Role.ADMIN.value in roles or sub in admin_subs else Role.USER


async def provision(
    session: AsyncSession,
    sub: str,
    *,
    email: str | None,
    role: Role,
    request_id: str | None,
    source: str = SIGN_IN,
    actor: str | None = None,
) -> Provisioned:
    """Find the user for `sub` with `role` applied, creating them (and `user.created`) if new.

    A known user whose stored role already matches costs one indexed lookup; only a
    difference (a promotion or a demotion at the source) writes, and it is audited.
    """
    repo = UserRepository(session)
    actor = actor if actor is not None else sub
    user = await repo.get_by_sub(sub)
    if user is not None:
        if user.role != role.value:
            user = await _change_role(session, user, role, source=source, actor=actor)
        return Provisioned(user, created=False)
    user = await repo.insert_if_absent(sub, email=email, role=role.value)
    if user is None:
        # A concurrent first request won the insert; its row is committed now (the insert
        # waited on the unique index), so this read sees it.
        user = await repo.get_by_sub(sub)
        if user is None:
            raise Unavailable("Could not set up your account just now; please try again.")
        if user.role != role.value:
            user = await _change_role(session, user, role, source=source, actor=actor)
        return Provisioned(user, created=False)
    if role is not Role.USER:
        # A new admin is a role change from nothing: the audit shows how they became one.
        RoleChangeRepository(session).add(
            user.id, old=None, new=role.value, source=source, actor=actor
        )
    add_event(
        session,
        UserCreated(user_id=user.id, email=user.email),
        producer=PRODUCER,
        correlation_id=request_id,
    )
    return Provisioned(user, created=True)


async def _change_role(
    session: AsyncSession, user: User, role: Role, *, source: str, actor: str | None
) -> User:
    """Move `user` to `role` and audit it; a concurrent winner's change is audited once."""
    repo = UserRepository(session)
    old = user.role
    updated = await repo.change_role(user.id, old=old, new=role.value)
    if updated is None:
        # Another request changed the role first; it audited its change.
        fresh = await repo.refresh(user.id)
        if fresh is None:
            raise NotFound("No such user.")
        return fresh
    RoleChangeRepository(session).add(user.id, old=old, new=role.value, source=source, actor=actor)
    return updated


async def set_role(
    session: AsyncSession, user_id: uuid.UUID, role: Role, *, acting_user_id: uuid.UUID
) -> User:
    """Give a user a role; an admin cannot demote themselves (so someone stays admin)."""
    if user_id == acting_user_id and role is not Role.ADMIN:
        raise Conflict("You cannot remove your own admin role; ask another admin.")
    user = await UserRepository(session).get(user_id)
    if user is None:
        raise NotFound("No such user.")
    if user.role == role.value:
        return user
    return await _change_role(session, user, role, source=ADMIN_API, actor=str(acting_user_id))


async def set_role_by_sub(
    session: AsyncSession, sub: str, role: Role, *, email: str | None = None, actor: str | None
) -> Provisioned:
    """Give the user with `sub` a role, provisioning them first if they never signed in."""
    return await provision(
        session, sub, email=email, role=role, request_id=None, source=CLI, actor=actor
    )


async def role_changes(
    session: AsyncSession, user_id: uuid.UUID, *, limit: int
) -> Sequence[RoleChange]:
    """A user's role changes, newest first; 404 when the user does not exist."""
    if await UserRepository(session).get(user_id) is None:
        raise NotFound("No such user.")
    return await RoleChangeRepository(session).for_user(user_id, limit=limit)


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
    return pagination.encode_cursor(user.created_at, user.id)


async def list_users(session: AsyncSession, *, cursor: str | None, limit: int) -> UserPage:
    """A page of users, newest first."""
    # servicekit's validation: a forged cursor is a 400, never a 500 from the database.
    after = pagination.decode_cursor(cursor) if cursor else None
    rows = await UserRepository(session).page(limit=limit + 1, after=after)
    items = rows[:limit]
    next_cursor = encode_cursor(items[-1]) if len(rows) > limit else None
    return UserPage(items=items, next_cursor=next_cursor)
