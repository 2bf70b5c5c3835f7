"""A projects app on a fresh database, real RabbitMQ and real S3."""

from __future__ import annotations

import io
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from projects.app import create_app
from projects.settings import ProjectsSettings
from servicekit.db import create_engine, create_sessionmaker
from servicekit.storage import Storage
from servicekit.testing import TEST_INTERNAL_SECRET, InfraUrls, identity_headers, running


@pytest.fixture
async def make_settings(
    infra: InfraUrls, database_factory: Callable[..., Any]
) -> Callable[..., ProjectsSettings]:
    """Build settings for this test's database, with overrides (scaled durations, a bucket)."""
    database_url = await database_factory("projects")

    def make(**overrides: Any) -> ProjectsSettings:
        values: dict[str, Any] = {
            "environment": "test",
            "database_url": database_url,
            "amqp_url": infra.amqp_url,
            "internal_secret": TEST_INTERNAL_SECRET,
            "s3_endpoint": infra.s3_endpoint,
            "s3_access_key": infra.s3_access_key,
            "s3_secret_key": infra.s3_secret_key,
            "s3_bucket": "realstaging-test",
            "max_upload_bytes": 2 * 1024 * 1024,
        }
        return ProjectsSettings(**(values | overrides))

    return make


@pytest.fixture
def settings(make_settings: Callable[..., ProjectsSettings]) -> ProjectsSettings:
    """Settings for one test's projects service."""
    return make_settings()


@pytest.fixture
async def sessions(settings: ProjectsSettings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Direct sessions on the test's database (to look at rows and run passes)."""
    engine = create_engine(settings.database_url, pool_size=2)
    yield create_sessionmaker(engine)
    await engine.dispose()


@pytest.fixture
async def client(settings: ProjectsSettings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the running app."""
    app = create_app(settings)
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://projects") as c:
            yield c


@pytest.fixture
def storage(settings: ProjectsSettings) -> Storage:
    """Direct access to the test bucket."""
    return Storage(settings)


class Owner:
    """A user as the gateway would present them."""

    def __init__(self) -> None:
        self.id = uuid.uuid4()

    @property
    def headers(self) -> dict[str, str]:
        """Fresh signed identity headers."""
        return identity_headers("projects", self.id)


@pytest.fixture
def owner() -> Owner:
    """A new user."""
    return Owner()


@pytest.fixture
def new_owner() -> Callable[[], Owner]:
    """Make further users."""
    return Owner


@pytest.fixture
def jpeg() -> bytes:
    """A small real JPEG."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 190, 180)).save(buf, "JPEG")
    return buf.getvalue()
