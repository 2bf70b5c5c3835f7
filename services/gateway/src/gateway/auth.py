"""Access-token verification: RS256 only, keys from Auth0's JWKS or the development issuer.

Both modes share `TokenVerifier`; only the `KeyResolver` differs. Every failure is an
`InvalidToken` (401) that never echoes the token; a JWKS endpoint that cannot be reached while
a key must be fetched is `KeysUnavailable` (503), because the caller's token may be fine.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt
from jwt import PyJWK, PyJWKClient

from servicekit.errors import Unauthorized, Unavailable

logger = logging.getLogger(__name__)

ALGORITHM = "RS256"
MAX_TOKEN_LENGTH = 16 * 1024
NAMESPACE = "https://realstaging/"
EMAIL_CLAIMS = ("email", f"{NAMESPACE}email")
ROLES_CLAIM = f"{NAMESPACE}roles"


class InvalidToken(Unauthorized):
    """The bearer token cannot be trusted."""

    def __init__(self, reason: str = "The access token is not valid.") -> None:
        super().__init__(reason, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class MissingToken(Unauthorized):
    """The request carries no bearer token."""

    def __init__(self) -> None:
        super().__init__("Sign in to continue.", headers={"WWW-Authenticate": "Bearer"})


class KeysUnavailable(Unavailable):
    """The signing keys cannot be fetched right now."""

    def __init__(self) -> None:
        super().__init__(
            "Sign-in is temporarily unavailable; please try again shortly.",
            headers={"Retry-After": "5"},
        )


class UnknownKey(Exception):
    """No signing key has this `kid`."""


@dataclass(frozen=True)
class Principal:
    """What a verified access token says about its bearer."""

    sub: str
    email: str | None = None
    roles: frozenset[str] = field(default_factory=frozenset)


class KeyResolver(Protocol):
    """Finds the public key for a token's `kid`."""

    async def get_key(self, kid: str) -> Any:
        """The RSA public key for `kid`; raise `UnknownKey` or `KeysUnavailable`."""
        ...


class LocalKeyResolver:
    """A fixed key set held in memory (the development issuer's own key)."""

    def __init__(self, keys: dict[str, Any]) -> None:
        self._keys = dict(keys)

    async def get_key(self, kid: str) -> Any:
        """The key for `kid` from the fixed set."""
        try:
            return self._keys[kid]
        except KeyError:
            raise UnknownKey(kid) from None


class JwksKeyResolver:
    """Keys from a JWKS URL through one `PyJWKClient`, which blocks, so it runs in a thread.

    Known keys are served from memory. The set is re-fetched when it is older than
    `cache_seconds`, or when a token names an unknown `kid` (key rotation), but never more
    than once per `cooldown_seconds`, so a flood of made-up kids cannot hammer the tenant. A
    failed re-fetch keeps serving the keys already known.
    """

    def __init__(
        self,
        url: str,
        *,
        cache_seconds: float = 600,
        timeout_seconds: float = 5,
        cooldown_seconds: float = 10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # The client's own caches are off: this class caches, so that a key removed from the
        # JWKS stops being trusted after `cache_seconds` (PyJWKClient's key LRU never expires).
        self._client = PyJWKClient(
            url, cache_keys=False, cache_jwk_set=False, timeout=timeout_seconds
        )
        self._clock = clock
        self._cache_seconds = cache_seconds
        self._cooldown_seconds = cooldown_seconds
        self._keys: dict[str, PyJWK] | None = None
        self._fetched_at = float("-inf")
        self._attempted_at = float("-inf")
        self._lock = asyncio.Lock()
        self.fetches = 0

    def _fresh(self) -> bool:
        return self._clock() - self._fetched_at < self._cache_seconds

    def _cooling_down(self) -> bool:
        return self._clock() - self._attempted_at < self._cooldown_seconds

    async def get_key(self, kid: str) -> Any:
        """The key for `kid`, fetching the JWKS when needed and allowed."""
        keys = self._keys
        if keys is not None and self._fresh() and kid in keys:
            return keys[kid].key
        if keys is not None and kid not in keys and self._cooling_down():
            raise UnknownKey(kid)
        async with self._lock:
            # Another request may have refreshed while this one waited.
            keys = self._keys
            if keys is not None and self._fresh() and kid in keys:
                return keys[kid].key
            if not self._cooling_down():
                await self._refresh()
            keys = self._keys
            if keys is None:
                raise KeysUnavailable()
            if kid not in keys:
                raise UnknownKey(kid)
            return keys[kid].key

    async def _refresh(self) -> None:
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            jwk_set = await asyncio.to_thread(self._client.get_jwk_set, True)
        except (jwt.PyJWTError, ValueError, OSError) as exc:
            # Keep the keys we have: an outage at the tenant must not sign everybody out.
            logger.warning("could not fetch the JWKS: %s", type(exc).__name__)
            return
        self._keys = {
            k.key_id: k
            for k in jwk_set.keys
            if k.key_id
            and k.key_type == "RSA"
            and k.algorithm_name == ALGORITHM
            and k.public_key_use in ("sig", None)
        }
        self._fetched_at = self._clock()


class TokenVerifier:
    """Verifies RS256 access tokens for one issuer and audience."""

    def __init__(self, resolver: KeyResolver, *, issuer: str, audience: str, leeway: int) -> None:
        self.resolver = resolver
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway

    async def verify(self, token: str) -> Principal:
        """The token's principal, or `InvalidToken`."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken()
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken() from exc
        # Refuse before any key lookup: `none`, HS256 keyed with our public key, and so on.
        if header.get("alg") != ALGORITHM:
            raise InvalidToken()
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > 256:
            raise InvalidToken()
        try:
            key = await self.resolver.get_key(kid)
        except UnknownKey as exc:
            raise InvalidToken() from exc
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "sub"], "verify_signature": True},
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken() from exc
        return _principal(claims)


def _principal(claims: dict[str, Any]) -> Principal:
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip() or len(sub) > 255:
        raise InvalidToken()
    email = next(
        (v for c in EMAIL_CLAIMS if isinstance(v := claims.get(c), str) and 0 < len(v) <= 320),
        None,
    )
    raw_roles = claims.get(ROLES_CLAIM)
    roles = (
        frozenset(r for r in raw_roles if isinstance(r, str))
        if isinstance(raw_roles, list)
        else frozenset()
    )
    return Principal(sub=sub, email=email, roles=roles)
