"""The gateway's HTTP surface: its own endpoints and the forwarded `/v1/...` prefixes."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from contracts.enums import Role, RoomType, Style
from gateway import service, tickets
from gateway.deps import (
    AdminUser,
    ClientsDep,
    CurrentUser,
    DevIssuerDep,
    StreamCaller,
    identity_of,
)
from gateway.live import EventStream, EventStreamResponse
from gateway.proxy import PROJECTS, PUBLIC_ROUTES, ROUTES, is_admin_prefix
from gateway.schemas import (
    AuthConfigOut,
    CatalogEntry,
    CatalogOut,
    DevTokenRequest,
    MeOut,
    RoleChangeOut,
    RoleUpdate,
    TicketOut,
    TokenOut,
    UserOut,
    UserPageOut,
)
from servicekit.runtime import RuntimeDep, SessionDep

ROOM_LABELS: dict[RoomType, str] = {
    RoomType.LIVING_ROOM: "Living room",
    RoomType.BEDROOM: "Bedroom",
    RoomType.KITCHEN: "Kitchen",
    RoomType.BATHROOM: "Bathroom",
    RoomType.DINING_ROOM: "Dining room",
    RoomType.OFFICE: "Office",
    RoomType.ENTRYWAY: "Entryway",
    RoomType.OUTDOOR: "Outdoor",
}
STYLE_LABELS: dict[Style, str] = {
    Style.MODERN: "Modern",
    Style.CONTEMPORARY: "Contemporary",
    Style.TRADITIONAL: "Traditional",
    Style.INDUSTRIAL: "Industrial",
    Style.SCANDINAVIAN: "Scandinavian",
    Style.RUSTIC: "Rustic",
    Style.COASTAL: "Coastal",
    Style.BOHEMIAN: "Bohemian",
    Style.MINIMALIST: "Minimalist",
    Style.MID_CENTURY_MODERN: "Mid-century modern",
}
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
MAX_EVENT_ID = 2**63 - 1
LAST_EVENT_ID = re.compile(r"[0-9]{1,18}")

router = APIRouter(prefix="/v1")


@router.get("/auth/config", tags=["auth"])
async def auth_config(clients: ClientsDep) -> AuthConfigOut:
    """How the web app signs people in: Auth0 (authorization code with PKCE) or development."""
    settings = clients.settings
    if settings.dev_mode:
        return AuthConfigOut(mode="development")
    return AuthConfigOut(
        mode="auth0",
        domain=settings.auth0_domain,
        client_id=settings.auth0_spa_client_id,
        audience=settings.auth0_audience,
    )


@router.get("/catalog", tags=["catalog"])
async def catalog() -> CatalogOut:
    """Room types and styles with their labels (public)."""
    return CatalogOut(
        room_types=[
            CatalogEntry(value=r.value, label=ROOM_LABELS.get(r, _label(r))) for r in RoomType
        ],
        styles=[CatalogEntry(value=s.value, label=STYLE_LABELS.get(s, _label(s))) for s in Style],
    )


def _label(value: str) -> str:
    return value.replace("_", " ").capitalize()


@router.get("/me", tags=["me"])
async def me(user: CurrentUser, clients: ClientsDep) -> MeOut:
    """The caller, their plan and this period's usage (null while projects is unavailable)."""
    usage = await clients.forwarder.get_json(PROJECTS, "/v1/usage", identity_of(user))
    if not isinstance(usage, dict):
        usage = None
    return MeOut(
        id=user.id,
        email=user.email,
        role=Role(user.role),
        created_at=user.created_at,
        plan=usage.get("plan") if usage else None,
        usage=usage,
    )


@router.post("/events/ticket", tags=["events"])
async def stream_ticket(user: CurrentUser, clients: ClientsDep) -> TicketOut:
    """A short-lived, single-use ticket that opens one live update stream."""
    settings = clients.settings
    return TicketOut(
        ticket=tickets.mint(settings, user.id), expires_in=settings.stream_ticket_ttl_seconds
    )


STREAM_DESCRIPTION = """Server-sent events with the caller's image status changes.

Authenticate with `?ticket=` (from `POST /v1/events/ticket`; each ticket opens one stream) or
an `Authorization: Bearer` header. A new stream starts with a `snapshot` event: `images`, the
caller's images still in progress, and `recent`, those finished lately (both as projects knows
them; `source` is `log` when projects could not answer), and `last_event_id`; then every
change arrives as an `image.status` event whose `id:` is its position. To resume without
loss, reconnect with that id in the `Last-Event-ID` header (or `?last_event_id=`, for a new
`EventSource`). A `: ping` comment keeps idle connections open."""


@router.get(
    "/events",
    tags=["events"],
    response_class=EventStreamResponse,
    status_code=200,
    description=STREAM_DESCRIPTION,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The event stream."}},
)
async def events(
    user_id: StreamCaller,
    clients: ClientsDep,
    runtime: RuntimeDep,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=32, include_in_schema=False)
    ] = None,
    last_event_id: Annotated[int | None, Query(ge=0, le=MAX_EVENT_ID)] = None,
) -> EventStreamResponse:
    """Stream the caller's image status changes."""
    resume = last_event_id
    header = (last_event_id_header or "").strip()
    # ASCII digits only (`str.isdigit` accepts '²' and '٣', which `int` refuses or reads
    # as digits nobody sent) and within bigint; anything else is a fresh start.
    if LAST_EVENT_ID.fullmatch(header):
        resume = int(header)
    settings = clients.settings
    stream = EventStream(
        clients.live, runtime.sessionmaker, settings, user_id, resume, clients.projects_view
    )
    try:
        # Fix the starting point before the client sees a 200: whatever happens after the
        # response starts is then streamed, never folded unseen into the snapshot.
        await stream.prepare()
    except BaseException:
        stream.close()
        raise
    return EventStreamResponse(
        stream.events(),
        send_timeout=settings.sse_send_timeout_seconds,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        on_close=stream.close,
    )


@router.get("/admin/users", tags=["admin"])
async def list_users(
    _: AdminUser,
    session: SessionDep,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> UserPageOut:
    """Users, newest first, a page at a time (admins only)."""
    page = await service.list_users(session, cursor=cursor, limit=limit)
    return UserPageOut(
        items=[UserOut.model_validate(u) for u in page.items], next_cursor=page.next_cursor
    )


@router.patch("/admin/users/{user_id}", tags=["admin"])
async def update_user(
    user_id: uuid.UUID, body: RoleUpdate, admin: AdminUser, session: SessionDep
) -> UserOut:
    """Give a user the admin or the user role (admins only).

    The change is audited and takes effect at once, but the person's next request applies
    the source again (the Auth0 roles claim or `GATEWAY_ADMIN_SUBS`): grant lasting roles there.
    """
    user = await service.set_role(session, user_id, body.role, acting_user_id=admin.id)
    return UserOut.model_validate(user)


@router.get("/admin/users/{user_id}/role-changes", tags=["admin"])
async def role_changes(
    user_id: uuid.UUID,
    _: AdminUser,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[RoleChangeOut]:
    """A user's role changes, newest first: from what, to what, when and by whom (admins only)."""
    changes = await service.role_changes(session, user_id, limit=limit)
    return [RoleChangeOut.model_validate(c) for c in changes]


dev_router = APIRouter(tags=["development"])


@dev_router.get("/.well-known/jwks.json", include_in_schema=False)
async def jwks(issuer: DevIssuerDep) -> dict[str, Any]:
    """The development issuer's public keys."""
    return issuer.jwks()


@dev_router.post("/v1/dev/token")
async def dev_token(body: DevTokenRequest, issuer: DevIssuerDep, clients: ClientsDep) -> TokenOut:
    """Sign in as anyone (development only; 404 elsewhere)."""
    ttl = clients.settings.dev_token_ttl_seconds
    token = issuer.mint(body.sub, email=body.email, ttl_seconds=ttl)
    return TokenOut(access_token=token, expires_in=ttl)


Handler = Callable[..., Awaitable[Response]]


def _public(target: str) -> Handler:
    async def forward_public(request: Request, clients: ClientsDep) -> Response:
        return await clients.forwarder.forward(request, target, None)

    return forward_public


def _authenticated(target: str) -> Handler:
    async def forward(request: Request, user: CurrentUser, clients: ClientsDep) -> Response:
        return await clients.forwarder.forward(request, target, identity_of(user))

    return forward


def _admin(target: str) -> Handler:
    async def forward_admin(request: Request, user: AdminUser, clients: ClientsDep) -> Response:
        return await clients.forwarder.forward(request, target, identity_of(user))

    return forward_admin


def proxy_router() -> APIRouter:
    """Routes that relay to the internal services, public ones first."""
    proxy = APIRouter(include_in_schema=False)
    for path, methods, target in PUBLIC_ROUTES:
        proxy.add_api_route(path, _public(target), methods=list(methods))
    for prefix, target in ROUTES:
        handler = _admin(target) if is_admin_prefix(prefix) else _authenticated(target)
        for path in (prefix, prefix + "/{rest:path}"):
            proxy.add_api_route(path, handler, methods=METHODS)
    return proxy
