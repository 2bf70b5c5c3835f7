"""HTTP API of the billing service (reached through the gateway)."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated

from fastapi import APIRouter, Query

from billing.deps import (
    BillingDep,
    PaymentsDep,
    SettingsDep,
    StripeDep,
    StripeEventDep,
)
from billing.entitlements import EntitlementResult
from billing.errors import WebhookFailed
from billing.repository import PlanRepository
from billing.schemas import (
    BillingOut,
    CheckoutRequest,
    CompOut,
    CompRequest,
    EntitlementOut,
    InvoiceOut,
    Page,
    PlanList,
    PlanOut,
    RedirectOut,
    ResyncOut,
    SubscriptionOut,
    WebhookOut,
)
from billing.service import BillingService
from billing.webhooks import StripeWebhookService
from servicekit.db import unit_of_work
from servicekit.errors import NotFound, ServiceError
from servicekit.identity import AdminIdentity, CurrentIdentity
from servicekit.logs import request_id_var
from servicekit.pagination import encode_cursor
from servicekit.runtime import RuntimeDep, SessionDep

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1")

Limit = Annotated[int, Query(ge=1, le=100)]


def entitlement_out(result: EntitlementResult) -> EntitlementOut:
    """The entitlement as clients see it."""
    return EntitlementOut.model_validate(result)


@router.get("/plans", response_model=PlanList)
async def list_plans(session: SessionDep) -> PlanList:
    """The plans on offer (public)."""
    plans = await PlanRepository(session).list()
    return PlanList(
        items=[
            PlanOut.model_validate(p).model_copy(update={"purchasable": p.price_id is not None})
            for p in plans
        ]
    )


async def billing_out(
    billing: BillingService, user_id: uuid.UUID, payments_enabled: bool, *, admin: bool = False
) -> BillingOut:
    """A user's billing state as clients (and admins) see it."""
    view = await billing.view(user_id)
    plan = await billing.plans.get(view.entitlement.plan_code)
    assert plan is not None
    return BillingOut(
        plan=PlanOut.model_validate(plan).model_copy(
            update={"purchasable": plan.price_id is not None}
        ),
        entitlement=entitlement_out(view.entitlement),
        subscription=SubscriptionOut.model_validate(view.subscription)
        if view.subscription
        else None,
        comp=CompOut.model_validate(view.comp) if view.comp else None,
        has_billing_account=view.has_customer,
        payments_enabled=payments_enabled,
        unknown_price=view.entitlement.unknown_price if admin else None,
    )


@router.post("/billing/checkout", response_model=RedirectOut)
async def checkout(
    body: CheckoutRequest, who: CurrentIdentity, payments: PaymentsDep
) -> RedirectOut:
    """Start a Stripe Checkout for a paid plan; send the browser to the returned URL."""
    return RedirectOut(url=await payments.checkout(who, body.plan))


@router.post("/billing/portal", response_model=RedirectOut)
async def portal(who: CurrentIdentity, payments: PaymentsDep) -> RedirectOut:
    """Open Stripe's billing portal (change plan, card, cancel, invoices)."""
    return RedirectOut(url=await payments.portal(who))


@router.get("/billing/subscription", response_model=BillingOut)
async def subscription(who: CurrentIdentity, billing: BillingDep, api: StripeDep) -> BillingOut:
    """The caller's plan, entitlement and current subscription (or null)."""
    return await billing_out(billing, who.user_id, api is not None)


@router.get("/billing/invoices", response_model=Page[InvoiceOut])
async def invoices(
    who: CurrentIdentity, billing: BillingDep, cursor: str | None = None, limit: Limit = 20
) -> Page[InvoiceOut]:
    """The caller's invoices, newest first."""
    rows = await billing.invoices.list(who.user_id, cursor, limit)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(
        items=[InvoiceOut.model_validate(i) for i in rows],
        next_cursor=encode_cursor(rows[-1].created_at, rows[-1].id) if more else None,
    )


@router.post("/billing/webhooks/stripe", response_model=WebhookOut)
async def stripe_webhook(
    event: StripeEventDep, runtime: RuntimeDep, settings: SettingsDep
) -> WebhookOut:
    """Apply a signed Stripe event exactly once (public; Stripe calls it)."""
    try:
        # One transaction: the claim in processed_events, the effect and its announcements.
        async with unit_of_work(runtime.sessionmaker) as session:
            service = StripeWebhookService(session, settings, correlation_id=request_id_var.get())
            outcome = await service.handle(event)
    except ServiceError:
        raise
    except Exception as exc:
        # Rolled back, so not recorded: answering 5xx makes Stripe deliver it again.
        logger.exception("stripe event %s (%s) failed", event.get("id"), event.get("type"))
        raise WebhookFailed() from exc
    runtime.relay.wake()
    logger.info("stripe event %s (%s): %s", event["id"], event["type"], outcome)
    return WebhookOut(status=outcome)


@router.post("/billing/admin/users/{user_id}/comp", response_model=BillingOut)
async def grant_comp(
    user_id: uuid.UUID, body: CompRequest, admin: AdminIdentity, billing: BillingDep, api: StripeDep
) -> BillingOut:
    """Grant a paid plan without Stripe, forever or until a date (admin)."""
    await billing.grant_comp(user_id, body.plan, body.until, admin.user_id)
    return await billing_out(billing, user_id, api is not None, admin=True)


@router.delete("/billing/admin/users/{user_id}/comp", response_model=BillingOut)
async def revoke_comp(
    user_id: uuid.UUID, _: AdminIdentity, billing: BillingDep, api: StripeDep
) -> BillingOut:
    """Take back a granted plan (admin)."""
    await billing.revoke_comp(user_id)
    return await billing_out(billing, user_id, api is not None, admin=True)


@router.get("/billing/admin/users/{user_id}", response_model=BillingOut)
async def user_billing(
    user_id: uuid.UUID, _: AdminIdentity, billing: BillingDep, api: StripeDep
) -> BillingOut:
    """A user's billing state (admin), flagging a subscription price that matches no plan."""
    return await billing_out(billing, user_id, api is not None, admin=True)


@router.post("/billing/admin/users/{user_id}/resync", response_model=ResyncOut)
async def resync(user_id: uuid.UUID, _: AdminIdentity, payments: PaymentsDep) -> ResyncOut:
    """Fetch a user's subscriptions from Stripe and apply them (admin)."""
    count, result = await payments.resync(user_id)
    return ResyncOut(subscriptions=count, entitlement=entitlement_out(result))


@router.api_route(
    "/billing/admin/{rest:path}",
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
)
async def unknown_admin_route(rest: str, _: AdminIdentity) -> None:
    """Non-admins get 403 on the whole admin area, so it does not reveal which routes exist."""
    raise NotFound("Not Found")
