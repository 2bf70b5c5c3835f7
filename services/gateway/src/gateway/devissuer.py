"""The development token issuer: the gateway's own RSA key, JWKS and token minting.

Only used when no Auth0 tenant is configured, which settings refuse in production.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.auth import ALGORITHM, EMAIL_CLAIMS, ROLES_CLAIM


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """The key's RFC 7638 JWK thumbprint (SHA-256), used as its `kid`."""
    numbers = public_key.public_numbers()
    e = numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")
    n = numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")
    canonical = json.dumps(
        {"e": _b64(e), "kty": "RSA", "n": _b64(n)}, separators=(",", ":"), sort_keys=True
    )
    return _b64(hashlib.sha256(canonical.encode()).digest())


def load_or_create_key(path: Path) -> rsa.RSAPrivateKey:
    """Load the PEM key at `path`, generating it (mode 0600) if it does not exist yet."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            # link() never replaces: when two processes race, the first key wins and the other
            # process loads it, so both verify the same tokens.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError(f"{path} does not hold an RSA private key")
    return loaded


class DevIssuer:
    """Mints RS256 access tokens with a local key, for development only."""

    def __init__(self, key: rsa.RSAPrivateKey, *, issuer: str, audience: str) -> None:
        self.key = key
        self.public_key = key.public_key()
        self.kid = thumbprint(self.public_key)
        self.issuer = issuer
        self.audience = audience

    @classmethod
    def from_path(cls, path: Path, *, issuer: str, audience: str) -> DevIssuer:
        """An issuer whose key lives at `path` (created when missing)."""
        return cls(load_or_create_key(path), issuer=issuer, audience=audience)

    def jwks(self) -> dict[str, Any]:
        """The public key set, in the shape Auth0 publishes it."""
        jwk: dict[str, Any] = RSAAlgorithm.to_jwk(self.public_key, as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig", "alg": ALGORITHM})
        return {"keys": [jwk]}

    def mint(
        self,
        sub: str,
        *,
        email: str | None = None,
        role: str | None = None,
        ttl_seconds: int = 3600,
    ) -> str:
        """An access token for `sub`, shaped like an Auth0 one."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "exp": now + ttl_seconds,
        }
        if email:
            claims[EMAIL_CLAIMS[0]] = email
        if role:
            claims[ROLES_CLAIM] = [role]
        return jwt.encode(claims, self.key, algorithm=ALGORITHM, headers={"kid": self.kid})
