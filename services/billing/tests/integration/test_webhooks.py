"""Stripe webhooks: verified, recorded first, applied once, in any order, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from stripe_payloads import WEBHOOK_SECRET, Customer, encode, event, sign

from billing.app import create_app
from billing.models import Account, Invoice, OutboxMessage, ProcessedEvent, Subscription
from billing.settings import BillingSettings
from servicekit.testing import running

pytestmark = pytest.mark.integration

WEBHOOK = "/v1/billing/webhooks/stripe"
PRO = "price_test_pro"
BUSINESS = "price_test_business"
T0 = int(time.time()) - 3_600
PERIOD_START = int(time.time()) - 86_400


async def deliver(
    client: httpx.AsyncClient,
    payload: dict[str, Any] | bytes,
    *,
    secret: str = WEBHOOK_SECRET,
    at: int | None = None,
) -> httpx.Response:
    """POST an event the way Stripe does: raw JSON body and a Stripe-Signature header."""
    body = payload if isinstance(payload, bytes) else encode(payload)
    headers = {"Content-Type": "application/json", "Stripe-Signature": sign(body, secret, at)}
    return await client.post(WEBHOOK, content=body, headers=headers)


async def deliver_ok(client: httpx.AsyncClient, payload: dict[str, Any]) -> str:
    """Deliver and expect a 2xx; the status billing reports."""
    resp = await deliver(client, payload)
    assert resp.status_code == 200, resp.text
    status: str = resp.json()["status"]
    return status


async def signed_up(new_user: Callable[..., Any], c: Customer) -> Customer:
    """Give the customer's user an account, as `user.created` would."""
    await new_user(user_id=c.user_id)
    return c


def lifecycle(c: Customer) -> list[dict[str, Any]]:
    """Checkout, first payment, upgrade, failed renewal, recovery, cancel at period end."""
    first = {"invoice_id": f"in_{c.subscription_id}_1", "number": "RS-0001"}
    second = {"invoice_id": f"in_{c.subscription_id}_2", "number": "RS-0002"}
    return [
        c.checkout_completed(T0),
        c.subscription_event("created", T0, PRO),
        c.invoice_event("paid", T0 + 1, status="paid", amount_due=2900, amount_paid=2900, **first),
        c.invoice_event(
            "payment_succeeded", T0 + 1, status="paid", amount_due=2900, amount_paid=2900, **first
        ),
        c.subscription_event("updated", T0 + 100, BUSINESS),
        c.invoice_event(
            "payment_failed", T0 + 200, status="open", amount_due=9900, amount_paid=0, **second
        ),
        c.subscription_event("updated", T0 + 200, BUSINESS, "past_due"),
        c.invoice_event(
            "paid", T0 + 300, status="paid", amount_due=9900, amount_paid=9900, **second
        ),
        c.subscription_event("updated", T0 + 300, BUSINESS, cancel_at_period_end=True),
    ]


def cancellation(c: Customer) -> list[dict[str, Any]]:
    """The lifecycle, then the subscription ends and the customer is deleted."""
    return [
        *lifecycle(c),
        c.subscription_event(
            "deleted",
            T0 + 400,
            BUSINESS,
            "canceled",
            cancel_at_period_end=True,
            canceled_at=T0 + 400,
        ),
        c.customer_deleted(T0 + 400),
    ]


SCENARIOS = {"lifecycle": lifecycle, "cancellation": cancellation}


async def last_entitlement(
    db: async_sessionmaker[AsyncSession], c: Customer
) -> dict[str, Any] | None:
    """The data of the newest `subscription.updated` staged for the customer's user."""
    announced = await entitlements(db, c)
    return announced[-1] if announced else None


async def entitlements(db: async_sessionmaker[AsyncSession], c: Customer) -> list[dict[str, Any]]:
    """Every `subscription.updated` staged for the customer's user, oldest first."""
    async with db() as session:
        rows = (
            await session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.routing_key == "subscription.updated",
                    OutboxMessage.payload["data"]["user_id"].astext == str(c.user_id),
                )
            )
        ).all()
    ordered = sorted(rows, key=lambda r: datetime.fromisoformat(r.payload["occurred_at"]))
    return [r.payload["data"] for r in ordered]


async def snapshot(db: async_sessionmaker[AsyncSession], c: Customer) -> dict[str, Any]:
    """Everything the events left behind for one user, with their ids made generic."""
    names = {c.subscription_id: "SUB", c.customer_id: "CUS"}

    def generic(value: Any) -> Any:
        if isinstance(value, str):
            for real, name in names.items():
                value = value.replace(real, name)
        return value

    async with db() as session:
        subs = (
            await session.scalars(select(Subscription).where(Subscription.user_id == c.user_id))
        ).all()
        invoices = (
            await session.scalars(
                select(Invoice)
                .where(Invoice.user_id == c.user_id)
                .order_by(Invoice.stripe_invoice_id)
            )
        ).all()
        account = await session.get(Account, c.user_id)
    entitlement = await last_entitlement(db, c)
    assert entitlement is not None
    return {
        "subscriptions": [
            tuple(
                generic(getattr(s, col))
                for col in (
                    "stripe_subscription_id",
                    "stripe_customer_id",
                    "status",
                    "price_id",
                    "current_period_start",
                    "current_period_end",
                    "cancel_at",
                    "canceled_at",
                    "cancel_at_period_end",
                    "stripe_event_created",
                )
            )
            for s in subs
        ],
        "invoices": [
            tuple(
                generic(getattr(i, col))
                for col in (
                    "stripe_invoice_id",
                    "stripe_subscription_id",
                    "status",
                    "amount_due",
                    "amount_paid",
                    "currency",
                    "invoice_number",
                )
            )
            for i in invoices
        ],
        "customer": generic(account.stripe_customer_id if account else None),
        "entitlement": {k: v for k, v in entitlement.items() if k != "user_id"},
    }


async def count(db: async_sessionmaker[AsyncSession], model: type[Any]) -> int:
    """Rows in a table."""
    async with db() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


def ts(unix: int) -> datetime:
    """A Stripe timestamp as stored."""
    return datetime.fromtimestamp(unix, UTC)


class TestEveryEvent:
    """Each handled event type leaves the rows and announcements it should."""

    @pytest.mark.parametrize("new_api", [True, False], ids=["items-periods", "legacy-periods"])
    async def test_lifecycle_in_order(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        new_user: Callable[..., Any],
        new_api: bool,
    ) -> None:
        c = await signed_up(new_user, Customer(period_start=PERIOD_START, new_api=new_api))
        for evt in lifecycle(c):
            assert await deliver_ok(client, evt) == "processed"

        async with db() as session:
            (sub,) = (await session.scalars(select(Subscription))).all()
            invoices = (
                await session.scalars(select(Invoice).order_by(Invoice.invoice_number))
            ).all()
            account = await session.get(Account, c.user_id)
        assert sub.user_id == c.user_id
        assert (sub.stripe_subscription_id, sub.stripe_customer_id) == (
            c.subscription_id,
            c.customer_id,
        )
        assert (sub.status, sub.price_id, sub.cancel_at_period_end) == ("active", BUSINESS, True)
        assert (sub.current_period_start, sub.current_period_end) == (
            ts(c.period_start),
            ts(c.period_end),
        )
        assert (sub.cancel_at, sub.canceled_at) == (None, None)
        assert sub.stripe_event_created == ts(T0 + 300)

        assert [
            (
                i.stripe_invoice_id,
                i.stripe_subscription_id,
                i.status,
                i.amount_due,
                i.amount_paid,
                i.currency,
                i.invoice_number,
                i.user_id,
            )
            for i in invoices
        ] == [
            (
                f"in_{c.subscription_id}_1",
                c.subscription_id,
                "paid",
                2900,
                2900,
                "usd",
                "RS-0001",
                c.user_id,
            ),
            (
                f"in_{c.subscription_id}_2",
                c.subscription_id,
                "paid",
                9900,
                9900,
                "usd",
                "RS-0002",
                c.user_id,
            ),
        ]
        assert account is not None
        assert account.stripe_customer_id == c.customer_id

        announced = await entitlements(db, c)
        assert [(e["plan_code"], e["monthly_limit"], e["status"]) for e in announced] == [
            ("pro", 100, "active"),
            ("business", 500, "active"),
            ("business", 500, "past_due"),
            ("business", 500, "active"),
        ]
        final = announced[-1]
        assert datetime.fromisoformat(final["period_start"]) == ts(c.period_start)
        assert datetime.fromisoformat(final["period_end"]) == ts(c.period_end)
        async with db() as session:
            linked = (
                await session.scalars(
                    select(OutboxMessage).where(OutboxMessage.routing_key == "customer.linked")
                )
            ).all()
        assert [m.payload["data"] for m in linked] == [
            {"user_id": str(c.user_id), "stripe_customer_id": c.customer_id}
        ]
        assert await count(db, ProcessedEvent) == len(lifecycle(c))

    async def test_cancellation_and_customer_deletion_fall_back_to_free(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        new_user: Callable[..., Any],
    ) -> None:
        c = await signed_up(new_user, Customer(period_start=PERIOD_START))
        for evt in cancellation(c):
            assert await deliver_ok(client, evt) == "processed"
        state = await snapshot(db, c)
        assert state["customer"] is None
        assert state["subscriptions"][0][2] == "canceled"
        assert state["subscriptions"][0][7] == ts(T0 + 400)
        assert (state["entitlement"]["plan_code"], state["entitlement"]["monthly_limit"]) == (
            "free",
            5,
        )

        # A late, older checkout event must not bring the deleted customer back.
        assert await deliver_ok(client, c.checkout_completed(T0 - 10)) == "processed"
        assert (await snapshot(db, c))["customer"] is None

    async def test_unhandled_event_types_are_recorded_and_acknowledged(
        self, client: httpx.AsyncClient, db: async_sessionmaker[AsyncSession]
    ) -> None:
        evt = event("customer.created", {"id": "cus_x", "object": "customer"}, T0)
        assert await deliver_ok(client, evt) == "ignored"
        assert await deliver_ok(client, evt) == "duplicate"
        assert await count(db, ProcessedEvent) == 1

    async def test_subscription_of_an_unknown_user_is_ignored(
        self, client: httpx.AsyncClient, db: async_sessionmaker[AsyncSession]
    ) -> None:
        c = Customer(period_start=PERIOD_START)
        obj = c.subscription(PRO)
        obj["metadata"] = {}
        assert (
            await deliver_ok(client, event("customer.subscription.created", obj, T0)) == "ignored"
        )
        assert await count(db, Subscription) == 0


class TestIdempotency:
    """A redelivered event changes nothing."""

    async def test_duplicate_event_is_ignored(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        new_user: Callable[..., Any],
    ) -> None:
        c = await signed_up(new_user, Customer(period_start=PERIOD_START))
        evt = c.subscription_event("created", T0, PRO)
        assert await deliver_ok(client, evt) == "processed"
        before = await snapshot(db, c)
        outbox_before = await count(db, OutboxMessage)
        resp = await deliver(client, evt)
        assert resp.status_code == 200
        assert resp.json() == {"status": "duplicate"}
        assert await snapshot(db, c) == before
        assert await count(db, OutboxMessage) == outbox_before
        assert await count(db, ProcessedEvent) == 1

    async def test_concurrent_deliveries_apply_once(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        new_user: Callable[..., Any],
    ) -> None:
        c = await signed_up(new_user, Customer(period_start=PERIOD_START))
        evt = c.subscription_event("created", T0, PRO)
        responses = await asyncio.gather(*(deliver(client, evt) for _ in range(5)))
        assert sorted(r.json()["status"] for r in responses) == ["duplicate"] * 4 + ["processed"]
        assert len(await entitlements(db, c)) == 1


class TestOrdering:
    """Events applied in any order, any number of times, end in the same state."""

    @pytest.mark.parametrize("scenario", sorted(SCENARIOS))
    async def test_shuffled_redeliveries_converge(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        new_user: Callable[..., Any],
        scenario: str,
    ) -> None:
        build = SCENARIOS[scenario]
        reference = await signed_up(new_user, Customer(period_start=PERIOD_START))
        for evt in build(reference):
            await deliver_ok(client, evt)
        expected = await snapshot(db, reference)

        for seed in (1, 7, 42, 1234, 99991):
            c = await signed_up(new_user, Customer(period_start=PERIOD_START))
            events = build(c)
            deliveries = events * 2
            random.Random(seed).shuffle(deliveries)
            statuses = [await deliver_ok(client, evt) for evt in deliveries]
            assert statuses.count("duplicate") == len(events), seed
            assert await snapshot(db, c) == expected, f"seed {seed}"

    async def test_older_event_never_overwrites_newer_state(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        new_user: Callable[..., Any],
    ) -> None:
        c = await signed_up(new_user, Customer(period_start=PERIOD_START))
        await deliver_ok(client, c.subscription_event("updated", T0 + 100, BUSINESS))
        await deliver_ok(client, c.subscription_event("created", T0, PRO, "incomplete"))
        state = await snapshot(db, c)
        assert state["subscriptions"][0][2:4] == ("active", BUSINESS)
        assert state["entitlement"]["plan_code"] == "business"
        assert len(await entitlements(db, c)) == 1

    @pytest.mark.parametrize(
        ("statuses", "winner"),
        [(("active", "past_due"), "past_due"), (("active", "canceled"), "canceled")],
    )
    @pytest.mark.parametrize("reverse", [False, True], ids=["in-order", "reversed"])
    async def test_same_second_prefers_the_more_advanced_status(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        new_user: Callable[..., Any],
        statuses: tuple[str, str],
        winner: str,
        reverse: bool,
    ) -> None:
        c = await signed_up(new_user, Customer(period_start=PERIOD_START))
        events = [c.subscription_event("updated", T0, PRO, s) for s in statuses]
        for evt in reversed(events) if reverse else events:
            await deliver_ok(client, evt)
        assert (await snapshot(db, c))["subscriptions"][0][2] == winner


class TestVerification:
    """Only correctly signed, fresh Stripe events get in; nothing else is recorded."""

    @pytest.mark.parametrize(
        ("body", "header", "code"),
        [
            ("event", lambda b: sign(b, "whsec_someone_else"), "invalid_signature"),
            ("event", lambda b: sign(b, at=int(time.time()) - 301), "invalid_signature"),
            ("event", lambda b: None, "invalid_signature"),
            ("event", lambda b: "t=nonsense", "invalid_signature"),
            ("event", lambda b: sign(b + b" "), "invalid_signature"),
            (b'{"id": "evt_1", "type": ', lambda b: sign(b), "invalid_payload"),
            (b"[1, 2, 3]", lambda b: sign(b), "invalid_payload"),
            (b'{"id": "evt_1", "type": "invoice.paid"}', lambda b: sign(b), "invalid_payload"),
            (b"\xff\xfe not utf-8", lambda b: sign(b), "invalid_payload"),
        ],
        ids=[
            "wrong-secret",
            "stale-timestamp",
            "unsigned",
            "garbled-header",
            "tampered-body",
            "malformed-json",
            "json-array",
            "not-an-event",
            "not-utf8",
        ],
    )
    async def test_untrusted_bodies_are_refused_with_400(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        body: Any,
        header: Callable[[bytes], str | None],
        code: str,
    ) -> None:
        raw = encode(Customer().subscription_event("created", T0, PRO)) if body == "event" else body
        signature = header(raw)
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["Stripe-Signature"] = signature
        resp = await client.post(WEBHOOK, content=raw, headers=headers)
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"] == code
        assert resp.json()["message"]
        assert await count(db, ProcessedEvent) == 0
        assert await count(db, Subscription) == 0

    async def test_without_a_webhook_secret_the_endpoint_does_not_exist(
        self,
        make_settings: Callable[..., BillingSettings],
        db: async_sessionmaker[AsyncSession],
    ) -> None:
        app = create_app(make_settings(stripe_webhook_secret=None))
        evt = Customer().subscription_event("created", T0, PRO)
        async with running(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://billing") as c:
                resp = await deliver(c, evt)
        assert resp.status_code == 404
        assert resp.json()["error"] == "not_found"
        assert await count(db, ProcessedEvent) == 0


class TestFailures:
    """A failing event is rolled back entirely and applies when Stripe redelivers it."""

    async def test_failure_records_nothing_and_the_redelivery_applies(
        self,
        client: httpx.AsyncClient,
        db: async_sessionmaker[AsyncSession],
        new_user: Callable[..., Any],
    ) -> None:
        c = await signed_up(new_user, Customer(period_start=PERIOD_START))
        evt = c.subscription_event("created", T0, PRO)
        async with db() as session, session.begin():
            await session.execute(
                text(
                    "CREATE FUNCTION injected_failure() RETURNS trigger LANGUAGE plpgsql AS "
                    "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$"
                )
            )
            await session.execute(
                text(
                    "CREATE TRIGGER injected_failure BEFORE INSERT OR UPDATE ON subscriptions "
                    "FOR EACH ROW EXECUTE FUNCTION injected_failure()"
                )
            )
        failed = await deliver(client, evt)
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"] == "webhook_failed"
        assert failed.headers["retry-after"]
        assert await count(db, ProcessedEvent) == 0
        assert await count(db, Subscription) == 0
        assert await entitlements(db, c) == []
        async with db() as session:
            account = await session.get(Account, c.user_id)
        assert account is not None
        assert account.stripe_customer_id is None

        async with db() as session, session.begin():
            await session.execute(text("DROP TRIGGER injected_failure ON subscriptions"))
        assert await deliver_ok(client, evt) == "processed"
        assert await count(db, ProcessedEvent) == 1
        assert (await snapshot(db, c))["entitlement"]["plan_code"] == "pro"
