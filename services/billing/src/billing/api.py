"""HTTP API of the billing service."""

from __future__ import annotations

from fastapi import APIRouter

from billing.repository import PlanRepository
from billing.schemas import PlanList, PlanOut
from servicekit.runtime import SessionDep

router = APIRouter(prefix="/v1")


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
