"""The billing service application."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI

from billing import api, consumers
from billing.repository import PlanRepository, ProcessedEventRepository
from billing.service import next_entitlement_change, refresh_due_entitlements
from billing.settings import BillingSettings
from billing.stripe_api import StripeApi
from servicekit.db import unit_of_work
from servicekit.runtime import Runtime, create_service_app
from servicekit.settings import ServiceSettings

logger = logging.getLogger(__name__)


async def sweep_entitlements(runtime: Runtime, settings: BillingSettings) -> None:
    """Re-announce entitlements whose time is up, and prune old webhook records.

    It wakes when the next entitlement is due (a period ends, a renewal grace runs out), so
    the change is announced at that moment, and at least every `entitlement_sweep_seconds`.
    """
    while True:
        delay = settings.entitlement_sweep_seconds
        try:
            if await refresh_due_entitlements(runtime.sessionmaker, settings):
                runtime.relay.wake()
            await prune_processed_events(runtime, settings)
            due = await next_entitlement_change(runtime.sessionmaker, settings)
            if due is not None:
                delay = min(delay, max(0.0, (due - datetime.now(UTC)).total_seconds()))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("entitlement sweep paused: %s", exc)
        # A floor, so that more due work than one batch is taken on soon without spinning.
        await asyncio.sleep(max(delay, 0.05))


async def prune_processed_events(runtime: Runtime, settings: BillingSettings) -> int:
    """Forget webhook events older than the retention.

    Stripe retries a delivery for up to three days and refuses signatures older than five
    minutes, so a record older than the retention can no longer stop a duplicate; the
    subscription and invoice versions still keep an old event from undoing newer state.
    """
    cutoff = datetime.now(UTC) - timedelta(days=settings.processed_events_retention_days)
    async with unit_of_work(runtime.sessionmaker) as session:
        pruned = await ProcessedEventRepository(session).prune(cutoff)
    if pruned:
        logger.info("pruned %d processed webhook events", pruned)
    return pruned


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """Build the billing app; connections open in the lifespan."""
    cfg = settings if isinstance(settings, BillingSettings) else BillingSettings()

    async def configure_plans(runtime: Runtime) -> None:
        """Apply configured prices and limits to the seeded plans."""
        try:
            async with unit_of_work(runtime.sessionmaker) as session:
                plans = PlanRepository(session)
                await plans.configure("free", price_id=None, monthly_limit=cfg.limit_free)
                await plans.configure("pro", price_id=cfg.price_pro, monthly_limit=cfg.limit_pro)
                await plans.configure(
                    "business", price_id=cfg.price_business, monthly_limit=cfg.limit_business
                )
        except Exception:
            logger.warning("could not configure plans yet; the database is unavailable")

    async def open_stripe(runtime: Runtime) -> None:
        """Create the Stripe client (if a key is configured) and start the sweeper."""
        app.state.stripe = StripeApi(cfg) if cfg.payments_enabled else None
        if app.state.stripe is None:
            logger.warning("no Stripe secret key: checkout and portal answer 503")
        runtime.spawn(sweep_entitlements(runtime, cfg), "entitlement-sweeper")

    async def close_stripe(_: Runtime) -> None:
        """Close the Stripe client's connections."""
        if app.state.stripe is not None:
            await app.state.stripe.close()

    app = create_service_app(
        cfg,
        title="Real Staging billing",
        routers=[api.router],
        register_consumers=lambda runtime: consumers.register(runtime, cfg),
        on_startup=[configure_plans, open_stripe],
        on_shutdown=[close_stripe],
    )
    return app
