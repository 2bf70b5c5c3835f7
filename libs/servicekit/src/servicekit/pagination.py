"""Opaque keyset cursors over `(created_at, id)`, newest first."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime

from servicekit.errors import ServiceError


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """An opaque cursor pointing just past this row."""
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Read a cursor made by `encode_cursor`; a 400 for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor.encode()).decode()
        created, row_id = raw.split("|", 1)
        moment = datetime.fromisoformat(created)
        if moment.tzinfo is None:
            raise ValueError("cursor time without a time zone")
        # Normalising here surfaces times PostgreSQL cannot hold (year 1 at +14:00) as a 400.
        return moment.astimezone(UTC), uuid.UUID(row_id)
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise ServiceError("The cursor is not valid.", code="invalid_cursor") from exc
