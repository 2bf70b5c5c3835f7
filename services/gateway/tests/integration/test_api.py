"""One API: the per-user write limit, the merged public OpenAPI, admin-only billing routes."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from gateway.app import create_app
from gateway.settings import GatewaySettings
from servicekit.testing import TEST_INTERNAL_SECRET, running, wait_for

from .conftest import ServerThread

pytestmark = pytest.mark.integration

DEAD = "http://127.0.0.1:9"


class ProjectIn(BaseModel):
    name: str


class Page(BaseModel):
    items: list[str]
    next_cursor: str | None = None


class Plan(BaseModel):
    code: str
    monthly_limit: int


class PlanPage(BaseModel):
    items: list[Plan]


def projects_stub() -> FastAPI:
    app = FastAPI(title="projects")

    @app.get("/v1/projects", response_model=Page)
    async def list_projects() -> Page:
        return Page(items=[])

    @app.post("/v1/projects", status_code=201)
    async def create_project(body: ProjectIn) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/v1/internal/reindex")
    async def internal() -> dict[str, str]:
        return {}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def billing_stub() -> FastAPI:
    app = FastAPI(title="billing")
    # Same component name as projects' `Page`, different shape: one of them is renamed.
    BillingPage = type("Page", (BaseModel,), {"__annotations__": {"plans": list[Plan]}})

    @app.get("/v1/plans", response_model=BillingPage)
    async def plans() -> Any:
        return {"plans": [{"code": "free", "monthly_limit": 5}]}

    @app.post("/v1/billing/checkout", response_model=PlanPage)
    async def checkout() -> Any:
        return {"items": []}

    @app.post("/v1/billing/admin/comp", status_code=201)
    async def comp(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True}, status_code=201)

    return app


@pytest.fixture(scope="module")
async def database_url(database_factory: Callable[..., Any]) -> str:
    return str(await database_factory("gateway"))


@pytest.fixture(scope="module")
def upstreams(serve: Callable[..., ServerThread]) -> dict[str, str]:
    return {
        "projects": serve(projects_stub(), lifespan="off").url,
        "billing": serve(billing_stub(), lifespan="off").url,
    }


def settings_for(
    infra: Any, database_url: str, tmp_path: Path, **overrides: Any
) -> GatewaySettings:
    values: dict[str, Any] = {
        "environment": "development",
        "database_url": database_url,
        "amqp_url": infra.amqp_url,
        "internal_secret": TEST_INTERNAL_SECRET,
        "dev_key_path": tmp_path / "dev-issuer.pem",
        "public_url": "http://gw",
        "staging_url": DEAD,
        "upstream_connect_timeout_seconds": 0.5,
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


async def sign_in(client: httpx.AsyncClient, sub: str | None = None) -> dict[str, str]:
    sub = sub or f"dev|{uuid.uuid4().hex[:12]}"
    token = (await client.post("/v1/dev/token", json={"sub": sub})).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


class TestWriteRateLimit:
    async def test_the_write_over_the_limit_is_429_and_reads_and_others_pass(
        self, infra: Any, database_url: str, tmp_path: Path, upstreams: dict[str, str]
    ) -> None:
        settings = settings_for(
            infra,
            database_url,
            tmp_path,
            projects_url=upstreams["projects"],
            billing_url=upstreams["billing"],
            rate_limit_writes=3,
            # An hour-long window, so the test never straddles two windows.
            rate_limit_window_seconds=3600,
        )
        async with gateway(settings) as (_, client):
            alice, bob = await sign_in(client), await sign_in(client)
            for n in range(3):
                created = await client.post("/v1/projects", json={"name": f"p{n}"}, headers=alice)
                assert created.status_code == 201, created.text
            limited = await client.post("/v1/projects", json={"name": "p4"}, headers=alice)
            assert limited.status_code == 429
            body = limited.json()
            assert body["error"] == "rate_limited"
            assert body["request_id"] == limited.headers["x-request-id"]
            assert 1 <= int(limited.headers["retry-after"]) <= 3600
            assert body["details"]["limit"] == 3
            assert (await client.get("/v1/projects", headers=alice)).status_code == 200
            ticket = await client.post("/v1/events/ticket", headers=alice)
            assert ticket.status_code == 200
            other = await client.post("/v1/projects", json={"name": "b"}, headers=bob)
            assert other.status_code == 201

    async def test_the_limit_can_be_switched_off(
        self, infra: Any, database_url: str, tmp_path: Path, upstreams: dict[str, str]
    ) -> None:
        settings = settings_for(
            infra,
            database_url,
            tmp_path,
            projects_url=upstreams["projects"],
            billing_url=upstreams["billing"],
            rate_limit_writes=1,
            rate_limit_enabled=False,
        )
        async with gateway(settings) as (_, client):
            alice = await sign_in(client)
            for _ in range(3):
                response = await client.post("/v1/projects", json={"name": "x"}, headers=alice)
                assert response.status_code == 201


class TestPublicOpenApi:
    async def test_merges_the_forwarded_paths_of_the_services_that_answer(
        self, infra: Any, database_url: str, tmp_path: Path, upstreams: dict[str, str]
    ) -> None:
        settings = settings_for(
            infra,
            database_url,
            tmp_path,
            projects_url=upstreams["projects"],
            billing_url=upstreams["billing"],
        )
        async with gateway(settings) as (_, client):

            async def merged() -> dict[str, Any] | None:
                doc = (await client.get("/openapi.json")).json()
                return doc if "/v1/billing/checkout" in doc["paths"] else None

            doc = await wait_for(merged)
            paths = doc["paths"]
            assert {"/v1/projects", "/v1/plans", "/v1/billing/admin/comp"} <= set(paths)
            assert {"/v1/me", "/v1/events", "/v1/events/ticket", "/v1/catalog"} <= set(paths)
            assert "/healthz" not in paths
            assert "/v1/internal/reindex" not in paths
            assert "/v1/admin/staging/jobs" not in paths
            schemas = doc["components"]["schemas"]
            # Services merge in name order: billing's `Page` came first, projects' is renamed.
            assert schemas["Page"]["properties"].keys() == {"plans"}
            assert schemas["ProjectsPage"]["properties"].keys() == {"items", "next_cursor"}
            projects_ref = paths["/v1/projects"]["get"]["responses"]["200"]["content"][
                "application/json"
            ]["schema"]["$ref"]
            assert projects_ref == "#/components/schemas/ProjectsPage"
            assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
            assert paths["/v1/projects"]["post"]["security"] == [{"HTTPBearer": []}]
            assert "security" not in paths["/v1/plans"]["get"]
            docs = await client.get("/docs")
            assert docs.status_code == 200
            assert "swagger" in docs.text.lower()

    async def test_still_answers_when_a_service_is_down(
        self, infra: Any, database_url: str, tmp_path: Path, upstreams: dict[str, str]
    ) -> None:
        settings = settings_for(
            infra, database_url, tmp_path, projects_url=DEAD, billing_url=upstreams["billing"]
        )
        async with gateway(settings) as (_, client):

            async def merged() -> dict[str, Any] | None:
                doc = (await client.get("/openapi.json")).json()
                return doc if "/v1/plans" in doc["paths"] else None

            doc = await wait_for(merged)
            assert "/v1/projects" not in doc["paths"]
            assert "/v1/me" in doc["paths"]
            # Nothing answers at all: the gateway's own document is still served.
        settings = settings_for(infra, database_url, tmp_path, projects_url=DEAD, billing_url=DEAD)
        async with gateway(settings) as (_, client):
            response = await client.get("/openapi.json")
            assert response.status_code == 200
            assert "/v1/events" in response.json()["paths"]


class TestBillingAdmin:
    async def test_billing_admin_routes_need_the_admin_role(
        self, infra: Any, database_url: str, tmp_path: Path, upstreams: dict[str, str]
    ) -> None:
        settings = settings_for(
            infra,
            database_url,
            tmp_path,
            projects_url=upstreams["projects"],
            billing_url=upstreams["billing"],
        )
        async with gateway(settings) as (_, client):
            user, admin = await sign_in(client), await sign_in(client, "dev|root")
            refused = await client.post("/v1/billing/admin/comp", json={}, headers=user)
            assert refused.status_code == 403
            assert refused.json()["error"] == "forbidden"
            allowed = await client.post("/v1/billing/admin/comp", json={}, headers=admin)
            assert allowed.status_code == 201
            checkout = await client.post("/v1/billing/checkout", headers=user)
            assert checkout.status_code == 200
