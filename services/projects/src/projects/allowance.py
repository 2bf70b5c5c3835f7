"""Which allowance is in force at an instant: pure rules over billing's last announcement."""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime

from projects.models import Entitlement

FREE_PLAN = "free"
DEFAULT_STATUS = "default"
"""Status while billing has announced nothing for the user yet."""
RENEWAL_GRACE_STATUS = "renewal_grace"
"""Status of a paid plan past its period end, kept while billing's renewal is awaited."""
LAPSED_STATUS = "lapsed"
"""Status once a paid plan ran past its renewal grace unrenewed: the fallback plan applies."""


@dataclass(frozen=True)
class Terms:
    """The plan, its limit and the period whose charges count against it."""

    plan: str
    limit: int
    period_start: datetime
    period_end: datetime
    status: str
    renewal_grace_until: datetime | None = None


def add_months(moment: datetime, months: int) -> datetime:
    """The same day and time `months` later, on the month's last day if that day is missing."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def monthly_period(anchor: datetime, now: datetime) -> tuple[datetime, datetime]:
    """The month-long period, in a series starting at `anchor`, that contains `now`."""
    months = max((now.year - anchor.year) * 12 + now.month - anchor.month, 0)
    # Counted from the anchor each time, so a series started on the 31st keeps the 31st.
    while months > 0 and add_months(anchor, months) > now:
        months -= 1
    while add_months(anchor, months + 1) <= now:
        months += 1
    return add_months(anchor, months), add_months(anchor, months + 1)


def calendar_month(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month containing `now`."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return start, add_months(start, 1)


def terms_in_force(ent: Entitlement | None, now: datetime, default_limit: int) -> Terms:
    """The allowance in force at `now` from billing's last announcement.

    - Nothing announced yet: `default_limit` over the calendar month.
    - Inside the announced period: that plan and period.
    - Past the end of a paid period with no news: the plan holds until `renewal_grace_until`,
      its allowance counted afresh from the old period end (Stripe's renewal can be late).
    - Past that (or past a period with no grace): the fallback plan, in month-long periods
      starting at the lapse; a free plan simply rolls on month by month.
    """
    if (
        ent is None
        or ent.source_occurred_at is None
        or ent.period_start is None
        or ent.period_end is None
    ):
        start, end = calendar_month(now)
        return Terms(FREE_PLAN, default_limit, start, end, DEFAULT_STATUS)
    if now < ent.period_end:
        return Terms(ent.plan_code, ent.monthly_limit, ent.period_start, ent.period_end, ent.status)
    grace = ent.renewal_grace_until
    if grace is not None and grace > ent.period_end:
        if now < grace:
            return Terms(
                ent.plan_code,
                ent.monthly_limit,
                ent.period_end,
                grace,
                RENEWAL_GRACE_STATUS,
                renewal_grace_until=grace,
            )
        lapse = grace
    else:
        lapse = ent.period_end
    start, end = monthly_period(lapse, now)
    if ent.plan_code == FREE_PLAN:
        return Terms(FREE_PLAN, ent.monthly_limit, start, end, ent.status)
    plan = ent.fallback_plan_code or FREE_PLAN
    limit = ent.fallback_limit if ent.fallback_limit is not None else default_limit
    return Terms(plan, limit, start, end, LAPSED_STATUS)


def is_paid(plan_code: str) -> bool:
    """Whether a plan is one a customer pays for (or was granted in place of paying)."""
    return plan_code != FREE_PLAN
