"""The billing service application."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from billing import api, consumers
from billing.repository import PlanRepository
from billing.settings import BillingSettings
from servicekit.db import unit_of_work
from servicekit.runtime import Runtime, create_service_app
from servicekit.settings import ServiceSettings

logger = logging.getLogger(__name__)


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

    return create_service_app(
        cfg,
        title="Real Staging billing",
        routers=[api.router],
        register_consumers=consumers.register,
        on_startup=[configure_plans],
    )
