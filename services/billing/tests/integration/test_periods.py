"""Periods announced by billing: renewal grace, late renewals, moves to free, unknown prices."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from stripe_payloads import WEBHOOK_SECRET, Customer, encode, sign

from billing.app import create_app
from billing.entitlements import add_months
from billing.models import Account, OutboxMessage
from billing.settings import BillingSettings
from contracts.events import Envelope, UserCreated
from contracts.topology import EXCHANGE
from servicekit.testing import InfraUrls, private_vhost, running, wait_for

pytestmark = pytest.mark.integration

PRO = "price_test_pro"
BUSINESS = "price_test_business"
GRACE_SECONDS = 3.0


async def deliver(client: httpx.AsyncClient, evt: dict[str, Any]) -> str:
    """POST a signed event; the status billing reports."""
    body = encode(evt)
    resp = await client.post(
        "/v1/billing/webhooks/stripe",
        content=body,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": sign(body, WEBHOOK_SECRET),
        },
    )
    assert resp.status_code == 200, resp.text
    status: str = resp.json()["status"]
    return status


async def announced(db: async_sessionmaker[AsyncSession], user_id: Any) -> list[dict[str, Any]]:
    """Every `subscription.updated` staged for a user, oldest first."""
    async with db() as session:
        rows = (
            await session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.routing_key == "subscription.updated",
                    OutboxMessage.payload["data"]["user_id"].astext == str(user_id),
                )
            )
        ).all()
    rows = sorted(rows, key=lambda r: datetime.fromisoformat(r.payload["occurred_at"]))
    return [r.payload["data"] for r in rows]


def ts(unix: float) -> datetime:
    """A Stripe timestamp as billing announces it."""
    return datetime.fromtimestamp(unix, UTC)


def when(data: dict[str, Any], key: str) -> datetime | None:
    """A moment in an announcement."""
    value = data.get(key)
    return datetime.fromisoformat(value) if value else None


def plan_and_period(data: dict[str, Any]) -> tuple[Any, ...]:
    """What projects acts on in an announcement."""
    return (
        data["plan_code"],
        data["monthly_limit"],
        when(data, "period_start"),
        when(data, "period_end"),
        when(data, "renewal_grace_until"),
    )


async def wait_announced(
    db: async_sessionmaker[AsyncSession],
    user_id: Any,
    predicate: Callable[[dict[str, Any]], bool],
    within: float = 15,
) -> dict[str, Any]:
    """Wait until the newest announcement for a user satisfies `predicate`."""

    async def newest() -> dict[str, Any] | None:
        found = await announced(db, user_id)
        return found[-1] if found and predicate(found[-1]) else None

    result: dict[str, Any] = await wait_for(newest, within=within)
    return result


@pytest.fixture
async def scaled(
    make_settings: Callable[..., BillingSettings],
) -> AsyncIterator[httpx.AsyncClient]:
    """A running billing app whose renewal grace lasts seconds (its sweeper runs)."""
    app = create_app(
        make_settings(renewal_grace_seconds=GRACE_SECONDS, entitlement_sweep_seconds=0.5)
    )
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://billing") as c:
            yield c


class TestAnnouncements:
    """Every announcement carries the renewal grace and the plan that applies after it."""

    async def test_a_paid_subscription_announces_its_grace_and_the_free_fallback(
        self, client: httpx.AsyncClient, db: async_sessionmaker[AsyncSession], user: Any
    ) -> None:
        c = Customer(user_id=user.id)
        assert await deliver(client, c.subscription_event("created", int(time.time()), PRO))
        (data,) = await announced(db, user.id)
        assert plan_and_period(data) == (
            "pro",
            100,
            ts(c.period_start),
            ts(c.period_end),
            ts(c.period_end + 48 * 3600),
        )
        assert (data["fallback_plan_code"], data["fallback_limit"]) == ("free", 5)

    async def test_canceling_at_period_end_announces_no_renewal_grace(
        self, client: httpx.AsyncClient, db: async_sessionmaker[AsyncSession], user: Any
    ) -> None:
        c = Customer(user_id=user.id)
        now = int(time.time())
        await deliver(client, c.subscription_event("created", now - 1, PRO))
        await deliver(client, c.subscription_event("updated", now, PRO, cancel_at_period_end=True))
        first, second = await announced(db, user.id)
        assert when(first, "renewal_grace_until") is not None
        assert plan_and_period(second) == ("pro", 100, ts(c.period_start), ts(c.period_end), None)

    async def test_a_new_user_is_announced_the_free_plan(
        self,
        make_settings: Callable[..., BillingSettings],
        db: async_sessionmaker[AsyncSession],
        infra: InfraUrls,
    ) -> None:
        created = Envelope.wrap(
            UserCreated(user_id=Customer().user_id, email="new@example.com"), producer="gateway"
        )
        # A virtual host of its own: no billing app of another test competes for the message.
        with private_vhost(infra.amqp_url) as amqp_url:
            app = create_app(make_settings(amqp_url=amqp_url))
            async with (
                running(app),
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app), base_url="http://billing"
                ) as client,
            ):

                async def ready() -> bool:
                    # The exchange and billing's queue are declared before the broker is ready.
                    return (await client.get("/readyz")).status_code == 200

                await wait_for(ready)
                connection = await aio_pika.connect(amqp_url)
                async with connection:
                    channel = await connection.channel(publisher_confirms=True)
                    exchange = await channel.get_exchange(EXCHANGE, ensure=False)
                    await exchange.publish(
                        aio_pika.Message(
                            created.model_dump_json().encode(),
                            content_type="application/json",
                            message_id=str(created.event_id),
                            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        ),
                        routing_key=UserCreated.routing_key,
                        mandatory=True,
                    )
                data = await wait_announced(db, created.data.user_id, lambda d: True)
        assert (data["plan_code"], data["monthly_limit"], data["status"]) == ("free", 5, "free")
        assert (data["fallback_plan_code"], data["fallback_limit"]) == ("free", 5)
        async with db() as session:
            account = await session.get(Account, created.data.user_id)
        assert account is not None
        assert account.email == "new@example.com"


class TestPeriodBoundary:
    """At `period_end` the plan holds for the renewal grace; afterwards it is free."""

    async def test_without_a_renewal_the_plan_holds_for_the_grace_then_free_from_the_lapse(
        self, scaled: httpx.AsyncClient, db: async_sessionmaker[AsyncSession], user: Any
    ) -> None:
        now = int(time.time())
        c = Customer(user_id=user.id, period_start=now - 60, period_seconds=62)
        end = c.period_end
        await deliver(scaled, c.subscription_event("created", now, PRO))
        in_grace = await wait_announced(db, user.id, lambda d: when(d, "period_start") == ts(end))
        # Announced by the sweeper at the old end, not a sweep interval later.
        assert plan_and_period(in_grace) == (
            "pro",
            100,
            ts(end),
            ts(end + GRACE_SECONDS),
            ts(end + GRACE_SECONDS),
        )
        lapsed = await wait_announced(db, user.id, lambda d: d["plan_code"] == "free")
        lapse = ts(end + GRACE_SECONDS)
        assert plan_and_period(lapsed) == ("free", 5, lapse, add_months(lapse, 1), None)
        assert [d["plan_code"] for d in await announced(db, user.id)] == ["pro", "pro", "free"]

    @pytest.mark.parametrize("renewal", ["subscription-updated", "invoice-paid"])
    async def test_a_late_renewal_continues_the_period_from_the_old_end(
        self,
        scaled: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        user: Any,
        renewal: str,
    ) -> None:
        now = int(time.time())
        c = Customer(user_id=user.id, period_start=now - 60, period_seconds=62)
        end = c.period_end
        await deliver(scaled, c.subscription_event("created", now, PRO))
        await wait_announced(db, user.id, lambda d: when(d, "period_start") == ts(end))
        c.renew()
        c.period_seconds = 30 * 86_400
        if renewal == "invoice-paid":
            evt = c.invoice_event(
                "paid",
                int(time.time()),
                invoice_id=f"in_{c.subscription_id}_2",
                status="paid",
                amount_due=2900,
                amount_paid=2900,
                number="RS-0002",
                service_period=(c.period_start, c.period_end),
            )
        else:
            evt = c.subscription_event("updated", int(time.time()), PRO)
        assert await deliver(scaled, evt) == "processed"
        renewed = (await announced(db, user.id))[-1]
        assert plan_and_period(renewed) == (
            "pro",
            100,
            ts(end),
            ts(c.period_end),
            ts(c.period_end + GRACE_SECONDS),
        )
        body = (await scaled.get("/v1/billing/subscription", headers=user.headers)).json()
        assert body["entitlement"]["plan_code"] == "pro"
        assert body["entitlement"]["period_start"].startswith(ts(end).isoformat()[:19])
        if renewal == "invoice-paid":
            invoices = (await scaled.get("/v1/billing/invoices", headers=user.headers)).json()
            assert invoices["items"][0]["hosted_invoice_url"].endswith(f"in_{c.subscription_id}_2")
        # Past the old grace nothing lapses: the renewed period is in force.
        await wait_for(lambda: time.time() > end + GRACE_SECONDS + 1, within=10)
        assert (await announced(db, user.id))[-1]["plan_code"] == "pro"


class TestChanges:
    """Paid to free starts a fresh free period; upgrades apply at once."""

    async def test_paid_to_free_mid_month_starts_a_fresh_free_period_at_the_cancellation(
        self, client: httpx.AsyncClient, db: async_sessionmaker[AsyncSession], user: Any
    ) -> None:
        now = int(time.time())
        c = Customer(user_id=user.id, period_start=now - 10 * 86_400)
        await deliver(client, c.subscription_event("created", now - 10, PRO))
        canceled_at = now - 5
        await deliver(
            client,
            c.subscription_event("deleted", now - 5, PRO, "canceled", canceled_at=canceled_at),
        )
        last = (await announced(db, user.id))[-1]
        assert plan_and_period(last) == (
            "free",
            5,
            ts(canceled_at),
            add_months(ts(canceled_at), 1),
            None,
        )

    async def test_an_upgrade_mid_period_takes_effect_at_once(
        self, client: httpx.AsyncClient, db: async_sessionmaker[AsyncSession], user: Any
    ) -> None:
        now = int(time.time())
        c = Customer(user_id=user.id, period_start=now - 10 * 86_400)
        await deliver(client, c.subscription_event("created", now - 10, PRO))
        await deliver(client, c.subscription_event("updated", now - 5, BUSINESS))
        pro, business = await announced(db, user.id)
        assert plan_and_period(pro)[:2] == ("pro", 100)
        assert plan_and_period(business) == (
            "business",
            500,
            ts(c.period_start),
            ts(c.period_end),
            ts(c.period_end + 48 * 3600),
        )

    async def test_renewal_events_in_any_order_and_twice_converge(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        new_user: Callable[..., Any],
    ) -> None:
        now = int(time.time())

        def renewal(c: Customer) -> list[dict[str, Any]]:
            first = c.subscription_event("created", now - 100, PRO)
            upgraded = c.subscription_event("updated", now - 90, BUSINESS)
            c.renew()
            return [
                first,
                upgraded,
                c.invoice_event(
                    "paid",
                    now - 50,
                    invoice_id=f"in_{c.subscription_id}_2",
                    status="paid",
                    amount_due=9900,
                    amount_paid=9900,
                    number="RS-0002",
                    service_period=(c.period_start, c.period_end),
                ),
                c.subscription_event("updated", now - 50, BUSINESS),
            ]

        finals = []
        for seed in (None, 3, 11, 2024):
            user = await new_user()
            c = Customer(user_id=user.id, period_start=now - 40 * 86_400)
            events = renewal(c)
            deliveries = events * 2
            if seed is not None:
                random.Random(seed).shuffle(deliveries)
            for evt in deliveries:
                await deliver(client, evt)
            last = (await announced(db, user.id))[-1]
            finals.append(plan_and_period(last))
            assert last["plan_code"] == "business"
            assert when(last, "period_start") == ts(c.period_start)
            assert when(last, "period_end") == ts(c.period_end)
        assert len({(f[0], f[1]) for f in finals}) == 1


class TestPrices:
    """Legacy `plan` items are read; a price that matches no plan is loud and keeps the plan."""

    @pytest.mark.parametrize("new_api", [True, False], ids=["items-periods", "legacy-periods"])
    async def test_an_item_with_a_plan_and_no_price_grants_that_plan(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        user: Any,
        new_api: bool,
    ) -> None:
        c = Customer(user_id=user.id, new_api=new_api)
        evt = c.subscription_event("created", int(time.time()), BUSINESS, legacy_plan=True)
        assert "price" not in evt["data"]["object"]["items"]["data"][0]
        await deliver(client, evt)
        (data,) = await announced(db, user.id)
        assert (data["plan_code"], data["monthly_limit"]) == ("business", 500)

    async def test_an_unknown_price_keeps_the_previous_plan_is_flagged_and_counted(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        user: Any,
        admin: Any,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        c = Customer(user_id=user.id)
        now = int(time.time())
        before = await unknown_price_count(client)
        await deliver(client, c.subscription_event("created", now - 1, PRO))
        with caplog.at_level(logging.ERROR, logger="billing.service"):
            await deliver(client, c.subscription_event("updated", now, "price_retired_2025"))
        assert any("price_retired_2025" in r.getMessage() for r in caplog.records)
        assert await unknown_price_count(client) == before + 1

        announcements = await announced(db, user.id)
        assert [d["plan_code"] for d in announcements] == ["pro"]
        view = await client.get(f"/v1/billing/admin/users/{user.id}", headers=admin.headers)
        assert view.status_code == 200, view.text
        body = view.json()
        assert body["unknown_price"] == "price_retired_2025"
        assert (body["plan"]["code"], body["entitlement"]["monthly_limit"]) == ("pro", 100)
        own = (await client.get("/v1/billing/subscription", headers=user.headers)).json()
        assert (own["plan"]["code"], own["unknown_price"]) == ("pro", None)

        # Once the price is known again the flag goes and the plan follows the price.
        await deliver(client, c.subscription_event("updated", now + 1, BUSINESS))
        body = (
            await client.get(f"/v1/billing/admin/users/{user.id}", headers=admin.headers)
        ).json()
        assert (body["unknown_price"], body["plan"]["code"]) == (None, "business")

    async def test_an_unknown_price_for_a_new_customer_is_free_but_flagged(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        user: Any,
        admin: Any,
    ) -> None:
        c = Customer(user_id=user.id)
        await deliver(client, c.subscription_event("created", int(time.time()), "price_other"))
        (data,) = await announced(db, user.id)
        assert data["plan_code"] == "free"
        body = (
            await client.get(f"/v1/billing/admin/users/{user.id}", headers=admin.headers)
        ).json()
        assert body["unknown_price"] == "price_other"
        metrics = (await client.get("/metrics")).text
        assert re.search(r"^billing_unknown_price_subscriptions \d", metrics, re.M)


async def unknown_price_count(client: httpx.AsyncClient) -> float:
    """The `billing_unknown_price_total` counter as /metrics shows it."""
    text = (await client.get("/metrics")).text
    found = re.search(r"^billing_unknown_price_total ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0
