"""Which allowance is in force: billing's announcement, the renewal grace and the fallback."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from projects.allowance import (
    DEFAULT_STATUS,
    LAPSED_STATUS,
    RENEWAL_GRACE_STATUS,
    add_months,
    monthly_period,
    terms_in_force,
)
from projects.models import Entitlement

START = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)
END = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
GRACE = END + timedelta(hours=48)


def _paid(**overrides: object) -> Entitlement:
    values: dict[str, object] = {
        "user_id": uuid.uuid4(),
        "plan_code": "pro",
        "monthly_limit": 100,
        "period_start": START,
        "period_end": END,
        "status": "active",
        "renewal_grace_until": GRACE,
        "fallback_plan_code": "free",
        "fallback_limit": 5,
        "source_occurred_at": START,
    }
    return Entitlement(**(values | overrides))


class TestMonths:
    """Month arithmetic keeps the anchor's day where the month has it."""

    def test_the_31st_falls_back_to_the_last_day_and_returns(self) -> None:
        anchor = datetime(2027, 1, 31, 9, 30, tzinfo=UTC)
        assert add_months(anchor, 1) == datetime(2027, 2, 28, 9, 30, tzinfo=UTC)
        assert add_months(anchor, 2) == datetime(2027, 3, 31, 9, 30, tzinfo=UTC)
        assert add_months(anchor, 12) == datetime(2028, 1, 31, 9, 30, tzinfo=UTC)

    def test_the_period_containing_now_in_a_series(self) -> None:
        anchor = datetime(2027, 1, 31, 9, 30, tzinfo=UTC)
        now = datetime(2027, 3, 15, tzinfo=UTC)
        assert monthly_period(anchor, now) == (
            datetime(2027, 2, 28, 9, 30, tzinfo=UTC),
            datetime(2027, 3, 31, 9, 30, tzinfo=UTC),
        )
        assert monthly_period(anchor, anchor) == (anchor, add_months(anchor, 1))


class TestTermsInForce:
    """The period in force follows the subscription, with a grace before the fallback."""

    def test_nothing_announced_uses_the_default_over_the_calendar_month(self) -> None:
        now = datetime(2026, 12, 5, tzinfo=UTC)
        terms = terms_in_force(None, now, 7)
        assert (terms.plan, terms.limit, terms.status) == ("free", 7, DEFAULT_STATUS)
        assert (terms.period_start, terms.period_end) == (
            datetime(2026, 12, 1, tzinfo=UTC),
            datetime(2027, 1, 1, tzinfo=UTC),
        )

    def test_inside_the_period_the_announced_plan_holds(self) -> None:
        terms = terms_in_force(_paid(), END - timedelta(seconds=1), 5)
        assert (terms.plan, terms.limit, terms.period_start, terms.period_end) == (
            "pro",
            100,
            START,
            END,
        )
        assert terms.status == "active"

    def test_past_the_end_without_news_the_plan_holds_counted_afresh(self) -> None:
        terms = terms_in_force(_paid(), END + timedelta(hours=1), 5)
        assert (terms.plan, terms.limit, terms.status) == ("pro", 100, RENEWAL_GRACE_STATUS)
        assert (terms.period_start, terms.period_end) == (END, GRACE)
        assert terms.renewal_grace_until == GRACE

    def test_past_the_grace_the_fallback_starts_a_fresh_period(self) -> None:
        terms = terms_in_force(_paid(), GRACE + timedelta(minutes=1), 99)
        assert (terms.plan, terms.limit, terms.status) == ("free", 5, LAPSED_STATUS)
        assert (terms.period_start, terms.period_end) == (GRACE, add_months(GRACE, 1))
        later = terms_in_force(_paid(), add_months(GRACE, 1) + timedelta(days=2), 99)
        assert (later.period_start, later.period_end) == (
            add_months(GRACE, 1),
            add_months(GRACE, 2),
        )

    def test_without_a_grace_the_plan_lapses_at_the_period_end(self) -> None:
        ent = _paid(renewal_grace_until=None, fallback_plan_code=None, fallback_limit=None)
        terms = terms_in_force(ent, END + timedelta(seconds=1), 3)
        assert (terms.plan, terms.limit, terms.status) == ("free", 3, LAPSED_STATUS)
        assert terms.period_start == END

    def test_a_free_period_rolls_on_month_by_month(self) -> None:
        ent = _paid(
            plan_code="free",
            monthly_limit=5,
            status="free",
            period_start=datetime(2026, 11, 1, tzinfo=UTC),
            period_end=datetime(2026, 12, 1, tzinfo=UTC),
            renewal_grace_until=None,
        )
        terms = terms_in_force(ent, datetime(2027, 1, 3, tzinfo=UTC), 99)
        assert (terms.plan, terms.limit, terms.status) == ("free", 5, "free")
        assert (terms.period_start, terms.period_end) == (
            datetime(2027, 1, 1, tzinfo=UTC),
            datetime(2027, 2, 1, tzinfo=UTC),
        )
