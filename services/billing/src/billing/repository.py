"""Queries of the billing service; nothing here commits."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, case, delete, func, literal, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from billing.entitlements import PlanTerms
from billing.models import (
    Account,
    AnnouncedEntitlement,
    Comp,
    DeletedCustomer,
    Invoice,
    Plan,
    ProcessedEvent,
    Subscription,
)
from billing.stripe_objects import (
    INVOICE_STATUS_RANK,
    SUBSCRIPTION_STATUS_RANK,
    InvoiceState,
    SubscriptionState,
    Version,
)
from servicekit.pagination import decode_cursor


def _rank(status: Any, ranks: Mapping[str, int]) -> ColumnElement[int]:
    return case(ranks, value=status, else_=-1)


def _newer(
    table: type[Subscription] | type[Invoice], ranks: Mapping[str, int], excluded: Any
) -> ColumnElement[bool]:
    """The incoming state is newer than the stored one: (event time, status rank, event id)."""
    return or_(
        table.stripe_event_created.is_(None),
        tuple_(
            excluded.stripe_event_created,
            _rank(excluded.status, ranks),
            excluded.stripe_event_id,
        )
        > tuple_(table.stripe_event_created, _rank(table.status, ranks), table.stripe_event_id),
    )


async def _write_if_newer(
    session: AsyncSession,
    table: type[Subscription] | type[Invoice],
    ranks: Mapping[str, int],
    key: tuple[Any, str],
    row: dict[str, Any],
    values: dict[str, Any],
) -> bool:
    """Upsert a Stripe object's state unless a newer one is stored; True if it was written."""
    column, stripe_id = key
    stmt = insert(table).values(**row, **{column.key: stripe_id}, **values)
    written = await session.scalar(
        stmt.on_conflict_do_update(
            index_elements=[column],
            set_={**values, "updated_at": func.now()},
            where=_newer(table, ranks, stmt.excluded),
        ).returning(table.id)
    )
    return written is not None


class PlanRepository:
    """Plans."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def list(self) -> Sequence[Plan]:
        """Every plan, cheapest first."""
        return (await self.session.scalars(select(Plan).order_by(Plan.sort_order))).all()

    async def get(self, code: str) -> Plan | None:
        """One plan by code."""
        return (await self.session.scalars(select(Plan).where(Plan.code == code))).one_or_none()

    async def configure(self, code: str, *, price_id: str | None, monthly_limit: int) -> None:
        """Apply the configured Stripe price and allowance to a plan."""
        await self.session.execute(
            update(Plan)
            .where(Plan.code == code)
            .values(price_id=price_id, monthly_limit=monthly_limit)
        )

    async def terms(self) -> tuple[dict[str, PlanTerms], dict[str, PlanTerms]]:
        """Plans by Stripe price id and by code."""
        plans = await self.list()
        by_code = {p.code: PlanTerms(p.code, p.monthly_limit) for p in plans}
        by_price = {p.price_id: by_code[p.code] for p in plans if p.price_id}
        return by_price, by_code


class AccountRepository:
    """Accounts and their link to a Stripe customer."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, user_id: uuid.UUID, email: str | None) -> None:
        """Remember a user; a later announcement only fills a missing email."""
        stmt = insert(Account).values(user_id=user_id, email=email)
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[Account.user_id],
                set_={"email": func.coalesce(Account.email, stmt.excluded.email)},
            )
        )

    async def get(self, user_id: uuid.UUID) -> Account | None:
        """The user's account, or None."""
        return await self.session.get(Account, user_id, populate_existing=True)

    async def user_for_customer(self, customer_id: str) -> uuid.UUID | None:
        """Who a Stripe customer belongs to."""
        return await self.session.scalar(
            select(Account.user_id).where(Account.stripe_customer_id == customer_id)
        )

    async def link_customer(self, user_id: uuid.UUID, customer_id: str) -> bool:
        """Link a customer to a user who has none; False if the user already has one."""
        # The WHERE makes two racing first checkouts agree: only the first link sticks.
        stmt = insert(Account).values(user_id=user_id, stripe_customer_id=customer_id)
        linked = await self.session.scalar(
            stmt.on_conflict_do_update(
                index_elements=[Account.user_id],
                set_={"stripe_customer_id": stmt.excluded.stripe_customer_id},
                where=Account.stripe_customer_id.is_(None),
            ).returning(Account.user_id)
        )
        return linked is not None

    async def unlink_customer(self, customer_id: str) -> uuid.UUID | None:
        """Forget a customer Stripe deleted; the user it belonged to, if any."""
        return await self.session.scalar(
            update(Account)
            .where(Account.stripe_customer_id == customer_id)
            .values(stripe_customer_id=None)
            .returning(Account.user_id)
        )


class DeletedCustomerRepository:
    """Tombstones of customers deleted in Stripe."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, customer_id: str, user_id: uuid.UUID | None) -> None:
        """Remember that a customer is gone for good."""
        stmt = insert(DeletedCustomer).values(stripe_customer_id=customer_id, user_id=user_id)
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[DeletedCustomer.stripe_customer_id],
                set_={"user_id": func.coalesce(DeletedCustomer.user_id, stmt.excluded.user_id)},
            )
        )

    async def get(self, customer_id: str) -> DeletedCustomer | None:
        """The tombstone of a customer, if it was deleted."""
        return await self.session.get(DeletedCustomer, customer_id, populate_existing=True)

    async def count_for(self, user_id: uuid.UUID) -> int:
        """How many of the user's customers were deleted (a generation for idempotency keys)."""
        count = await self.session.scalar(
            select(func.count()).where(DeletedCustomer.user_id == user_id)
        )
        return int(count or 0)


class SubscriptionRepository:
    """Subscriptions, keyed by their Stripe id."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def apply(self, user_id: uuid.UUID, state: SubscriptionState, version: Version) -> bool:
        """Upsert a subscription unless a newer state is stored; True if it was written."""
        values = {
            "status": state.status,
            "price_id": state.price_id,
            "current_period_start": state.current_period_start,
            "current_period_end": state.current_period_end,
            "cancel_at": state.cancel_at,
            "canceled_at": state.canceled_at,
            "cancel_at_period_end": state.cancel_at_period_end,
            "stripe_customer_id": state.stripe_customer_id,
            "stripe_event_created": version.created,
            "stripe_event_id": version.event_id,
        }
        return await _write_if_newer(
            self.session,
            Subscription,
            SUBSCRIPTION_STATUS_RANK,
            (Subscription.stripe_subscription_id, state.stripe_subscription_id),
            {"user_id": user_id},
            values,
        )

    async def user_for(self, stripe_subscription_id: str) -> uuid.UUID | None:
        """Who a subscription belongs to, if it is known."""
        return await self.session.scalar(
            select(Subscription.user_id).where(
                Subscription.stripe_subscription_id == stripe_subscription_id
            )
        )

    async def live_for(self, user_id: uuid.UUID) -> Sequence[Subscription]:
        """The user's subscriptions, except those of customers deleted in Stripe."""
        deleted = select(DeletedCustomer.stripe_customer_id).where(
            DeletedCustomer.stripe_customer_id == Subscription.stripe_customer_id
        )
        stmt = (
            select(Subscription)
            .where(Subscription.user_id == user_id, ~deleted.exists())
            .order_by(Subscription.updated_at.desc(), Subscription.id.desc())
        )
        return (await self.session.scalars(stmt)).all()

    async def advance_period(
        self, stripe_subscription_id: str, start: datetime, end: datetime
    ) -> bool:
        """Move a paid-up subscription's period forward to one an invoice paid for.

        The renewal's `invoice.paid` can arrive before (or without) the
        `customer.subscription.updated` that carries the new period. Only the period moves,
        and only forward; the version markers stay, so the subscription event still applies.
        """
        moved = await self.session.scalar(
            update(Subscription)
            .where(
                Subscription.stripe_subscription_id == stripe_subscription_id,
                Subscription.status.in_(("active", "trialing", "past_due")),
                Subscription.current_period_end < end,
            )
            .values(current_period_start=start, current_period_end=end, updated_at=func.now())
            .returning(Subscription.id)
        )
        return moved is not None

    async def count_unknown_prices(self) -> int:
        """Paid-up subscriptions (active, trialing, past due) whose price matches no plan."""
        known = select(Plan.price_id).where(Plan.price_id.is_not(None))
        count = await self.session.scalar(
            select(func.count()).where(
                Subscription.status.in_(("active", "trialing", "past_due")),
                or_(Subscription.price_id.is_(None), Subscription.price_id.not_in(known)),
            )
        )
        return int(count or 0)

    async def get(self, stripe_subscription_id: str) -> Subscription | None:
        """One subscription by its Stripe id."""
        stmt = select(Subscription).where(
            Subscription.stripe_subscription_id == stripe_subscription_id
        )
        return (await self.session.scalars(stmt)).one_or_none()


class InvoiceRepository:
    """Invoices, keyed by their Stripe id."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def apply(self, user_id: uuid.UUID, state: InvoiceState, version: Version) -> bool:
        """Upsert an invoice unless a newer state is stored; True if it was written."""
        values = {
            "stripe_subscription_id": state.stripe_subscription_id,
            "stripe_customer_id": state.stripe_customer_id,
            "status": state.status,
            "amount_due": state.amount_due,
            "amount_paid": state.amount_paid,
            "currency": state.currency,
            "invoice_number": state.invoice_number,
            "hosted_invoice_url": state.hosted_invoice_url,
            "stripe_event_created": version.created,
            "stripe_event_id": version.event_id,
        }
        return await _write_if_newer(
            self.session,
            Invoice,
            INVOICE_STATUS_RANK,
            (Invoice.stripe_invoice_id, state.stripe_invoice_id),
            {"user_id": user_id},
            values,
        )

    async def list(self, user_id: uuid.UUID, cursor: str | None, limit: int) -> Sequence[Invoice]:
        """Newest first, `limit + 1` rows so the caller knows whether more follow."""
        stmt = select(Invoice).where(Invoice.user_id == user_id)
        if cursor:
            created, row_id = decode_cursor(cursor)
            stmt = stmt.where(tuple_(Invoice.created_at, Invoice.id) < tuple_(created, row_id))
        stmt = stmt.order_by(Invoice.created_at.desc(), Invoice.id.desc()).limit(limit + 1)
        return (await self.session.scalars(stmt)).all()


class ProcessedEventRepository:
    """Stripe events already applied."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record(self, event_id: str, event_type: str, payload: dict[str, Any]) -> bool:
        """Claim an event before applying it; False if it was already applied."""
        # Insert-first: a concurrent delivery of the same event waits on the unique index and
        # then sees the conflict, so the effect happens once.
        claimed = await self.session.scalar(
            insert(ProcessedEvent)
            .values(stripe_event_id=event_id, type=event_type, payload=payload)
            .on_conflict_do_nothing(index_elements=[ProcessedEvent.stripe_event_id])
            .returning(ProcessedEvent.id)
        )
        return claimed is not None

    async def prune(self, received_before: datetime) -> int:
        """Forget events received before a moment; how many were forgotten."""
        result = await self.session.execute(
            delete(ProcessedEvent).where(ProcessedEvent.received_at < received_before)
        )
        return int(getattr(result, "rowcount", 0) or 0)


class CompRepository:
    """Plans granted by admins."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: uuid.UUID) -> Comp | None:
        """The user's comp, if any."""
        return await self.session.get(Comp, user_id, populate_existing=True)

    async def grant(
        self, user_id: uuid.UUID, plan_code: str, until: datetime | None, by: uuid.UUID
    ) -> None:
        """Grant (or replace) a comp."""
        stmt = insert(Comp).values(user_id=user_id, plan_code=plan_code, until=until, granted_by=by)
        await self.session.execute(
            stmt.on_conflict_do_update(
                index_elements=[Comp.user_id],
                set_={
                    "plan_code": stmt.excluded.plan_code,
                    "until": stmt.excluded.until,
                    "granted_by": stmt.excluded.granted_by,
                    "updated_at": func.now(),
                },
            )
        )

    async def revoke(self, user_id: uuid.UUID) -> bool:
        """Remove a comp; False if there was none."""
        gone = await self.session.scalar(
            delete(Comp).where(Comp.user_id == user_id).returning(Comp.user_id)
        )
        return gone is not None


class EntitlementRepository:
    """The last announced entitlement of each user."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock(self, user_id: uuid.UUID) -> AnnouncedEntitlement:
        """The user's row, created if missing, locked until the transaction ends."""
        # Announcements for one user are computed one at a time under this lock, so the
        # newest announcement always reflects every committed change before it.
        await self.session.execute(
            insert(AnnouncedEntitlement).values(user_id=user_id).on_conflict_do_nothing()
        )
        stmt = (
            select(AnnouncedEntitlement)
            .where(AnnouncedEntitlement.user_id == user_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return (await self.session.scalars(stmt)).one()

    async def get(self, user_id: uuid.UUID) -> AnnouncedEntitlement | None:
        """The user's last announced entitlement, unlocked."""
        return await self.session.get(AnnouncedEntitlement, user_id, populate_existing=True)

    async def next_due(self) -> datetime | None:
        """The earliest moment at which some entitlement changes by itself."""
        return await self.session.scalar(select(func.min(AnnouncedEntitlement.changes_at)))

    async def due(self, now: datetime, limit: int) -> Sequence[uuid.UUID]:
        """Users whose entitlement may have changed by the passing of time (locked)."""
        stmt = (
            select(AnnouncedEntitlement.user_id)
            .where(AnnouncedEntitlement.changes_at <= literal(now))
            .order_by(AnnouncedEntitlement.changes_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return (await self.session.scalars(stmt)).all()
