"""The internal identity the gateway signs for every forwarded request.

A short-lived HS256 JWT in the `X-Internal-Identity` header, with the audience set to the
receiving service, so a token minted for one service is refused by another.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from contracts.enums import Role

HEADER = "X-Internal-Identity"
REQUEST_ID_HEADER = "X-Request-ID"
ISSUER = "realstaging-gateway"
ALGORITHM = "HS256"
LIFETIME_SECONDS = 60


@dataclass(frozen=True)
class Identity:
    """Who a forwarded request acts for."""

    user_id: uuid.UUID
    role: Role
    request_id: str
    email: str | None = None

    @property
    def is_admin(self) -> bool:
        """Whether the caller holds the admin role."""
        return self.role is Role.ADMIN
