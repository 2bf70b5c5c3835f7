"""Which plan a user is entitled to at a given instant: pure rules, no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

ACTIVE_STATUSES = frozenset({"active", "trialing"})
SOURCE_RANK = {"subscription": 2, "comp": 1, "free": 0}
STATUS_RANK = {"active": 3, "trialing": 2, "past_due": 1, "canceled": 0}


@dataclass(frozen=True)
class PlanTerms:
    """A plan's code and monthly allowance."""

    code: str
    monthly_limit: int


@dataclass(frozen=True)
class SubscriptionFacts:
    """What the rules need to know about one Stripe subscription."""

    stripe_subscription_id: str
    status: str
    price_id: str | None
    current_period_start: datetime | None = None
    current_period_end: datetime | None = None
    cancel_at: datetime | None = None
    cancel_at_period_end: bool = False


@dataclass(frozen=True)
class CompFacts:
    """A plan granted by an admin, optionally until a date."""

    plan_code: str
    until: datetime | None = None


@dataclass(frozen=True)
class EntitlementResult:
    """The plan in force, its allowance period, and when that could change by itself."""

    plan_code: str
    monthly_limit: int
    status: str
    source: str
    period_start: datetime
    period_end: datetime
    stripe_subscription_id: str | None = None
    changes_at: datetime | None = None

    def announces_same(self, other: EntitlementResult) -> bool:
        """Whether announcing `other` after this one would tell consumers nothing new."""
        return (
            self.plan_code,
            self.monthly_limit,
            self.status,
            self.period_start,
            self.period_end,
        ) == (
            other.plan_code,
            other.monthly_limit,
            other.status,
            other.period_start,
            other.period_end,
        )


def calendar_month(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month containing `now` (the free plan's allowance period)."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def _earliest(*moments: datetime | None) -> datetime | None:
    present = [m for m in moments if m is not None]
    return min(present) if present else None


def _subscription_candidate(
    sub: SubscriptionFacts,
    plan: PlanTerms,
    *,
    grace: timedelta,
    now: datetime,
) -> tuple[EntitlementResult | None, datetime | None]:
    """The entitlement one subscription grants now, and the instant that grant ends."""
    month_start, month_end = calendar_month(now)
    start = sub.current_period_start or month_start
    end = sub.current_period_end or month_end
    if sub.status in ACTIVE_STATUSES:
        cutoff = _earliest(end if sub.cancel_at_period_end else None, sub.cancel_at)
    elif sub.status == "past_due":
        # Stripe keeps retrying the payment: keep the plan for a grace period past the term.
        cutoff = _earliest(end + grace, sub.cancel_at)
        end = end + grace
    elif sub.status == "canceled" and sub.cancel_at_period_end and sub.current_period_end:
        # Canceled at period end: what was paid for stays usable until the term is over.
        cutoff = sub.current_period_end
    else:
        return None, None
    if cutoff is not None and now >= cutoff:
        return None, None
    result = EntitlementResult(
        plan_code=plan.code,
        monthly_limit=plan.monthly_limit,
        status=sub.status,
        source="subscription",
        period_start=start,
        period_end=min(end, cutoff) if cutoff is not None else end,
        stripe_subscription_id=sub.stripe_subscription_id,
    )
    return result, cutoff


def compute_entitlement(
    *,
    subscriptions: Iterable[SubscriptionFacts],
    comp: CompFacts | None,
    plans_by_price: Mapping[str, PlanTerms],
    plans_by_code: Mapping[str, PlanTerms],
    free: PlanTerms,
    grace: timedelta,
    now: datetime,
) -> EntitlementResult:
    """The best plan any subscription or comp grants at `now`; the free plan otherwise."""
    month_start, month_end = calendar_month(now)
    candidates: list[EntitlementResult] = []
    cutoffs: list[datetime] = []
    for sub in subscriptions:
        plan = plans_by_price.get(sub.price_id or "")
        if plan is None:
            continue
        candidate, cutoff = _subscription_candidate(sub, plan, grace=grace, now=now)
        if candidate is not None:
            candidates.append(candidate)
            if cutoff is not None:
                cutoffs.append(cutoff)
    if comp is not None and (comp.until is None or now < comp.until):
        plan = plans_by_code.get(comp.plan_code)
        if plan is not None:
            candidates.append(
                EntitlementResult(
                    plan_code=plan.code,
                    monthly_limit=plan.monthly_limit,
                    status="comped",
                    source="comp",
                    period_start=month_start,
                    period_end=_earliest(month_end, comp.until) or month_end,
                )
            )
            cutoffs.append(_earliest(month_end, comp.until) or month_end)
    if not candidates:
        return EntitlementResult(
            plan_code=free.code,
            monthly_limit=free.monthly_limit,
            status="free",
            source="free",
            period_start=month_start,
            period_end=month_end,
            changes_at=month_end,
        )
    best = max(
        candidates,
        key=lambda c: (
            c.monthly_limit,
            SOURCE_RANK[c.source],
            STATUS_RANK.get(c.status, 0),
            c.stripe_subscription_id or "",
        ),
    )
    changes_at = min((c for c in cutoffs if c > now), default=None)
    return EntitlementResult(
        plan_code=best.plan_code,
        monthly_limit=best.monthly_limit,
        status=best.status,
        source=best.source,
        period_start=best.period_start,
        period_end=best.period_end,
        stripe_subscription_id=best.stripe_subscription_id,
        changes_at=changes_at,
    )
