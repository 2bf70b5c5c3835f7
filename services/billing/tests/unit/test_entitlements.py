"""The entitlement rules: which plan is in force, for which period, until when."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from billing.entitlements import (
    CompFacts,
    EntitlementResult,
    PlanTerms,
    SubscriptionFacts,
    add_months,
    calendar_month,
    compute_entitlement,
    monthly_period,
)

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
START = NOW - timedelta(days=10)
END = NOW + timedelta(days=20)
GRACE = timedelta(days=7)
RENEWAL_GRACE = timedelta(hours=48)
FREE = PlanTerms("free", 5)
PRO = PlanTerms("pro", 100)
BUSINESS = PlanTerms("business", 500)
BY_PRICE = {"price_pro": PRO, "price_business": BUSINESS}
BY_CODE = {"free": FREE, "pro": PRO, "business": BUSINESS}


def sub(
    status: str = "active",
    price: str | None = "price_pro",
    *,
    start: datetime | None = START,
    end: datetime | None = END,
    cancel_at_period_end: bool = False,
    cancel_at: datetime | None = None,
    sub_id: str = "sub_1",
) -> SubscriptionFacts:
    """A subscription with sensible defaults."""
    return SubscriptionFacts(
        stripe_subscription_id=sub_id,
        status=status,
        price_id=price,
        current_period_start=start,
        current_period_end=end,
        cancel_at=cancel_at,
        cancel_at_period_end=cancel_at_period_end,
    )


def replace_sub(facts: SubscriptionFacts, **changes: Any) -> SubscriptionFacts:
    """A copy of a subscription with some facts changed."""
    return dataclasses.replace(facts, **changes)


def compute(
    *subs: SubscriptionFacts,
    comp: CompFacts | None = None,
    now: datetime = NOW,
    previous: PlanTerms | None = None,
) -> EntitlementResult:
    """The rules with this module's plans and grace period."""
    return compute_entitlement(
        subscriptions=subs,
        comp=comp,
        plans_by_price=BY_PRICE,
        plans_by_code=BY_CODE,
        free=FREE,
        grace=GRACE,
        renewal_grace=RENEWAL_GRACE,
        now=now,
        previous=previous,
    )


class TestStatuses:
    """Each Stripe status maps to a plan or to free."""

    @pytest.mark.parametrize("status", ["active", "trialing"])
    def test_active_and_trialing_grant_the_price_plan(self, status: str) -> None:
        result = compute(sub(status, "price_business"))
        assert (result.plan_code, result.monthly_limit, result.status) == ("business", 500, status)
        assert (result.period_start, result.period_end) == (START, END)
        assert result.source == "subscription"
        assert result.stripe_subscription_id == "sub_1"

    @pytest.mark.parametrize(
        "status", ["canceled", "unpaid", "incomplete", "incomplete_expired", "paused"]
    )
    def test_ended_or_unpaid_subscriptions_fall_back_to_free(self, status: str) -> None:
        result = compute(sub(status))
        month_start, month_end = calendar_month(NOW)
        assert (result.plan_code, result.monthly_limit, result.status) == ("free", 5, "free")
        assert (result.period_start, result.period_end) == (month_start, month_end)
        assert result.changes_at == month_end

    def test_no_subscription_is_the_free_plan_for_the_calendar_month(self) -> None:
        result = compute()
        assert result.plan_code == "free"
        assert result.period_start == datetime(2026, 11, 1, tzinfo=UTC)
        assert result.period_end == datetime(2026, 12, 1, tzinfo=UTC)

    def test_unknown_price_without_a_previous_plan_is_free_and_flagged(self) -> None:
        result = compute(sub(price="price_from_another_product"))
        assert (result.plan_code, result.unknown_price) == ("free", "price_from_another_product")

    def test_unknown_price_keeps_the_previous_plan_for_the_subscription_period(self) -> None:
        result = compute(sub(price="price_from_another_product"), previous=BUSINESS)
        assert (result.plan_code, result.monthly_limit, result.source) == (
            "business",
            500,
            "subscription",
        )
        assert (result.period_start, result.period_end) == (START, END)
        assert result.unknown_price == "price_from_another_product"

    def test_a_missing_price_is_flagged_too(self) -> None:
        assert compute(sub(price=None), previous=PRO).unknown_price == "missing"

    def test_an_ended_subscription_with_an_unknown_price_is_not_flagged(self) -> None:
        assert compute(sub("canceled", price="price_x"), previous=PRO).unknown_price is None

    def test_a_previous_free_plan_stays_free(self) -> None:
        assert compute(sub(price="price_x"), previous=FREE).plan_code == "free"

    def test_best_of_several_subscriptions_wins(self) -> None:
        result = compute(
            sub("active", "price_pro", sub_id="sub_a"),
            sub("past_due", "price_business", sub_id="sub_b"),
            sub("canceled", "price_business", sub_id="sub_c"),
        )
        assert (result.plan_code, result.stripe_subscription_id) == ("business", "sub_b")


class TestPastDue:
    """A failed renewal keeps the plan for a grace period past the term."""

    def test_past_due_within_the_term_keeps_the_plan_and_stretches_the_period(self) -> None:
        result = compute(sub("past_due"))
        assert (result.plan_code, result.status) == ("pro", "past_due")
        assert result.period_end == END + GRACE
        assert result.changes_at == END + GRACE

    def test_past_due_after_the_term_but_within_grace_keeps_the_plan(self) -> None:
        result = compute(sub("past_due"), now=END + GRACE - timedelta(minutes=1))
        assert result.plan_code == "pro"

    def test_past_due_after_grace_is_free(self) -> None:
        assert compute(sub("past_due"), now=END + GRACE).plan_code == "free"


class TestCancelAtPeriodEnd:
    """What was paid for stays usable until the term ends."""

    def test_active_canceling_at_period_end_keeps_the_plan_until_then(self) -> None:
        result = compute(sub("active", cancel_at_period_end=True))
        assert (result.plan_code, result.period_end, result.changes_at) == ("pro", END, END)

    def test_canceled_at_period_end_keeps_the_plan_until_the_term_ends(self) -> None:
        result = compute(sub("canceled", cancel_at_period_end=True))
        assert (result.plan_code, result.status, result.period_end) == ("pro", "canceled", END)

    def test_after_the_term_it_is_free(self) -> None:
        assert compute(sub("active", cancel_at_period_end=True), now=END).plan_code == "free"
        assert compute(sub("canceled", cancel_at_period_end=True), now=END).plan_code == "free"

    def test_cancel_at_a_date_ends_the_plan_then(self) -> None:
        cancel_at = NOW + timedelta(days=3)
        result = compute(sub("active", cancel_at=cancel_at))
        assert (result.plan_code, result.period_end, result.changes_at) == (
            "pro",
            cancel_at,
            cancel_at,
        )
        assert compute(sub("active", cancel_at=cancel_at), now=cancel_at).plan_code == "free"


class TestComps:
    """A plan granted by an admin overrides a smaller one, until it ends."""

    def test_comp_grants_its_plan_for_the_calendar_month(self) -> None:
        result = compute(comp=CompFacts("business"))
        assert (result.plan_code, result.status, result.source) == ("business", "comped", "comp")
        assert result.period_end == datetime(2026, 12, 1, tzinfo=UTC)
        assert result.changes_at == datetime(2026, 12, 1, tzinfo=UTC)

    def test_comp_overrides_a_smaller_subscription(self) -> None:
        result = compute(sub("active", "price_pro"), comp=CompFacts("business"))
        assert (result.plan_code, result.source) == ("business", "comp")

    def test_subscription_wins_over_an_equal_comp(self) -> None:
        result = compute(sub("active", "price_pro"), comp=CompFacts("pro"))
        assert (result.source, result.period_end) == ("subscription", END)

    def test_comp_until_a_date_ends_then(self) -> None:
        until = NOW + timedelta(days=2)
        result = compute(comp=CompFacts("pro", until))
        assert (result.plan_code, result.period_end, result.changes_at) == ("pro", until, until)
        assert compute(comp=CompFacts("pro", until), now=until).plan_code == "free"

    def test_comp_keeps_a_user_whose_subscription_lapsed(self) -> None:
        result = compute(sub("unpaid", "price_business"), comp=CompFacts("pro"))
        assert result.plan_code == "pro"


class TestAnnouncements:
    """Two results announce the same thing only if consumers would see no difference."""

    def test_same_plan_and_period_is_not_news(self) -> None:
        a = compute(sub("active"))
        b = compute(sub("active"), now=NOW + timedelta(hours=1))
        assert a.announces_same(b)

    def test_a_status_change_is_news(self) -> None:
        assert not compute(sub("active")).announces_same(compute(sub("past_due")))


class TestRenewal:
    """A renewing plan holds past `period_end` for the renewal grace, then falls to free."""

    def test_within_the_term_the_grace_is_announced_and_the_end_is_a_boundary(self) -> None:
        result = compute(sub("active"))
        assert (result.period_start, result.period_end) == (START, END)
        assert result.renewal_grace_until == END + RENEWAL_GRACE
        assert result.changes_at == END

    @pytest.mark.parametrize("status", ["active", "trialing"])
    def test_after_the_term_without_renewal_the_plan_holds_in_a_fresh_period(
        self, status: str
    ) -> None:
        result = compute(sub(status), now=END + timedelta(hours=1))
        assert (result.plan_code, result.monthly_limit, result.status) == ("pro", 100, status)
        assert (result.period_start, result.period_end) == (END, END + RENEWAL_GRACE)
        assert result.renewal_grace_until == END + RENEWAL_GRACE
        assert result.changes_at == END + RENEWAL_GRACE

    def test_after_the_grace_it_is_free_from_the_lapse(self) -> None:
        lapse = END + RENEWAL_GRACE
        result = compute(sub("active"), now=lapse + timedelta(minutes=5))
        assert (result.plan_code, result.monthly_limit, result.source) == ("free", 5, "free")
        assert (result.period_start, result.period_end) == (lapse, add_months(lapse, 1))
        assert result.renewal_grace_until is None

    def test_the_renewal_continues_from_the_old_end(self) -> None:
        renewed = sub("active", start=END, end=add_months(END, 1))
        result = compute(renewed, now=END + timedelta(hours=1))
        assert (result.plan_code, result.period_start, result.period_end) == (
            "pro",
            END,
            add_months(END, 1),
        )

    def test_canceling_at_period_end_has_no_renewal_grace(self) -> None:
        result = compute(sub("active", cancel_at_period_end=True))
        assert result.renewal_grace_until is None
        after = compute(sub("active", cancel_at_period_end=True), now=END + timedelta(hours=1))
        assert (after.plan_code, after.period_start) == ("free", END)

    def test_a_cancel_date_inside_the_grace_shortens_it(self) -> None:
        cancel_at = END + timedelta(hours=3)
        result = compute(sub("active", cancel_at=cancel_at), now=END + timedelta(hours=1))
        assert (result.plan_code, result.period_end) == ("pro", cancel_at)
        assert result.renewal_grace_until == cancel_at

    def test_past_due_keeps_its_own_grace_and_no_renewal_grace(self) -> None:
        result = compute(sub("past_due"))
        assert (result.period_end, result.renewal_grace_until) == (END + GRACE, None)


class TestChanges:
    """Upgrades at once; a move to free starts a fresh free period at the change."""

    def test_paid_to_free_mid_month_starts_the_free_period_at_the_cancellation(self) -> None:
        canceled_at = NOW - timedelta(days=2)
        result = compute(replace_sub(sub("canceled"), canceled_at=canceled_at), now=NOW)
        assert (result.plan_code, result.period_start) == ("free", canceled_at)
        assert result.period_end == add_months(canceled_at, 1)
        assert result.changes_at == add_months(canceled_at, 1)

    def test_an_upgrade_mid_period_takes_effect_at_once(self) -> None:
        before = compute(sub("active", "price_pro"))
        after = compute(sub("active", "price_business"))
        assert (before.monthly_limit, after.monthly_limit) == (100, 500)
        assert (after.period_start, after.period_end) == (before.period_start, before.period_end)

    def test_a_comp_that_ended_anchors_the_free_period(self) -> None:
        until = NOW - timedelta(days=1)
        result = compute(comp=CompFacts("pro", until))
        assert (result.plan_code, result.period_start) == ("free", until)


class TestMonthlyPeriods:
    """Month-long periods counted from an anchor, short months clamped."""

    def test_end_of_month_anchor_clamps(self) -> None:
        anchor = datetime(2026, 1, 31, 9, 30, tzinfo=UTC)
        assert add_months(anchor, 1) == datetime(2026, 2, 28, 9, 30, tzinfo=UTC)
        assert add_months(anchor, 12) == datetime(2027, 1, 31, 9, 30, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("now", "expected"),
        [
            (datetime(2026, 1, 31, 9, 30, tzinfo=UTC), (0, 1)),
            (datetime(2026, 2, 27, tzinfo=UTC), (0, 1)),
            (datetime(2026, 3, 30, tzinfo=UTC), (1, 2)),
            (datetime(2026, 12, 31, 10, tzinfo=UTC), (11, 12)),
        ],
    )
    def test_the_period_containing_now(self, now: datetime, expected: tuple[int, int]) -> None:
        anchor = datetime(2026, 1, 31, 9, 30, tzinfo=UTC)
        start, end = monthly_period(anchor, now)
        assert (start, end) == (add_months(anchor, expected[0]), add_months(anchor, expected[1]))
        assert start <= now < end
