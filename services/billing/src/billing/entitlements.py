"""Which plan a user is entitled to at a given instant: pure rules, no I/O."""

from __future__ import annotations

import calendar
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

ACTIVE_STATUSES = frozenset({"active", "trialing"})
GRANTING_STATUSES = ACTIVE_STATUSES | {"past_due"}
"""A subscription in one of these states is paid up (or being retried) and grants its plan."""
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
    canceled_at: datetime | None = None


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
    renewal_grace_until: datetime | None = None
    """If no renewal is heard by `period_end`, the plan holds until then (from a fresh period)."""
    unknown_price: str | None = field(default=None, compare=False)
    """The price of a paid-up subscription that matches no plan (loud: an operator must act)."""

    def announces_same(self, other: EntitlementResult) -> bool:
        """Whether announcing `other` after this one would tell consumers nothing new."""
        return (
            self.plan_code,
            self.monthly_limit,
            self.status,
            self.period_start,
            self.period_end,
            self.renewal_grace_until,
        ) == (
            other.plan_code,
            other.monthly_limit,
            other.status,
            other.period_start,
            other.period_end,
            other.renewal_grace_until,
        )


def calendar_month(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month containing `now` (the free plan's period for who never paid)."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def add_months(moment: datetime, months: int) -> datetime:
    """The same day and time `months` later, on the month's last day if it is shorter."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def monthly_period(anchor: datetime, now: datetime) -> tuple[datetime, datetime]:
    """The month-long period, counted from `anchor`, that contains `now` (`now >= anchor`)."""
    months = (now.year - anchor.year) * 12 + now.month - anchor.month
    start = add_months(anchor, months)
    if start > now:
        months -= 1
        start = add_months(anchor, months)
    return start, add_months(anchor, months + 1)


def _earliest(*moments: datetime | None) -> datetime | None:
    present = [m for m in moments if m is not None]
    return min(present) if present else None


@dataclass(frozen=True)
class _Grant:
    """What one subscription grants now, when that changes by itself, and when it ended."""

    entitlement: EntitlementResult | None = None
    boundaries: tuple[datetime, ...] = ()
    ended_at: datetime | None = None


def _subscription_grant(
    sub: SubscriptionFacts,
    plan: PlanTerms,
    *,
    grace: timedelta,
    renewal_grace: timedelta,
    now: datetime,
) -> _Grant:
    """The entitlement one subscription grants at `now`, its boundaries, and its end."""
    month_start, month_end = calendar_month(now)
    start = sub.current_period_start or month_start
    end = sub.current_period_end or month_end
    renewal_grace_until: datetime | None = None
    boundaries: tuple[datetime, ...]
    if sub.status in ACTIVE_STATUSES:
        stop = _earliest(end if sub.cancel_at_period_end else None, sub.cancel_at)
        renews = stop is None or stop > end
        # Stripe's renewal webhook can arrive hours (or days) after `period_end`: a renewing
        # subscription keeps its plan for the renewal grace, in a fresh period from the old end.
        cutoff = _earliest(stop, end + renewal_grace if renews else None) or end
        if now >= cutoff:
            return _Grant(ended_at=cutoff)
        if renews and now >= end:
            start, end, boundaries = end, cutoff, (cutoff,)
            renewal_grace_until = cutoff
        else:
            end = min(end, cutoff)
            boundaries = (end, cutoff)
            renewal_grace_until = cutoff if renews else None
    elif sub.status == "past_due":
        # Stripe keeps retrying the payment: keep the plan for a grace period past the term.
        cutoff = _earliest(end + grace, sub.cancel_at) or end + grace
        if now >= cutoff:
            return _Grant(ended_at=cutoff)
        end, boundaries = cutoff, (cutoff,)
    elif sub.status == "canceled" and sub.cancel_at_period_end and sub.current_period_end:
        # Canceled at period end: what was paid for stays usable until the term is over.
        if now >= end:
            return _Grant(ended_at=end)
        boundaries = (end,)
    elif sub.status == "canceled":
        return _Grant(ended_at=sub.canceled_at or sub.current_period_end)
    elif sub.status in {"unpaid", "paused"}:
        return _Grant(ended_at=sub.current_period_end)
    else:
        return _Grant()
    entitlement = EntitlementResult(
        plan_code=plan.code,
        monthly_limit=plan.monthly_limit,
        status=sub.status,
        source="subscription",
        period_start=start,
        period_end=end,
        stripe_subscription_id=sub.stripe_subscription_id,
        renewal_grace_until=renewal_grace_until,
    )
    return _Grant(entitlement, boundaries)


def compute_entitlement(
    *,
    subscriptions: Iterable[SubscriptionFacts],
    comp: CompFacts | None,
    plans_by_price: Mapping[str, PlanTerms],
    plans_by_code: Mapping[str, PlanTerms],
    free: PlanTerms,
    grace: timedelta,
    renewal_grace: timedelta,
    now: datetime,
    previous: PlanTerms | None = None,
) -> EntitlementResult:
    """The best plan any subscription or comp grants at `now`; the free plan otherwise.

    `previous` is the plan last announced: a paid-up subscription whose price matches no plan
    keeps it (flagged in `unknown_price`) rather than dropping a paying customer to free.
    """
    candidates: list[EntitlementResult] = []
    boundaries: list[datetime] = []
    ended: list[datetime] = []
    unknown_price: str | None = None
    for sub in subscriptions:
        plan = plans_by_price.get(sub.price_id or "")
        if plan is None:
            if sub.status in GRANTING_STATUSES:
                unknown_price = unknown_price or sub.price_id or "missing"
            if previous is None or previous.code == free.code:
                continue
            plan = previous
        grant = _subscription_grant(sub, plan, grace=grace, renewal_grace=renewal_grace, now=now)
        if grant.entitlement is not None:
            candidates.append(grant.entitlement)
        boundaries.extend(grant.boundaries)
        if grant.ended_at is not None:
            ended.append(grant.ended_at)
    if comp is not None:
        comp_plan = plans_by_code.get(comp.plan_code)
        if comp_plan is not None and (comp.until is None or now < comp.until):
            month_start, month_end = calendar_month(now)
            until = _earliest(month_end, comp.until) or month_end
            candidates.append(
                EntitlementResult(
                    plan_code=comp_plan.code,
                    monthly_limit=comp_plan.monthly_limit,
                    status="comped",
                    source="comp",
                    period_start=month_start,
                    period_end=until,
                )
            )
            boundaries.append(until)
        elif comp_plan is not None and comp.until is not None:
            ended.append(comp.until)
    if not candidates:
        # Once a paid plan ended, the free allowance is counted from that moment (month by
        # month), never over a calendar month that includes what was used under the paid plan.
        lapsed = max((e for e in ended if e <= now), default=None)
        start, end = monthly_period(lapsed, now) if lapsed else calendar_month(now)
        return EntitlementResult(
            plan_code=free.code,
            monthly_limit=free.monthly_limit,
            status="free",
            source="free",
            period_start=start,
            period_end=end,
            changes_at=min([end, *(b for b in boundaries if b > now)]),
            unknown_price=unknown_price,
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
    return EntitlementResult(
        plan_code=best.plan_code,
        monthly_limit=best.monthly_limit,
        status=best.status,
        source=best.source,
        period_start=best.period_start,
        period_end=best.period_end,
        stripe_subscription_id=best.stripe_subscription_id,
        changes_at=min((b for b in boundaries if b > now), default=None),
        renewal_grace_until=best.renewal_grace_until,
        unknown_price=unknown_price,
    )
