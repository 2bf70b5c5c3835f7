"""Reading billing state, admin comps and resync from Stripe."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fakestripe import FakeStripe
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from stripe_payloads import WEBHOOK_SECRET, Customer, encode, sign

from billing.models import OutboxMessage, Subscription
from billing.repository import AccountRepository
from billing.service import refresh_due_entitlements
from billing.settings import BillingSettings
from servicekit.db import unit_of_work
from servicekit.testing import wait_for

pytestmark = pytest.mark.integration

PRO = "price_test_pro"
T0 = int(datetime.now(UTC).timestamp()) - 3_600


async def announced(db: async_sessionmaker[AsyncSession], user: Any) -> list[dict[str, Any]]:
    """The `subscription.updated` data staged for a user, oldest first."""
    async with db() as session:
        rows = (
            await session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.routing_key == "subscription.updated",
                    OutboxMessage.payload["data"]["user_id"].astext == str(user.id),
                )
            )
        ).all()
    rows = sorted(rows, key=lambda r: datetime.fromisoformat(r.payload["occurred_at"]))
    return [r.payload["data"] for r in rows]


async def webhook(client: httpx.AsyncClient, evt: dict[str, Any]) -> None:
    """Deliver a signed event and expect it applied."""
    body = encode(evt)
    resp = await client.post(
        "/v1/billing/webhooks/stripe",
        content=body,
        headers={"Stripe-Signature": sign(body, WEBHOOK_SECRET)},
    )
    assert resp.status_code == 200, resp.text


class TestReads:
    """The caller's subscription and invoices."""

    async def test_new_user_is_on_the_free_plan_without_a_subscription(
        self, client: httpx.AsyncClient, user: Any
    ) -> None:
        resp = await client.get("/v1/billing/subscription", headers=user.headers)
        assert resp.status_code == 200
        body = resp.json()
        assert body["plan"]["code"] == "free"
        assert body["entitlement"]["monthly_limit"] == 5
        assert body["entitlement"]["source"] == "free"
        assert (body["subscription"], body["comp"], body["has_billing_account"]) == (
            None,
            None,
            False,
        )
        assert body["payments_enabled"] is True

    async def test_subscription_and_invoices_after_payments(
        self, client: httpx.AsyncClient, user: Any
    ) -> None:
        c = Customer(user_id=user.id)
        await webhook(client, c.checkout_completed(T0))
        await webhook(client, c.subscription_event("created", T0, PRO))
        for n in range(5):
            await webhook(
                client,
                c.invoice_event(
                    "paid",
                    T0 + n,
                    invoice_id=f"in_{n}_{c.subscription_id}",
                    status="paid",
                    amount_due=2900,
                    amount_paid=2900,
                    number=f"RS-{n:04d}",
                ),
            )
        body = (await client.get("/v1/billing/subscription", headers=user.headers)).json()
        assert body["plan"]["code"] == "pro"
        assert body["subscription"]["stripe_subscription_id"] == c.subscription_id
        assert body["subscription"]["status"] == "active"
        assert body["has_billing_account"] is True

        numbers: list[str] = []
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            page = await client.get("/v1/billing/invoices", params=params, headers=user.headers)
            assert page.status_code == 200, page.text
            numbers += [i["invoice_number"] for i in page.json()["items"]]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                break
        assert numbers == [f"RS-{n:04d}" for n in reversed(range(5))]

    async def test_other_users_invoices_are_invisible(
        self, client: httpx.AsyncClient, user: Any, new_user: Callable[..., Any]
    ) -> None:
        c = Customer(user_id=user.id)
        await webhook(
            client,
            c.invoice_event(
                "paid",
                T0,
                invoice_id="in_mine",
                status="paid",
                amount_due=1,
                amount_paid=1,
                number="RS-1",
            ),
        )
        other = await new_user()
        page = (await client.get("/v1/billing/invoices", headers=other.headers)).json()
        assert page == {"items": [], "next_cursor": None}

    @pytest.mark.parametrize(
        "cursor",
        [
            "nonsense",
            base64.urlsafe_b64encode(b"0001-01-01T00:00:00+14:00|" + b"0" * 32).decode(),
            base64.urlsafe_b64encode(f"2026-01-01T00:00:00|{uuid.uuid4()}".encode()).decode(),
        ],
        ids=["garbage", "underflowing-date", "naive-date"],
    )
    async def test_bad_cursor_is_a_400(
        self, client: httpx.AsyncClient, user: Any, cursor: str
    ) -> None:
        resp = await client.get(
            "/v1/billing/invoices", params={"cursor": cursor}, headers=user.headers
        )
        assert resp.status_code == 400
        assert resp.json()["error"] == "invalid_cursor"


class TestComps:
    """Admins grant plans without Stripe; the entitlement is announced."""

    async def test_comp_grants_and_revokes_a_plan(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        user: Any,
        admin: Any,
    ) -> None:
        url = f"/v1/billing/admin/users/{user.id}/comp"
        resp = await client.post(url, json={"plan": "business"}, headers=admin.headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["entitlement"]["plan_code"] == "business"
        assert resp.json()["comp"] == {"plan_code": "business", "until": None}
        mine = (await client.get("/v1/billing/subscription", headers=user.headers)).json()
        assert (mine["plan"]["code"], mine["entitlement"]["status"]) == ("business", "comped")

        revoked = await client.delete(url, headers=admin.headers)
        assert revoked.json()["entitlement"]["plan_code"] == "free"
        assert [(a["plan_code"], a["status"]) for a in await announced(db, user)] == [
            ("business", "comped"),
            ("free", "free"),
        ]

    async def test_comp_needs_an_admin(self, client: httpx.AsyncClient, user: Any) -> None:
        resp = await client.post(
            f"/v1/billing/admin/users/{user.id}/comp", json={"plan": "pro"}, headers=user.headers
        )
        assert resp.status_code == 403

    async def test_the_admin_area_is_closed_to_users_even_where_nothing_exists(
        self, client: httpx.AsyncClient, user: Any, admin: Any
    ) -> None:
        as_user = await client.post("/v1/billing/admin/comp", json={}, headers=user.headers)
        as_admin = await client.post("/v1/billing/admin/comp", json={}, headers=admin.headers)
        assert (as_user.status_code, as_admin.status_code) == (403, 404)

    async def test_comp_until_the_past_is_refused(
        self, client: httpx.AsyncClient, user: Any, admin: Any
    ) -> None:
        resp = await client.post(
            f"/v1/billing/admin/users/{user.id}/comp",
            json={"plan": "pro", "until": "2020-01-01T00:00:00Z"},
            headers=admin.headers,
        )
        assert resp.status_code == 422

    async def test_expired_comp_is_announced_by_the_sweeper(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        settings: BillingSettings,
        user: Any,
        admin: Any,
    ) -> None:
        until = datetime.now(UTC) + timedelta(seconds=1)
        resp = await client.post(
            f"/v1/billing/admin/users/{user.id}/comp",
            json={"plan": "pro", "until": until.isoformat()},
            headers=admin.headers,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["entitlement"]["period_end"].startswith(until.isoformat()[:19])

        async def swept_to_free() -> bool:
            await refresh_due_entitlements(db, settings)
            return bool((await announced(db, user))[-1]["plan_code"] == "free")

        await wait_for(swept_to_free, within=10, interval=0.2)
        assert [a["plan_code"] for a in await announced(db, user)] == ["pro", "free"]


class TestResync:
    """Admins re-read a customer's subscriptions from Stripe."""

    async def test_resync_applies_what_stripe_has(
        self,
        client: httpx.AsyncClient,
        fake_stripe: FakeStripe,
        db: async_sessionmaker[AsyncSession],
        user: Any,
        admin: Any,
    ) -> None:
        assert (
            await client.post("/v1/billing/checkout", json={"plan": "pro"}, headers=user.headers)
        ).status_code == 200
        (customer_id,) = fake_stripe.customers
        c = Customer(user_id=user.id, customer_id=customer_id)
        fake_stripe.add_subscription(c.subscription(PRO, "trialing"))

        resp = await client.post(f"/v1/billing/admin/users/{user.id}/resync", headers=admin.headers)
        assert resp.status_code == 200, resp.text
        assert resp.json()["subscriptions"] == 1
        assert resp.json()["entitlement"]["plan_code"] == "pro"
        (listing,) = [r for r in fake_stripe.requests if r.method == "GET"]
        assert listing.params == {"customer": customer_id, "status": "all", "limit": "100"}
        async with db() as session:
            sub = (await session.scalars(select(Subscription))).one()
        assert (sub.status, sub.price_id, sub.user_id) == ("trialing", PRO, user.id)
        assert [a["status"] for a in await announced(db, user)] == ["trialing"]

        # A webhook created before the resync is older news and changes nothing.
        await webhook(client, c.subscription_event("updated", T0, PRO, "incomplete"))
        async with db() as session:
            assert (await session.scalars(select(Subscription.status))).one() == "trialing"

    async def test_resync_without_a_customer_is_a_404(
        self, client: httpx.AsyncClient, user: Any, admin: Any
    ) -> None:
        resp = await client.post(f"/v1/billing/admin/users/{user.id}/resync", headers=admin.headers)
        assert resp.status_code == 404
        assert resp.json()["error"] == "no_billing_account"

    async def test_resync_stripe_failure_is_a_502(
        self,
        client: httpx.AsyncClient,
        fake_stripe: FakeStripe,
        db: async_sessionmaker[AsyncSession],
        user: Any,
        admin: Any,
    ) -> None:
        async with unit_of_work(db) as session:
            await AccountRepository(session).link_customer(user.id, "cus_known")
        fake_stripe.fail(500, times=5)
        resp = await client.post(f"/v1/billing/admin/users/{user.id}/resync", headers=admin.headers)
        assert resp.status_code == 502
        assert resp.json()["error"] == "payment_provider_error"
