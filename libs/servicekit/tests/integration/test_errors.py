"""The error envelope for failures that reach the database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from sqlalchemy import text

from servicekit.runtime import SessionDep, create_service_app
from servicekit.settings import ServiceSettings
from servicekit.testing import TEST_INTERNAL_SECRET, InfraUrls, running

pytestmark = pytest.mark.integration

router = APIRouter()


@router.post("/echo")
async def echo(value: str, session: SessionDep) -> dict[str, str]:
    """Round-trip a value through PostgreSQL."""
    stored = await session.scalar(text("SELECT CAST(:v AS text)"), {"v": value})
    return {"value": str(stored)}


class TestDatabaseErrors:
    """Values PostgreSQL refuses are the caller's problem (422), never a 500."""

    async def test_nul_character_is_422_in_the_envelope(
        self, infra: InfraUrls, database_factory: Callable[..., Any]
    ) -> None:
        settings = ServiceSettings(
            environment="test",
            database_url=await database_factory("projects"),
            amqp_url=infra.amqp_url,
            internal_secret=TEST_INTERNAL_SECRET,
        )
        app = create_service_app(settings, title="t", routers=[router])
        async with running(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                ok = await client.post("/echo", params={"value": "fine"})
                bad = await client.post("/echo", params={"value": "a\x00b"})
        assert ok.json() == {"value": "fine"}
        assert bad.status_code == 422
        body = bad.json()
        assert body["error"] == "invalid_value"
        assert set(body) == {"error", "message", "details", "request_id"}
        assert body["request_id"] == bad.headers["x-request-id"]
