"""The audit's checks over rows as the stack would hold them (no I/O).

The audit run against a real stack, clean and with planted violations, is in
tests/e2e/test_self_healing.py.
"""

from __future__ import annotations

from devstack.audit import (
    AuditOptions,
    AuditTarget,
    ChargeRow,
    ImageRow,
    ObjectRow,
    ReportedUsage,
    Violation,
    check_charges,
    check_dead_letters,
    check_images,
    check_objects_present,
    check_orphans,
    check_usage,
    refund_condition,
)

OPTIONS = AuditOptions(
    unfinished_after_seconds=60, orphan_grace_seconds=30, upload_grace_seconds=86400
)


def image(
    image_id: str = "i1",
    *,
    status: str = "ready",
    attempt: int = 1,
    original_key: str | None = "originals/u1/i1/room.jpg",
    staged_key: str | None = "staged/u1/i1/1-1.jpg",
    error: str | None = None,
    age: float = 5.0,
) -> ImageRow:
    return ImageRow(
        id=image_id,
        user_id="u1",
        status=status,
        attempt=attempt,
        original_key=original_key,
        staged_key=staged_key,
        error=error,
        age_seconds=age,
    )


def checks(violations: list[Violation]) -> list[tuple[str, tuple[str, ...]]]:
    return [(v.check, v.ids) for v in violations]


class TestCheckImages:
    def test_an_image_unfinished_past_the_timeout_is_named(self) -> None:
        rows = [
            image("old", status="processing", age=61, staged_key=None),
            image("young", status="queued", age=59, staged_key=None),
            image("done", age=10_000),
        ]
        assert checks(check_images(rows, OPTIONS)) == [("unfinished", ("old",))]

    def test_an_error_must_say_why(self) -> None:
        rows = [image("why", status="error", error="It failed."), image("mute", status="error")]
        assert checks(check_images(rows, OPTIONS)) == [("error-without-reason", ("mute",))]


class TestCheckObjectsPresent:
    def test_missing_original_and_staged_photos_are_named(self) -> None:
        rows = [image("a"), image("b", original_key="originals/u1/b/x.jpg", staged_key=None)]
        found = check_objects_present(rows, {"originals/u1/i1/room.jpg"})
        assert [(v.ids, "staged_key" in v.message) for v in found] == [
            (("a",), True),
            (("b",), False),
        ]

    def test_nothing_missing_is_clean(self) -> None:
        rows = [image("a")]
        assert (
            check_objects_present(rows, {"originals/u1/i1/room.jpg", "staged/u1/i1/1-1.jpg"}) == []
        )


class TestCheckOrphans:
    def test_owned_objects_and_young_strays_are_fine(self) -> None:
        objects = [
            ObjectRow("originals/u1/i1/room.jpg", 1000),
            ObjectRow("staged/u1/i1/1-1.jpg", 1000),
            ObjectRow("staged/u1/i1/0-1.jpg", 1000),
            ObjectRow("staged/u1/i1/2-1.jpg", 10),
            ObjectRow("uploads/u1/abc-room.jpg", 3600),
        ]
        jobs = [("i1", "staged/u1/i1/0-1.jpg")]
        assert check_orphans(objects, [image()], jobs, OPTIONS) == []

    def test_strays_past_their_grace_are_named(self) -> None:
        objects = [
            ObjectRow("originals/u1/gone/room.jpg", 31),
            ObjectRow("staged/u1/gone/1-1.jpg", 31),
            ObjectRow("staged/u1/i1/1-2.jpg", 31),
            ObjectRow("uploads/u1/abc-room.jpg", 86401),
        ]
        # A job's key does not keep the photo of a deleted image alive.
        jobs = [("gone", "staged/u1/gone/1-1.jpg")]
        found = check_orphans(objects, [image()], jobs, OPTIONS)
        assert checks(found) == [("orphan-object", (o.key,)) for o in objects]

    def test_an_upload_an_image_points_at_is_owned(self) -> None:
        legacy = image(original_key="uploads/u1/abc-room.jpg")
        objects = [ObjectRow("uploads/u1/abc-room.jpg", 10 * 86400)]
        assert check_orphans(objects, [legacy], [], OPTIONS) == []


class TestCheckCharges:
    def test_one_charge_per_attempt_is_clean(self) -> None:
        charges = [ChargeRow("u1", "i1", 1), ChargeRow("u1", "i1", 2)]
        assert check_charges(charges, [image(attempt=2)], refunds_exist=False) == []

    def test_an_attempt_charged_twice_is_named(self) -> None:
        charges = [ChargeRow("u1", "i1", 1), ChargeRow("u1", "i1", 1)]
        found = checks(check_charges(charges, [image()], refunds_exist=False))
        assert ("double-charge", ("i1",)) in found
        assert ("overcharge", ("i1",)) in found

    def test_a_charge_beyond_the_images_attempt_is_named(self) -> None:
        charges = [ChargeRow("u1", "i1", 2)]
        found = checks(check_charges(charges, [image()], refunds_exist=False))
        assert found == [("overcharge", ("i1",))]

    def test_a_failed_attempt_must_be_refunded_once_refunds_exist(self) -> None:
        failed = image(status="error", error="We could not stage it.")
        charges = [ChargeRow("u1", "i1", 1)]
        assert check_charges(charges, [failed], refunds_exist=False) == []
        found = checks(check_charges(charges, [failed], refunds_exist=True))
        assert found == [("charged-failure", ("i1",))]
        refunded = [ChargeRow("u1", "i1", 1, refunded=True)]
        assert check_charges(refunded, [failed], refunds_exist=True) == []


class TestCheckUsage:
    def test_usage_must_equal_charges_minus_refunds(self) -> None:
        reported = [
            ReportedUsage("exact", used=3, charged=3, refunded=0),
            ReportedUsage("refunded", used=2, charged=3, refunded=1),
            ReportedUsage("off", used=3, charged=4, refunded=0),
        ]
        assert checks(check_usage(reported)) == [("usage", ("off",))]


class TestCheckDeadLetters:
    def test_only_queues_holding_messages_are_named(self) -> None:
        found = check_dead_letters({"a.dlq": 0, "b.dlq": 2})
        assert checks(found) == [("dead-letters", ("b.dlq",))]
        assert "2 message(s)" in found[0].message


class TestRefundCondition:
    def test_no_refund_notion_means_nothing_is_refunded(self) -> None:
        assert refund_condition({"id", "user_id", "charged_at"}) == "FALSE"

    def test_a_refunded_at_column_is_recognised(self) -> None:
        assert refund_condition({"id", "refunded_at"}) == "refunded_at IS NOT NULL"


class TestAuditTarget:
    def test_for_stack_names_each_services_database(self) -> None:
        target = AuditTarget.for_stack(
            pg_base_url="postgresql+asyncpg://u:p@127.0.0.1:5432/", db_prefix="rs_x"
        )
        assert (
            target.database_urls["projects"]
            == "postgresql+asyncpg://u:p@127.0.0.1:5432/rs_x_projects"
        )
        assert set(target.database_urls) == {"gateway", "projects", "staging", "billing"}
