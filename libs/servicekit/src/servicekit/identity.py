"""Signing and verifying the internal identity the gateway attaches to forwarded requests."""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request

from contracts.enums import Role
from contracts.identity import ALGORITHM, HEADER, ISSUER, LIFETIME_SECONDS, Identity
from servicekit.errors import Forbidden, Unauthorized


def sign_identity(identity: Identity, *, secret: str, audience: str) -> str:
    """Mint a short-lived token that `audience` will accept as this identity."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": audience,
        "sub": str(identity.user_id),
        "role": identity.role.value,
        "rid": identity.request_id,
        "iat": now,
        "exp": now + LIFETIME_SECONDS,
    }
    if identity.email:
        claims["email"] = identity.email
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def verify_identity(token: str, *, secret: str, audience: str) -> Identity:
    """Return the identity in `token`, or raise `Unauthorized`."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            audience=audience,
            issuer=ISSUER,
            leeway=5,
            options={"require": ["exp", "iat", "sub", "aud", "iss"]},
        )
        return Identity(
            user_id=uuid.UUID(claims["sub"]),
            role=Role(claims.get("role", "user")),
            request_id=str(claims.get("rid", "")),
            email=claims.get("email"),
        )
    except (jwt.PyJWTError, ValueError, KeyError) as exc:
        raise Unauthorized("Requests must come through the gateway.") from exc


def current_identity(request: Request) -> Identity:
    """FastAPI dependency: the verified caller, or 401."""
    token = request.headers.get(HEADER)
    if not token:
        raise Unauthorized("Requests must come through the gateway.")
    state = request.app.state
    return verify_identity(token, secret=state.internal_secret, audience=state.service_name)


def admin_identity(identity: Annotated[Identity, Depends(current_identity)]) -> Identity:
    """FastAPI dependency: the verified caller, who must be an admin (403 otherwise)."""
    if not identity.is_admin:
        raise Forbidden("This needs the admin role.")
    return identity


CurrentIdentity = Annotated[Identity, Depends(current_identity)]
AdminIdentity = Annotated[Identity, Depends(admin_identity)]
