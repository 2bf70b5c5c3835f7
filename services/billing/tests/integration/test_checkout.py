"""Checkout and portal through the official Stripe library against a fake Stripe."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fakestripe import FakeStripe
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from billing.app import create_app
from billing.models import Account, OutboxMessage, Subscription
from billing.settings import BillingSettings
from servicekit.db import unit_of_work
from servicekit.testing import identity_headers, running

pytestmark = pytest.mark.integration

PRO_PRICE = "price_test_pro"


async def linked_customer(db: async_sessionmaker[AsyncSession], user: Any) -> str | None:
    """The Stripe customer stored for a user."""
    async with db() as session:
        return await session.scalar(
            select(Account.stripe_customer_id).where(Account.user_id == user.id)
        )


async def outbox(db: async_sessionmaker[AsyncSession], routing_key: str) -> list[dict[str, Any]]:
    """Envelopes staged in the outbox under one routing key, oldest first."""
    async with db() as session:
        rows = await session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.routing_key == routing_key)
            .order_by(OutboxMessage.created_at)
        )
        return [r.payload for r in rows]


async def checkout(client: httpx.AsyncClient, user: Any, plan: str = "pro") -> httpx.Response:
    """Ask for a Checkout Session as `user`."""
    return await client.post("/v1/billing/checkout", json={"plan": plan}, headers=user.headers)


class TestCheckout:
    """A first checkout creates one customer and a subscription-mode session."""

    async def test_first_checkout_creates_customer_and_subscription_session(
        self,
        client: httpx.AsyncClient,
        fake_stripe: FakeStripe,
        db: async_sessionmaker[AsyncSession],
        user: Any,
    ) -> None:
        resp = await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=user.headers)
        assert resp.status_code == 200, resp.text
        url = resp.json()["url"]
        assert url.startswith("https://checkout.stripe.test/c/pay/cs_test_")

        (customer_req,) = fake_stripe.posts("/v1/customers")
        assert customer_req.params == {"email": user.email, "metadata": {"user_id": str(user.id)}}
        assert customer_req.idempotency_key
        (customer,) = fake_stripe.customers.values()
        assert customer["object"] == "customer"

        (session_req,) = fake_stripe.posts("/v1/checkout/sessions")
        assert session_req.idempotency_key
        assert session_req.params == {
            "mode": "subscription",
            "customer": customer["id"],
            "client_reference_id": str(user.id),
            "line_items": [{"price": PRO_PRICE, "quantity": "1"}],
            "success_url": "https://app.example.test/billing?checkout=success",
            "cancel_url": "https://app.example.test/billing?checkout=canceled",
            "metadata": {"user_id": str(user.id), "plan": "pro"},
            "subscription_data": {"metadata": {"user_id": str(user.id), "plan": "pro"}},
        }
        assert await linked_customer(db, user) == customer["id"]
        (linked,) = await outbox(db, "customer.linked")
        assert linked["data"] == {"user_id": str(user.id), "stripe_customer_id": customer["id"]}
        assert linked["producer"] == "billing"

    async def test_second_checkout_reuses_the_customer(
        self, client: httpx.AsyncClient, fake_stripe: FakeStripe, user: Any
    ) -> None:
        for plan in ("pro", "business"):
            resp = await client.post(
                "/v1/billing/checkout", json={"plan": plan}, headers=user.headers
            )
            assert resp.status_code == 200, resp.text
        assert len(fake_stripe.customers) == 1
        sessions = fake_stripe.posts("/v1/checkout/sessions")
        prices = [r.params["line_items"][0]["price"] for r in sessions]
        assert prices == [PRO_PRICE, "price_test_business"]

    async def test_retried_request_gets_the_same_session_and_one_customer(
        self, client: httpx.AsyncClient, fake_stripe: FakeStripe, user: Any
    ) -> None:
        first = await checkout(client, user)
        again = await checkout(client, user)
        assert first.json()["url"] == again.json()["url"]
        assert len(fake_stripe.customers) == 1
        assert len(fake_stripe.checkout_sessions) == 1
        keys = {r.idempotency_key for r in fake_stripe.posts("/v1/checkout/sessions")}
        assert len(keys) == 1

    async def test_concurrent_first_checkouts_link_exactly_one_customer(
        self,
        client: httpx.AsyncClient,
        fake_stripe: FakeStripe,
        db: async_sessionmaker[AsyncSession],
        user: Any,
    ) -> None:
        responses = await asyncio.gather(
            *(
                client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=user.headers)
                for _ in range(6)
            )
        )
        assert [r.status_code for r in responses] == [200] * 6
        assert len(fake_stripe.customers) == 1
        (customer_id,) = fake_stripe.customers
        assert await linked_customer(db, user) == customer_id
        assert len(await outbox(db, "customer.linked")) == 1
        assert len({r.json()["url"] for r in responses}) == 1

    async def test_transient_stripe_error_is_retried_with_the_same_key(
        self, client: httpx.AsyncClient, fake_stripe: FakeStripe, user: Any
    ) -> None:
        fake_stripe.fail(500, times=1)
        resp = await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=user.headers)
        assert resp.status_code == 200, resp.text
        attempts = fake_stripe.posts("/v1/customers")
        assert len(attempts) == 2
        assert attempts[0].idempotency_key == attempts[1].idempotency_key
        assert len(fake_stripe.customers) == 1

    async def test_user_not_yet_announced_gets_an_account(
        self,
        client: httpx.AsyncClient,
        fake_stripe: FakeStripe,
        db: async_sessionmaker[AsyncSession],
    ) -> None:
        user_id = uuid.uuid4()
        headers = identity_headers("billing", user_id, email="early@example.com")
        resp = await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=headers)
        assert resp.status_code == 200, resp.text
        (customer,) = fake_stripe.customers.values()
        assert customer["email"] == "early@example.com"
        async with db() as session:
            account = await session.get(Account, user_id)
        assert account is not None
        assert (account.email, account.stripe_customer_id) == ("early@example.com", customer["id"])

    async def test_active_subscriber_is_sent_to_the_portal(
        self,
        client: httpx.AsyncClient,
        fake_stripe: FakeStripe,
        db: async_sessionmaker[AsyncSession],
        user: Any,
    ) -> None:
        async with unit_of_work(db) as session:
            session.add(
                Subscription(
                    user_id=user.id,
                    stripe_subscription_id="sub_existing",
                    status="active",
                    price_id=PRO_PRICE,
                )
            )
        resp = await client.post(
            "/v1/billing/checkout", json={"plan": "business"}, headers=user.headers
        )
        assert resp.status_code == 409
        assert resp.json()["error"] == "already_subscribed"
        assert "billing portal" in resp.json()["message"]
        assert fake_stripe.requests == []

    async def test_plan_without_a_price_cannot_be_bought(
        self,
        make_settings: Callable[..., BillingSettings],
        fake_stripe: FakeStripe,
        user: Any,
    ) -> None:
        app = create_app(make_settings(price_business=None))
        async with running(app), _client(app) as client:
            resp = await client.post(
                "/v1/billing/checkout", json={"plan": "business"}, headers=user.headers
            )
        assert resp.status_code == 409
        assert resp.json()["error"] == "plan_not_purchasable"
        assert fake_stripe.requests == []

    @pytest.mark.parametrize("plan", ["free", "enterprise", None])
    async def test_only_paid_plans_can_be_checked_out(
        self, client: httpx.AsyncClient, user: Any, plan: str | None
    ) -> None:
        resp = await client.post("/v1/billing/checkout", json={"plan": plan}, headers=user.headers)
        assert resp.status_code == 422
        assert resp.json()["error"] == "validation_failed"

    async def test_checkout_needs_the_gateway_identity(self, client: httpx.AsyncClient) -> None:
        resp = await client.post("/v1/billing/checkout", json={"plan": "pro"})
        assert resp.status_code == 401


class TestStripeFailures:
    """Stripe errors answer 502 with a clear envelope, never 500."""

    @pytest.mark.parametrize(
        ("status", "error_type", "phrase"),
        [
            (500, "api_error", "try again later"),
            (429, "rate_limit_error", "busy"),
            (401, "invalid_request_error", "try again later"),
        ],
        ids=["server-error", "rate-limited", "bad-key"],
    )
    async def test_stripe_failure_is_a_502_envelope(
        self,
        client: httpx.AsyncClient,
        fake_stripe: FakeStripe,
        db: async_sessionmaker[AsyncSession],
        user: Any,
        status: int,
        error_type: str,
        phrase: str,
    ) -> None:
        fake_stripe.fail(status, times=5, error_type=error_type)
        resp = await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=user.headers)
        assert resp.status_code == 502, resp.text
        body = resp.json()
        assert body["error"] == "payment_provider_error"
        assert phrase in body["message"]
        assert body["details"]["stripe_status"] == status
        assert body["request_id"]
        assert await linked_customer(db, user) is None
        assert await outbox(db, "customer.linked") == []

    async def test_stripe_unreachable_is_a_502(
        self, make_settings: Callable[..., BillingSettings], user: Any
    ) -> None:
        settings = make_settings(stripe_api_base="http://127.0.0.1:9", stripe_timeout_seconds=2)
        app = create_app(settings)
        async with running(app), _client(app) as client:
            resp = await client.post(
                "/v1/billing/checkout", json={"plan": "pro"}, headers=user.headers
            )
        assert resp.status_code == 502
        assert "could not be reached" in resp.json()["message"]

    async def test_failed_session_keeps_the_customer_for_the_retry(
        self,
        client: httpx.AsyncClient,
        fake_stripe: FakeStripe,
        db: async_sessionmaker[AsyncSession],
        user: Any,
    ) -> None:
        fake_stripe.fail(500, times=2, path="/v1/checkout/sessions")
        failed = await client.post(
            "/v1/billing/checkout", json={"plan": "pro"}, headers=user.headers
        )
        assert failed.status_code == 502
        (customer_id,) = fake_stripe.customers
        assert await linked_customer(db, user) == customer_id
        retried = await client.post(
            "/v1/billing/checkout", json={"plan": "pro"}, headers=user.headers
        )
        assert retried.status_code == 200, retried.text
        assert len(fake_stripe.customers) == 1
        assert len(fake_stripe.checkout_sessions) == 1


class TestPortal:
    """The billing portal opens for users Stripe knows."""

    async def test_portal_opens_for_the_linked_customer(
        self, client: httpx.AsyncClient, fake_stripe: FakeStripe, user: Any
    ) -> None:
        await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=user.headers)
        resp = await client.post("/v1/billing/portal", headers=user.headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["url"].startswith("https://billing.stripe.test/p/session/bps_")
        (req,) = fake_stripe.posts("/v1/billing_portal/sessions")
        (customer_id,) = fake_stripe.customers
        assert req.params == {
            "customer": customer_id,
            "return_url": "https://app.example.test/billing",
        }
        assert req.idempotency_key

    async def test_portal_without_a_customer_is_a_clear_404(
        self, client: httpx.AsyncClient, fake_stripe: FakeStripe, user: Any
    ) -> None:
        resp = await client.post("/v1/billing/portal", headers=user.headers)
        assert resp.status_code == 404
        assert resp.json()["error"] == "no_billing_account"
        assert "subscribe to a plan first" in resp.json()["message"]
        assert fake_stripe.requests == []


class TestWithoutStripe:
    """Without a secret key, payments answer 503 and everything else runs on free."""

    async def test_checkout_and_portal_answer_503_and_the_rest_works(
        self,
        make_settings: Callable[..., BillingSettings],
        fake_stripe: FakeStripe,
        user: Any,
    ) -> None:
        app = create_app(make_settings(stripe_secret_key=None))
        async with running(app), _client(app) as client:
            for path, body in (
                ("/v1/billing/checkout", {"plan": "pro"}),
                ("/v1/billing/portal", None),
            ):
                resp = await client.post(path, json=body, headers=user.headers)
                assert resp.status_code == 503, path
                assert resp.json()["error"] == "payments_not_configured"
                assert resp.json()["message"] == "Payments are not configured on this server."
            current = await client.get("/v1/billing/subscription", headers=user.headers)
            plans = await client.get("/v1/plans")
        assert current.status_code == 200
        assert current.json()["plan"]["code"] == "free"
        assert current.json()["payments_enabled"] is False
        assert current.json()["subscription"] is None
        assert [p["code"] for p in plans.json()["items"]] == ["free", "pro", "business"]
        assert fake_stripe.requests == []


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://billing")
