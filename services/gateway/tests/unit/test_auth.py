"""Access-token verification: every attack is a 401, a good token passes, rotation works."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from gateway.auth import (
    InvalidToken,
    JwksKeyResolver,
    KeysUnavailable,
    LocalKeyResolver,
    TokenVerifier,
)
from gateway.devissuer import DevIssuer, load_or_create_key, thumbprint
from servicekit.errors import Unauthorized

ISSUER = "https://tenant.example.auth0.com/"
AUDIENCE = "https://api.realstaging.test"

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KID = "key-1"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "auth0|alice",
        "iat": now,
        "exp": now + 600,
        "email": "alice@example.com",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def token(
    payload: dict[str, Any] | None = None,
    *,
    key: Any = KEY,
    kid: str | None = KID,
    alg: str = "RS256",
) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload or claims(), key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(payload).encode()), b64(signature)]
    )


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    data.update({"kid": kid, "use": "sig", "alg": "RS256"})
    return data


@pytest.fixture
def verifier() -> TokenVerifier:
    return TokenVerifier(
        LocalKeyResolver({KID: KEY.public_key()}), issuer=ISSUER, audience=AUDIENCE, leeway=30
    )


class TestTokenVerifier:
    async def test_valid_token_passes(self, verifier: TokenVerifier) -> None:
        principal = await verifier.verify(token())
        assert principal.sub == "auth0|alice"
        assert principal.email == "alice@example.com"

    async def test_namespaced_email_claim_is_read(self, verifier: TokenVerifier) -> None:
        payload = claims(email=None, **{"https://realstaging/email": "ns@example.com"})
        assert (await verifier.verify(token(payload))).email == "ns@example.com"

    @pytest.mark.parametrize(
        "bad",
        [
            pytest.param("", id="empty"),
            pytest.param("garbage", id="garbage"),
            pytest.param("a.b.c", id="three-garbage-parts"),
            pytest.param("x" * 20_000, id="huge"),
            pytest.param("eyJhbGciOiJSUzI1NiJ9.e30", id="two-parts"),
            pytest.param(forged({"alg": "RS256", "kid": KID}, claims()), id="unsigned"),
            pytest.param(forged({"alg": "none", "kid": KID}, claims()), id="alg-none"),
            pytest.param(forged({"alg": "RS256", "kid": 7}, claims()), id="kid-not-a-string"),
            pytest.param(forged(["not", "an", "object"], claims()), id="header-not-object"),  # type: ignore[arg-type]
            pytest.param(forged({"alg": "RS256", "kid": KID}, ["x"]), id="payload-not-object"),  # type: ignore[arg-type]
        ],
    )
    async def test_malformed_tokens_are_refused(self, verifier: TokenVerifier, bad: str) -> None:
        with pytest.raises(Unauthorized):
            await verifier.verify(bad)

    async def test_hs256_signed_with_the_public_key_is_refused(
        self, verifier: TokenVerifier
    ) -> None:
        header = {"alg": "HS256", "kid": KID, "typ": "JWT"}
        signing_input = (
            f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}".encode()
        )
        sig = hmac.new(public_pem(KEY), signing_input, hashlib.sha256).digest()
        with pytest.raises(InvalidToken):
            await verifier.verify(f"{signing_input.decode()}.{b64(sig)}")

    async def test_other_rsa_algorithms_are_refused(self, verifier: TokenVerifier) -> None:
        with pytest.raises(InvalidToken):
            await verifier.verify(token(alg="RS512"))
        with pytest.raises(InvalidToken):
            await verifier.verify(token(alg="PS256"))

    async def test_missing_kid_is_refused(self, verifier: TokenVerifier) -> None:
        with pytest.raises(InvalidToken):
            await verifier.verify(token(kid=None))

    async def test_unknown_kid_is_refused(self, verifier: TokenVerifier) -> None:
        with pytest.raises(InvalidToken):
            await verifier.verify(token(kid="nope"))

    async def test_wrong_key_is_refused(self, verifier: TokenVerifier) -> None:
        with pytest.raises(InvalidToken):
            await verifier.verify(token(key=OTHER_KEY))

    async def test_tampered_payload_is_refused(self, verifier: TokenVerifier) -> None:
        header, _, sig = token().split(".")
        evil = b64(json.dumps(claims(sub="auth0|admin")).encode())
        with pytest.raises(InvalidToken):
            await verifier.verify(f"{header}.{evil}.{sig}")

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(claims(sub=None), id="no-sub"),
            pytest.param(claims(sub=""), id="empty-sub"),
            pytest.param(claims(sub=123), id="sub-not-a-string"),
            pytest.param(claims(exp=None), id="no-exp"),
            pytest.param(claims(iat=None), id="no-iat"),
            pytest.param(claims(exp="tomorrow"), id="exp-not-a-number"),
            pytest.param(claims(exp=int(time.time()) - 3600), id="expired"),
            pytest.param(claims(nbf=int(time.time()) + 3600), id="not-yet-valid"),
            pytest.param(claims(aud="https://someone-else"), id="wrong-audience"),
            pytest.param(claims(aud=None), id="no-audience"),
            pytest.param(claims(iss="https://evil.example.com/"), id="wrong-issuer"),
            pytest.param(claims(iss=None), id="no-issuer"),
        ],
    )
    async def test_bad_claims_are_refused(
        self, verifier: TokenVerifier, payload: dict[str, Any]
    ) -> None:
        with pytest.raises(InvalidToken):
            await verifier.verify(token(payload))

    async def test_expiry_within_leeway_passes(self, verifier: TokenVerifier) -> None:
        now = int(time.time())
        await verifier.verify(token(claims(iat=now - 600, exp=now - 10)))

    async def test_refusals_carry_the_bearer_challenge_and_not_the_token(
        self, verifier: TokenVerifier
    ) -> None:
        bad = token(key=OTHER_KEY)
        with pytest.raises(InvalidToken) as caught:
            await verifier.verify(bad)
        assert caught.value.headers == {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        assert bad not in caught.value.message


class JwksServer:
    """A JWKS endpoint on 127.0.0.1 that counts its requests."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.hits = 0
        self.body: bytes | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                body = outer.body or json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    with JwksServer() as server:
        yield server


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def auth0_verifier(
    url: str, *, cooldown: float = 10.0, cache_seconds: float = 600, clock: Clock | None = None
) -> TokenVerifier:
    resolver = JwksKeyResolver(
        url,
        cache_seconds=cache_seconds,
        timeout_seconds=2,
        cooldown_seconds=cooldown,
        clock=clock or Clock(),
    )
    return TokenVerifier(resolver, issuer=ISSUER, audience=AUDIENCE, leeway=30)


class TestJwksKeyResolver:
    async def test_valid_token_passes_and_the_key_set_is_cached(
        self, jwks_server: JwksServer
    ) -> None:
        jwks_server.keys = [jwk(KEY, KID)]
        verifier = auth0_verifier(jwks_server.url)
        for _ in range(5):
            assert (await verifier.verify(token())).sub == "auth0|alice"
        assert jwks_server.hits == 1

    async def test_unknown_kid_refreshes_once_then_passes_after_rotation(
        self, jwks_server: JwksServer
    ) -> None:
        jwks_server.keys = [jwk(KEY, KID)]
        clock = Clock()
        verifier = auth0_verifier(jwks_server.url, cooldown=10, clock=clock)
        await verifier.verify(token())
        jwks_server.keys = [jwk(KEY, KID), jwk(OTHER_KEY, "key-2")]
        clock.now += 11
        principal = await verifier.verify(token(key=OTHER_KEY, kid="key-2"))
        assert principal.sub == "auth0|alice"
        assert jwks_server.hits == 2

    async def test_a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown(
        self, jwks_server: JwksServer
    ) -> None:
        jwks_server.keys = [jwk(KEY, KID)]
        verifier = auth0_verifier(jwks_server.url, cooldown=10)
        await verifier.verify(token())
        for i in range(50):
            with pytest.raises(InvalidToken):
                await verifier.verify(token(key=OTHER_KEY, kid=f"made-up-{i}"))
        assert jwks_server.hits == 1

    async def test_concurrent_cold_start_fetches_once(self, jwks_server: JwksServer) -> None:
        jwks_server.keys = [jwk(KEY, KID)]
        verifier = auth0_verifier(jwks_server.url)
        results = await asyncio.gather(*(verifier.verify(token()) for _ in range(20)))
        assert len(results) == 20
        assert jwks_server.hits == 1

    async def test_non_rsa_and_foreign_algorithm_keys_are_ignored(
        self, jwks_server: JwksServer
    ) -> None:
        ec_key = ec.generate_private_key(ec.SECP256R1())
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
        ec_jwk.update({"kid": "ec", "use": "sig"})
        rs512 = jwk(KEY, "rs512") | {"alg": "RS512"}
        jwks_server.keys = [ec_jwk, rs512, jwk(KEY, KID)]
        verifier = auth0_verifier(jwks_server.url, cooldown=0)
        await verifier.verify(token())
        with pytest.raises(InvalidToken):
            await verifier.verify(token(kid="rs512"))
        with pytest.raises(InvalidToken):
            await verifier.verify(
                jwt.encode(claims(), ec_key, algorithm="ES256", headers={"kid": "ec"})
            )

    async def test_unreachable_jwks_is_unavailable_not_unauthorized(self) -> None:
        verifier = auth0_verifier("http://127.0.0.1:9/.well-known/jwks.json")
        with pytest.raises(KeysUnavailable):
            await verifier.verify(token())

    async def test_garbage_jwks_is_unavailable(self, jwks_server: JwksServer) -> None:
        jwks_server.body = b"<html>oops</html>"
        verifier = auth0_verifier(jwks_server.url)
        with pytest.raises(KeysUnavailable):
            await verifier.verify(token())

    async def test_known_keys_survive_a_failed_refresh(self, jwks_server: JwksServer) -> None:
        jwks_server.keys = [jwk(KEY, KID)]
        clock = Clock()
        verifier = auth0_verifier(jwks_server.url, cooldown=0, cache_seconds=60, clock=clock)
        await verifier.verify(token())
        jwks_server.body = b"not json"
        clock.now += 61
        assert (await verifier.verify(token())).sub == "auth0|alice"
        assert jwks_server.hits == 2


class TestDevIssuer:
    def test_minted_token_verifies_with_its_own_key(self, tmp_path: Any) -> None:
        issuer = DevIssuer.from_path(
            tmp_path / "k.pem", issuer="http://gw/", audience="https://api.test"
        )
        raw = issuer.mint("dev|bob", email="bob@example.com", role="admin", ttl_seconds=60)
        assert jwt.get_unverified_header(raw)["kid"] == issuer.kid
        decoded = jwt.decode(
            raw, issuer.public_key, algorithms=["RS256"], audience="https://api.test"
        )
        assert decoded["sub"] == "dev|bob"
        assert decoded["https://realstaging/roles"] == ["admin"]

    def test_key_is_created_once_with_private_permissions(self, tmp_path: Any) -> None:
        path = tmp_path / "nested" / "dir" / "key.pem"
        first = load_or_create_key(path)
        second = load_or_create_key(path)
        assert path.stat().st_mode & 0o777 == 0o600
        assert thumbprint(first.public_key()) == thumbprint(second.public_key())
        assert [p.name for p in path.parent.iterdir()] == ["key.pem"]

    def test_thumbprint_matches_rfc_7638(self) -> None:
        # The example key and thumbprint of RFC 7638, section 3.1.
        n = (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc"
            "_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR"
            "0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFT"
            "WhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        )
        e = "AQAB"

        def num(value: str) -> int:
            return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")

        public = rsa.RSAPublicNumbers(num(e), num(n)).public_key()
        assert thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"

    async def test_dev_tokens_verify_through_the_same_verifier(self, tmp_path: Any) -> None:
        issuer = DevIssuer.from_path(tmp_path / "k.pem", issuer="http://gw/", audience="aud")
        verifier = TokenVerifier(
            LocalKeyResolver({issuer.kid: issuer.public_key}),
            issuer="http://gw/",
            audience="aud",
            leeway=0,
        )
        assert (await verifier.verify(issuer.mint("dev|x"))).sub == "dev|x"
        expired = issuer.mint("dev|x", ttl_seconds=-10)
        with pytest.raises(InvalidToken):
            await verifier.verify(expired)
