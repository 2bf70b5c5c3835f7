"""FastAPI dependencies of the gateway: its clients, the verified caller, the admin gate."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from contracts.enums import Role
from contracts.identity import Identity
from gateway import ratelimit, service, tickets
from gateway.auth import (
    JwksKeyResolver,
    LocalKeyResolver,
    MissingToken,
    Principal,
    TokenVerifier,
)
from gateway.devissuer import DevIssuer
from gateway.live import LiveHub, ProjectsView
from gateway.models import User
from gateway.proxy import Forwarder
from gateway.settings import GatewaySettings
from servicekit.db import unit_of_work
from servicekit.errors import Forbidden, NotFound, Unauthorized
from servicekit.logs import request_id_var
from servicekit.runtime import RuntimeDep


class GatewayClients:
    """What the gateway holds besides the runtime: verifier, dev issuer, forwarder, live hub."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.forwarder = Forwarder(settings)
        self.live = LiveHub(
            queue_size=settings.sse_queue_size, max_per_user=settings.sse_max_streams_per_user
        )
        self.projects_view = ProjectsView(self.forwarder, settings)
        self.dev_issuer: DevIssuer | None = None
        self._verifier: TokenVerifier | None = None

    async def start(self, _: object = None) -> None:
        """Load keys and open the upstream pool (a lifespan startup hook)."""
        s = self.settings
        if s.dev_mode:
            # Generating an RSA key and touching the disk block: keep them off the loop.
            self.dev_issuer = await asyncio.to_thread(
                DevIssuer.from_path, s.dev_key_path, issuer=s.token_issuer, audience=s.dev_audience
            )
            resolver: LocalKeyResolver | JwksKeyResolver = LocalKeyResolver(
                {self.dev_issuer.kid: self.dev_issuer.public_key}
            )
        else:
            resolver = JwksKeyResolver(
                s.jwks_url,
                cache_seconds=s.jwks_cache_seconds,
                timeout_seconds=s.jwks_timeout_seconds,
                cooldown_seconds=s.jwks_refresh_cooldown_seconds,
            )
        self._verifier = TokenVerifier(
            resolver, issuer=s.token_issuer, audience=s.token_audience, leeway=s.jwt_leeway_seconds
        )
        await self.forwarder.start()

    async def stop(self, _: object = None) -> None:
        """Close the upstream pool (a lifespan shutdown hook)."""
        await self.forwarder.close()

    @property
    def verifier(self) -> TokenVerifier:
        """The token verifier (only while the service runs)."""
        if self._verifier is None:
            raise RuntimeError("the gateway is not started")
        return self._verifier


def get_clients(request: Request) -> GatewayClients:
    """The gateway's clients."""
    clients: GatewayClients = request.app.state.gateway
    return clients


ClientsDep = Annotated[GatewayClients, Depends(get_clients)]

bearer = HTTPBearer(auto_error=False, description="An Auth0 access token (RS256).")


async def current_principal(
    clients: ClientsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The verified bearer of the request's access token, or 401."""
    if credentials is None or not credentials.credentials:
        raise MissingToken()
    return await clients.verifier.verify(credentials.credentials)


PrincipalDep = Annotated[Principal, Depends(current_principal)]


async def current_user(
    principal: PrincipalDep, clients: ClientsDep, runtime: RuntimeDep, request: Request
) -> User:
    """The caller's user row, provisioned on first sight; writes count against their limit."""
    settings = clients.settings
    # Roles follow the source on every request: a promotion or a demotion in Auth0 or in
    # `GATEWAY_ADMIN_SUBS` applies at once (written, and audited, only when it differs).
    role = service.source_role(principal.sub, principal.roles, settings.admin_subs)
    # Its own short transaction rather than the request's session: a stranger's row and its
    # `user.created` event commit before the request goes on (maybe to a slow upstream), and
    # concurrent first requests wait on the unique index only for this instant.
    async with unit_of_work(runtime.sessionmaker) as session:
        provisioned = await service.provision(
            session,
            principal.sub,
            email=principal.email,
            role=role,
            request_id=request_id_var.get(),
        )
    if provisioned.created:
        runtime.relay.wake()
    await ratelimit.enforce(settings, runtime.sessionmaker, provisioned.user.id, request)
    return provisioned.user


CurrentUser = Annotated[User, Depends(current_user)]


async def admin_user(user: CurrentUser) -> User:
    """The caller, who must hold the admin role (403 otherwise)."""
    if user.role != Role.ADMIN.value:
        raise Forbidden("This needs the admin role.")
    return user


AdminUser = Annotated[User, Depends(admin_user)]


def identity_of(user: User) -> Identity:
    """The internal identity that forwarded requests carry for `user`."""
    return Identity(
        user_id=user.id,
        role=Role(user.role),
        request_id=request_id_var.get() or "",
        email=user.email,
    )


def dev_issuer(clients: ClientsDep) -> DevIssuer:
    """The development issuer; 404 when the gateway trusts Auth0 instead."""
    if clients.dev_issuer is None:
        raise NotFound("Not found.")
    return clients.dev_issuer


DevIssuerDep = Annotated[DevIssuer, Depends(dev_issuer)]


async def stream_caller(
    request: Request,
    clients: ClientsDep,
    runtime: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ticket: Annotated[
        str | None,
        Query(max_length=tickets.MAX_TICKET_LENGTH, description="A ticket from /v1/events/ticket."),
    ] = None,
) -> uuid.UUID:
    """Who opens a live stream: a stream ticket in the URL, or a bearer token in the header."""
    if "access_token" in request.query_params:
        # URLs end up in logs and browser history; a long-lived token must never be in one.
        raise Unauthorized(
            "Access tokens are not accepted in the URL; use a stream ticket.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_request"'},
        )
    if ticket is not None:
        return await tickets.redeem(clients.settings, runtime.sessionmaker, ticket)
    principal = await current_principal(clients, credentials)
    user = await current_user(principal, clients, runtime, request)
    return user.id


StreamCaller = Annotated[uuid.UUID, Depends(stream_caller)]
