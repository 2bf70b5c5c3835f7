"""The gateway against real PostgreSQL and RabbitMQ, with a real upstream HTTP server."""

from __future__ import annotations

import asyncio
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import ClientDisconnect

from contracts.enums import Role
from contracts.events import CustomerLinked, Envelope
from contracts.identity import HEADER
from gateway import cli
from gateway.app import create_app
from gateway.consumers import CUSTOMERS_CONSUMER, link_customer
from gateway.deps import GatewayClients
from gateway.settings import GatewaySettings
from servicekit.db import create_engine, create_sessionmaker
from servicekit.identity import verify_identity
from servicekit.outbox import apply_once
from servicekit.testing import TEST_INTERNAL_SECRET, running

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024


class Upstream:
    """A stand-in internal service on a real port that records what reaches it."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.app = FastAPI()
        self.app.add_api_route(
            "/{path:path}",
            self.echo,
            methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        )

    async def echo(self, request: Request, path: str) -> JSONResponse:
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
        except ClientDisconnect:
            # The gateway gave up on an oversized body mid-stream, as it should.
            return JSONResponse({}, status_code=499)
        record = {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": dict(request.headers),
            "size": size,
        }
        self.seen.append(record)
        if path == "v1/usage":
            return JSONResponse({"plan": "pro", "used": 3, "limit": 100})
        if path.startswith("v1/projects/slow"):
            await asyncio.sleep(5)
        return JSONResponse(
            record,
            status_code=201 if request.method == "POST" else 200,
            headers={
                "ETag": '"v1"',
                "Set-Cookie": "session=upstream",
                "X-Internal-Debug": "secret",
                "X-Request-ID": "upstream-request-id",
            },
        )

    def last(self, path_prefix: str) -> dict[str, Any]:
        return next(r for r in reversed(self.seen) if r["path"].startswith(path_prefix))


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[Upstream, str]]:
    stub = Upstream()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(stub.app, log_level="warning", lifespan="off", access_log=False)
    )
    # Its own thread and loop: the upstream must keep answering while a test awaits.
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        threading.Event().wait(0.02)
    yield stub, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def dead_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
async def database_url(database_factory: Callable[..., Any]) -> str:
    return str(await database_factory("gateway"))


@pytest.fixture(scope="module")
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url, pool_size=2)
    yield engine
    await engine.dispose()


def gateway_settings(
    infra: Any, database_url: str, tmp_path: Path, **overrides: Any
) -> GatewaySettings:
    values: dict[str, Any] = {
        "environment": "development",
        "database_url": database_url,
        "amqp_url": infra.amqp_url,
        "internal_secret": TEST_INTERNAL_SECRET,
        "dev_key_path": tmp_path / "keys" / "dev-issuer.pem",
        "public_url": "http://gw",
        "max_body_bytes": MAX_BODY,
        "upstream_timeout_seconds": 1.5,
        "admin_subs": ["dev|root"],
    }
    values.update(overrides)
    return GatewaySettings(**values)


@asynccontextmanager
async def gateway(settings: GatewaySettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = create_app(settings)
    async with (
        running(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gw") as client,
    ):
        yield app, client


@pytest.fixture(scope="module")
async def gw(
    infra: Any,
    database_url: str,
    upstream: tuple[Upstream, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    _, url = upstream
    settings = gateway_settings(
        infra,
        database_url,
        tmp_path_factory.mktemp("gw"),
        projects_url=url,
        billing_url=url,
        staging_url=dead_url(),
    )
    async with gateway(settings) as pair:
        yield pair


@pytest.fixture
def app(gw: tuple[FastAPI, httpx.AsyncClient]) -> FastAPI:
    return gw[0]


@pytest.fixture
def client(gw: tuple[FastAPI, httpx.AsyncClient]) -> httpx.AsyncClient:
    return gw[1]


def bearer(app: FastAPI, sub: str | None = None, *, email: str | None = None) -> dict[str, str]:
    clients: GatewayClients = app.state.gateway
    assert clients.dev_issuer is not None
    raw = clients.dev_issuer.mint(sub or f"dev|{uuid.uuid4().hex[:12]}", email=email)
    return {"Authorization": f"Bearer {raw}"}


async def scalar(db: AsyncEngine, sql: str, **params: Any) -> Any:
    async with db.connect() as conn:
        return (await conn.execute(text(sql), params)).scalar()


class TestProvisioning:
    async def test_concurrent_first_requests_provision_exactly_one_user(
        self, app: FastAPI, client: httpx.AsyncClient, db: AsyncEngine
    ) -> None:
        sub = f"dev|{uuid.uuid4().hex}"
        headers = bearer(app, sub, email="first@example.com")
        responses = await asyncio.gather(
            *(client.get("/v1/me", headers=headers) for _ in range(10))
        )
        assert [r.status_code for r in responses] == [200] * 10
        ids = {r.json()["id"] for r in responses}
        assert len(ids) == 1
        user_id = ids.pop()
        assert await scalar(db, "SELECT count(*) FROM users WHERE auth0_sub = :s", s=sub) == 1
        events = await scalar(
            db,
            "SELECT count(*) FROM outbox WHERE routing_key = 'user.created' "
            "AND payload->'data'->>'user_id' = :u",
            u=user_id,
        )
        assert events == 1
        email = await scalar(db, "SELECT email FROM users WHERE id = :u", u=uuid.UUID(user_id))
        assert email == "first@example.com"

    async def test_known_user_is_not_announced_again(
        self, app: FastAPI, client: httpx.AsyncClient, db: AsyncEngine
    ) -> None:
        headers = bearer(app)
        first = await client.get("/v1/me", headers=headers)
        second = await client.get("/v1/me", headers=headers)
        assert first.json()["id"] == second.json()["id"]
        events = await scalar(
            db,
            "SELECT count(*) FROM outbox WHERE payload->'data'->>'user_id' = :u",
            u=first.json()["id"],
        )
        assert events == 1

    async def test_admin_subs_are_provisioned_as_admins(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/v1/me", headers=bearer(app, "dev|root"))
        assert response.json()["role"] == "admin"


class TestMe:
    async def test_me_includes_plan_and_usage_from_projects(
        self, app: FastAPI, client: httpx.AsyncClient, upstream: tuple[Upstream, str]
    ) -> None:
        response = await client.get("/v1/me", headers=bearer(app, email="me@example.com"))
        assert response.status_code == 200
        body = response.json()
        assert body["email"] == "me@example.com"
        assert body["role"] == "user"
        assert body["plan"] == "pro"
        assert body["usage"] == {"plan": "pro", "used": 3, "limit": 100}
        seen = upstream[0].last("/v1/usage")
        identity = verify_identity(
            seen["headers"][HEADER.lower()], secret=TEST_INTERNAL_SECRET, audience="projects"
        )
        assert str(identity.user_id) == body["id"]

    async def test_me_without_projects_has_null_usage(
        self, infra: Any, database_url: str, tmp_path: Path
    ) -> None:
        settings = gateway_settings(infra, database_url, tmp_path, projects_url=dead_url())
        async with gateway(settings) as (app, client):
            response = await client.get("/v1/me", headers=bearer(app))
        assert response.status_code == 200
        assert response.json()["usage"] is None
        assert response.json()["plan"] is None


class TestAuthentication:
    async def test_no_token_is_401_with_a_bearer_challenge(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/me")
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        body = response.json()
        assert body["error"] == "unauthorized"
        assert body["request_id"] == response.headers["x-request-id"]

    @pytest.mark.parametrize(
        "value",
        ["Bearer garbage", "Bearer a.b.c", "Bearer eyJhbGciOiJub25lIn0.e30."],
    )
    async def test_bad_token_is_401_invalid_token(
        self, client: httpx.AsyncClient, value: str
    ) -> None:
        response = await client.get("/v1/projects", headers={"Authorization": value})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert value.split()[1] not in response.text

    async def test_token_from_another_key_is_401(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        clients: GatewayClients = app.state.gateway
        assert clients.dev_issuer is not None
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        raw = jwt.encode(
            {
                "sub": "dev|x",
                "iss": "http://gw/",
                "aud": clients.settings.dev_audience,
                "iat": 1,
                "exp": 2**31,
            },
            stranger,
            algorithm="RS256",
            headers={"kid": clients.dev_issuer.kid},
        )
        response = await client.get("/v1/me", headers={"Authorization": f"Bearer {raw}"})
        assert response.status_code == 401

    async def test_public_routes_need_no_token(
        self, client: httpx.AsyncClient, upstream: tuple[Upstream, str]
    ) -> None:
        catalog = await client.get("/v1/catalog")
        assert catalog.status_code == 200
        labels = {e["value"]: e["label"] for e in catalog.json()["styles"]}
        assert labels["mid_century_modern"] == "Mid-century modern"
        assert len(catalog.json()["room_types"]) == 8
        plans = await client.get("/v1/plans")
        assert plans.status_code == 200
        assert HEADER.lower() not in upstream[0].last("/v1/plans")["headers"]
        assert (await client.get("/healthz")).status_code == 200
        assert (await client.get("/openapi.json")).status_code == 200

    async def test_changing_plans_needs_a_token(self, client: httpx.AsyncClient) -> None:
        assert (await client.post("/v1/plans", json={})).status_code == 401


class TestAdmin:
    async def test_non_admins_are_forbidden(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        headers = bearer(app)
        me = (await client.get("/v1/me", headers=headers)).json()
        for method, path in [
            ("GET", "/v1/admin/users"),
            ("PATCH", f"/v1/admin/users/{me['id']}"),
            ("GET", "/v1/admin/staging/jobs"),
        ]:
            response = await client.request(method, path, headers=headers, json={"role": "admin"})
            assert response.status_code == 403, path
            assert response.json()["error"] == "forbidden"

    async def test_admin_pages_through_users_and_changes_roles(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        for _ in range(3):
            await client.get("/v1/me", headers=bearer(app))
        admin = bearer(app, "dev|root")
        seen: list[str] = []
        cursor: str | None = None
        while True:
            params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
            page = (await client.get("/v1/admin/users", headers=admin, params=params)).json()
            seen += [u["id"] for u in page["items"]]
            assert len(page["items"]) <= 2
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen)) >= 4
        target = seen[0]
        patched = await client.patch(
            f"/v1/admin/users/{target}", headers=admin, json={"role": "admin"}
        )
        assert patched.status_code == 200
        assert patched.json()["role"] == "admin"

    async def test_bad_input_is_refused(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        admin = bearer(app, "dev|root")
        me = (await client.get("/v1/me", headers=admin)).json()
        bad_cursor = await client.get("/v1/admin/users?cursor=%%%", headers=admin)
        assert bad_cursor.status_code == 400
        bad_role = await client.patch(
            f"/v1/admin/users/{me['id']}", headers=admin, json={"role": "owner"}
        )
        assert bad_role.status_code == 422
        missing = await client.patch(
            f"/v1/admin/users/{uuid.uuid4()}", headers=admin, json={"role": "user"}
        )
        assert missing.status_code == 404
        self_demotion = await client.patch(
            f"/v1/admin/users/{me['id']}", headers=admin, json={"role": "user"}
        )
        assert self_demotion.status_code == 409


class TestForwarding:
    async def test_forwarded_request_carries_identity_and_no_caller_credentials(
        self, app: FastAPI, client: httpx.AsyncClient, upstream: tuple[Upstream, str]
    ) -> None:
        headers = bearer(app, email="fwd@example.com") | {
            HEADER: "forged-identity",
            "If-None-Match": '"v0"',
            "Cookie": "theirs=1",
            "X-Request-ID": "client-request-1",
        }
        me = (await client.get("/v1/me", headers=headers)).json()
        response = await client.get("/v1/projects/p1/images?status=ready&x=%20y", headers=headers)
        assert response.status_code == 200
        seen = upstream[0].last("/v1/projects/p1")
        assert seen["path"] == "/v1/projects/p1/images"
        assert seen["query"] == "status=ready&x=%20y"
        assert "authorization" not in seen["headers"]
        assert "cookie" not in seen["headers"]
        assert seen["headers"]["if-none-match"] == '"v0"'
        assert seen["headers"]["x-request-id"] == "client-request-1"
        identity = verify_identity(
            seen["headers"][HEADER.lower()], secret=TEST_INTERNAL_SECRET, audience="projects"
        )
        assert str(identity.user_id) == me["id"]
        assert identity.role is Role.USER
        assert identity.email == "fwd@example.com"
        assert identity.request_id == "client-request-1"
        assert response.headers["etag"] == '"v1"'
        assert "set-cookie" not in response.headers
        assert "x-internal-debug" not in response.headers
        assert response.headers["x-request-id"] == "client-request-1"

    async def test_identity_audience_is_the_target_service(
        self, app: FastAPI, client: httpx.AsyncClient, upstream: tuple[Upstream, str]
    ) -> None:
        response = await client.post(
            "/v1/billing/checkout", headers=bearer(app), json={"plan": "pro"}
        )
        assert response.status_code == 201
        token = upstream[0].last("/v1/billing/checkout")["headers"][HEADER.lower()]
        verify_identity(token, secret=TEST_INTERNAL_SECRET, audience="billing")
        with pytest.raises(Exception, match="gateway"):
            verify_identity(token, secret=TEST_INTERNAL_SECRET, audience="projects")

    async def test_uploads_stream_through(
        self, app: FastAPI, client: httpx.AsyncClient, upstream: tuple[Upstream, str]
    ) -> None:
        files = {"file": ("room.jpg", b"\xff\xd8" + b"x" * 40_000, "image/jpeg")}
        response = await client.post("/v1/uploads", headers=bearer(app), files=files)
        assert response.status_code == 201
        seen = upstream[0].last("/v1/uploads")
        assert seen["headers"]["content-type"].startswith("multipart/form-data; boundary=")
        assert seen["size"] > 40_000

    async def test_declared_oversized_body_is_413(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        response = await client.post(
            "/v1/uploads", headers=bearer(app), content=b"x" * (MAX_BODY + 1)
        )
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"

    async def test_chunked_oversized_body_is_413(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        async def body() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * (MAX_BODY // 4)

        response = await client.post("/v1/uploads", headers=bearer(app), content=body())
        assert response.status_code == 413
        assert response.json()["error"] == "payload_too_large"

    async def test_dot_segments_are_not_forwarded(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/v1/projects/%2e%2e/admin/x", headers=bearer(app))
        assert response.status_code == 404

    async def test_upstream_down_is_503_in_the_envelope(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/v1/admin/staging/jobs", headers=bearer(app, "dev|root"))
        assert response.status_code == 503
        body = response.json()
        assert body["error"] == "service_unavailable"
        assert "Staging" in body["message"]
        assert "127.0.0.1" not in response.text
        assert response.headers["retry-after"] == "5"

    async def test_slow_upstream_is_504(self, app: FastAPI, client: httpx.AsyncClient) -> None:
        response = await client.get("/v1/projects/slow", headers=bearer(app))
        assert response.status_code == 504
        assert response.json()["error"] == "upstream_timeout"


class TestDevIssuer:
    async def test_dev_sign_in_returns_a_working_token(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/v1/dev/token", json={"sub": "dev|signin", "email": "signin@example.com"}
        )
        assert response.status_code == 200
        body = response.json()
        assert body["token_type"] == "bearer"
        assert body["expires_in"] > 0
        me = await client.get("/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"})
        assert me.status_code == 200
        assert me.json()["email"] == "signin@example.com"

    async def test_jwks_publishes_the_signing_key(
        self, app: FastAPI, client: httpx.AsyncClient
    ) -> None:
        keys = (await client.get("/.well-known/jwks.json")).json()["keys"]
        assert [k["kid"] for k in keys] == [app.state.gateway.dev_issuer.kid]
        assert "d" not in keys[0]


class TestSettings:
    def test_production_without_auth0_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="GATEWAY_AUTH0_DOMAIN is required"):
            GatewaySettings(environment="production", internal_secret="x" * 40, auth0_domain=None)

    async def test_auth0_mode_has_no_development_issuer(self) -> None:
        settings = GatewaySettings(
            environment="production",
            internal_secret="a-real-production-secret-0123456789abcdef",
            database_url="postgresql+asyncpg://gateway:pg-9f2c41d7@db.internal:5432/gateway",
            amqp_url="amqps://gateway:mq-5be0a8c3@mq.internal:5671/realstaging",
            auth0_domain="https://tenant.eu.auth0.com/",
            auth0_audience="https://api.realstaging.test",
        )
        assert settings.token_issuer == "https://tenant.eu.auth0.com/"
        app = create_app(settings)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app), base_url="http://gw"
        ) as client:
            assert (await client.post("/v1/dev/token", json={"sub": "x"})).status_code == 404
            assert (await client.get("/.well-known/jwks.json")).status_code == 404


class TestCustomerLinked:
    async def test_customer_is_linked_once(
        self, app: FastAPI, client: httpx.AsyncClient, db: AsyncEngine, database_url: str
    ) -> None:
        me = (await client.get("/v1/me", headers=bearer(app))).json()
        envelope = Envelope.wrap(
            CustomerLinked(user_id=uuid.UUID(me["id"]), stripe_customer_id="cus_123"),
            producer="billing",
        )
        sessionmaker = create_sessionmaker(db)
        assert await apply_once(sessionmaker, CUSTOMERS_CONSUMER, envelope, link_customer)
        assert not await apply_once(sessionmaker, CUSTOMERS_CONSUMER, envelope, link_customer)
        customer = await scalar(
            db, "SELECT stripe_customer_id FROM users WHERE id = :u", u=uuid.UUID(me["id"])
        )
        assert customer == "cus_123"


class TestCli:
    async def test_set_role_provisions_and_announces_a_new_user(
        self, infra: Any, database_url: str, tmp_path: Path, db: AsyncEngine
    ) -> None:
        settings = gateway_settings(infra, database_url, tmp_path)
        sub = f"dev|{uuid.uuid4().hex}"
        assert "created" in await cli.set_role(settings, sub, Role.ADMIN, "ops@example.com")
        assert "updated" in await cli.set_role(settings, sub, Role.USER, None)
        assert "updated" in await cli.set_role(settings, sub, Role.ADMIN, None)
        role = await scalar(db, "SELECT role FROM users WHERE auth0_sub = :s", s=sub)
        assert role == "admin"
        events = await scalar(
            db,
            "SELECT count(*) FROM outbox o JOIN users u "
            "ON o.payload->'data'->>'user_id' = u.id::text WHERE u.auth0_sub = :s",
            s=sub,
        )
        assert events == 1

    def test_mint_token_prints_a_token_the_gateway_accepts(self, tmp_path: Path) -> None:
        settings = GatewaySettings(environment="development", dev_key_path=tmp_path / "k.pem")
        raw = cli.mint_token(settings, "dev|alice", email="alice@example.com", ttl=60)
        claims = jwt.decode(raw, options={"verify_signature": False})
        assert claims["sub"] == "dev|alice"
        assert claims["iss"] == f"{settings.public_url}/"

    def test_mint_token_refuses_with_auth0(self, tmp_path: Path) -> None:
        settings = GatewaySettings(
            environment="development",
            dev_key_path=tmp_path / "k.pem",
            auth0_domain="tenant.example.auth0.com",
            auth0_audience="https://api.example.com",
        )
        with pytest.raises(SystemExit):
            cli.mint_token(settings, "dev|alice")
        assert not (tmp_path / "k.pem").exists()


class TestWebApp:
    """The gateway serves the web app and tells it how to sign people in."""

    async def test_development_sign_in_is_announced_and_the_page_is_locked_down(
        self, client: httpx.AsyncClient
    ) -> None:
        config = await client.get("/v1/auth/config")
        assert config.json() == {
            "mode": "development",
            "domain": None,
            "client_id": None,
            "audience": None,
        }
        page = await client.get("/")
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert (await client.get("/billing")).status_code == 200
        assert (await client.get("/app/app.js")).status_code == 200

    async def test_auth0_sign_in_is_announced_with_its_tenant(
        self, infra: Any, database_url: str, tmp_path: Path
    ) -> None:
        settings = gateway_settings(
            infra,
            database_url,
            tmp_path,
            auth0_domain="tenant.example.auth0.com",
            auth0_audience="https://api.realstaging.example",
            auth0_spa_client_id="spa-client-123",
            auth0_jwks_url=dead_url() + "/jwks.json",
        )
        async with gateway(settings) as (_, client):
            config = (await client.get("/v1/auth/config")).json()
            page = await client.get("/")
            dev = await client.post("/v1/dev/token", json={"sub": "dev|x"})
        assert config == {
            "mode": "auth0",
            "domain": "tenant.example.auth0.com",
            "client_id": "spa-client-123",
            "audience": "https://api.realstaging.example",
        }
        assert (
            "connect-src 'self' https://tenant.example.auth0.com"
            in page.headers["content-security-policy"]
        )
        assert dev.status_code == 404
