"""Staged object keys: one per attempt and run, and parsed back by the orphan sweeper."""

from __future__ import annotations

import uuid

from contracts.enums import RoomType, Style
from contracts.events import ImageQueued
from staging.maintenance import parse_staged_key
from staging.service import image_prefix, result_key


class TestStagedKeys:
    """Keys of staged photos."""

    def test_each_run_of_an_attempt_has_its_own_key_under_the_image_prefix(self) -> None:
        event = ImageQueued(
            image_id=uuid.uuid4(),
            user_id=uuid.uuid4(),
            project_id=uuid.uuid4(),
            original_key="originals/x.jpg",
            room_type=RoomType.KITCHEN,
            style=Style.RUSTIC,
            attempt=3,
        )
        first, second = result_key(event, 1, ".jpg"), result_key(event, 2, ".jpg")
        assert first != second
        assert first.startswith(image_prefix(event.user_id, event.image_id))
        assert parse_staged_key(first) == (event.image_id, 3)

    def test_legacy_keys_parse_and_foreign_keys_do_not(self) -> None:
        image = uuid.uuid4()
        assert parse_staged_key(f"staged/{uuid.uuid4()}/{image}/2.jpg") == (image, 2)
        assert parse_staged_key("staged/x.jpg") is None
        assert parse_staged_key(f"staged/u/{image}/final.jpg") is None
        assert parse_staged_key(f"uploads/u/{image}/1-1.jpg") is None
