"""Response bodies of the billing API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PlanOut(BaseModel):
    """A plan as the public sees it."""

    model_config = ConfigDict(from_attributes=True)

    code: str
    name: str
    monthly_limit: int
    price_cents: int
    currency: str
    purchasable: bool = False


class PlanList(BaseModel):
    """Every plan, cheapest first."""

    items: list[PlanOut]
