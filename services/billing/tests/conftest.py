"""A billing app on a fresh database, real RabbitMQ, and a fake Stripe on 127.0.0.1."""

from __future__ import annotations

import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

# Tests import with --import-mode=importlib, which puts no test directory on sys.path: make
# the helper modules beside this file (fakestripe, stripe_payloads) importable.
sys.path.insert(0, str(Path(__file__).parent))

import fakestripe
import stripe_payloads

from billing.app import create_app
from billing.repository import AccountRepository
from billing.settings import BillingSettings
from contracts.enums import Role
from servicekit.db import create_engine, create_sessionmaker, unit_of_work
from servicekit.testing import (
    TEST_INTERNAL_SECRET,
    InfraUrls,
    identity_headers,
    running,
)

PRICE_PRO = "price_test_pro"
PRICE_BUSINESS = "price_test_business"


@pytest.fixture
def fake_stripe() -> Iterator[fakestripe.FakeStripe]:
    """A fake Stripe API server for one test."""
    with fakestripe.serve() as fake:
        yield fake


@pytest.fixture
async def database_url(database_factory: Callable[..., Any]) -> str:
    """A freshly migrated billing database."""
    url: str = await database_factory("billing")
    return url


@pytest.fixture
def make_settings(
    infra: InfraUrls, database_url: str, fake_stripe: fakestripe.FakeStripe
) -> Callable[..., BillingSettings]:
    """Settings for a billing app on this test's database and fake Stripe; override freely."""

    def make(**overrides: Any) -> BillingSettings:
        values: dict[str, Any] = {
            "environment": "test",
            "database_url": database_url,
            "amqp_url": infra.amqp_url,
            "internal_secret": TEST_INTERNAL_SECRET,
            "stripe_secret_key": fakestripe.API_KEY,
            "stripe_webhook_secret": stripe_payloads.WEBHOOK_SECRET,
            "stripe_api_base": fake_stripe.url,
            "stripe_max_network_retries": 1,
            "app_url": "https://app.example.test",
            "price_pro": PRICE_PRO,
            "price_business": PRICE_BUSINESS,
            "entitlement_sweep_seconds": 3600,
        }
        values.update(overrides)
        return BillingSettings(**values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., BillingSettings]) -> BillingSettings:
    """Billing settings with Stripe configured."""
    return make_settings()


@pytest.fixture
async def client(settings: BillingSettings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to the running app."""
    app = create_app(settings)
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://billing") as c:
            yield c


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Direct access to the test database."""
    engine = create_engine(database_url, pool_size=2)
    yield create_sessionmaker(engine)
    await engine.dispose()


class User:
    """A user as the gateway would present them."""

    def __init__(self, user_id: uuid.UUID | None = None, role: Role = Role.USER) -> None:
        self.id = user_id or uuid.uuid4()
        self.role = role
        self.email = f"{self.id.hex[:8]}@example.com"

    @property
    def headers(self) -> dict[str, str]:
        """Fresh signed identity headers."""
        return identity_headers("billing", self.id, role=self.role, email=self.email)


@pytest.fixture
async def new_user(db: async_sessionmaker[AsyncSession]) -> Callable[..., Any]:
    """Make a user whose `user.created` billing has already consumed."""

    async def make(role: Role = Role.USER, user_id: uuid.UUID | None = None) -> User:
        user = User(user_id, role)
        async with unit_of_work(db) as session:
            await AccountRepository(session).add(user.id, user.email)
        return user

    return make


@pytest.fixture
async def user(new_user: Callable[..., Any]) -> User:
    """A signed-up user."""
    made: User = await new_user()
    return made


@pytest.fixture
async def admin(new_user: Callable[..., Any]) -> User:
    """A signed-up admin."""
    made: User = await new_user(Role.ADMIN)
    return made
