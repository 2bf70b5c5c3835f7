"""Request and response bodies of the gateway's own endpoints."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.enums import Role


class UserOut(BaseModel):
    """A user as admins see it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    auth0_sub: str
    email: str | None
    role: Role
    full_name: str | None = None
    company_name: str | None = None
    stripe_customer_id: str | None = None
    created_at: datetime
    updated_at: datetime


class UserPageOut(BaseModel):
    """A page of users; pass `next_cursor` back as `cursor` for the next one."""

    items: list[UserOut]
    next_cursor: str | None


class RoleUpdate(BaseModel):
    """The role to give a user."""

    model_config = ConfigDict(extra="forbid")

    role: Role


class RoleChangeOut(BaseModel):
    """One change of a user's role.

    `source` is `sign-in` (the Auth0 roles claim or `GATEWAY_ADMIN_SUBS`, applied on a request;
    `actor` is the token's subject), `admin-api` (`actor` is the admin's user id) or `cli`
    (`actor` is the operator's login). `old_role` is null when the user was created with the role.
    """

    model_config = ConfigDict(from_attributes=True)

    id: int
    old_role: Role | None
    new_role: Role
    source: Literal["sign-in", "admin-api", "cli"]
    actor: str | None
    created_at: datetime


class MeOut(BaseModel):
    """Who the caller is, their plan and this period's usage (null when unknown right now)."""

    id: uuid.UUID
    email: str | None
    role: Role
    created_at: datetime
    plan: Any | None = None
    usage: dict[str, Any] | None = None


class CatalogEntry(BaseModel):
    """One choice with its label for people."""

    value: str
    label: str


class CatalogOut(BaseModel):
    """The room types and styles a photo can be staged with."""

    room_types: list[CatalogEntry]
    styles: list[CatalogEntry]


class DevTokenRequest(BaseModel):
    """Who to sign in as (development only)."""

    model_config = ConfigDict(extra="forbid")

    sub: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9|@._:+-]+$")
    email: str | None = Field(default=None, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")


class TokenOut(BaseModel):
    """An access token for the `Authorization: Bearer` header."""

    access_token: str
    token_type: str = "bearer"
    expires_in: int


class TicketOut(BaseModel):
    """A single-use ticket for `GET /v1/events?ticket=...`."""

    ticket: str
    expires_in: int


class AuthConfigOut(BaseModel):
    """How the web app signs people in."""

    mode: Literal["auth0", "development"]
    domain: str | None = None
    client_id: str | None = None
    audience: str | None = None
