"""The `local` backend: offline, deterministic furnishing drawn with Pillow (not AI)."""

from __future__ import annotations

import asyncio

from staging.backends.base import NO_OP_SUBMITTED, OnSubmitted, StageRequest, StageResult
from staging.backends.local import furnish

LOCAL_MODEL = "local-furnisher-v1"


class LocalBackend:
    """Draws furniture that fits the room type, in the style's palette, on the floor."""

    name = "local"
    models: tuple[str, ...] = (LOCAL_MODEL,)

    async def stage(
        self,
        request: StageRequest,
        *,
        resume_id: str | None = None,
        on_submitted: OnSubmitted = NO_OP_SUBMITTED,
    ) -> StageResult:
        """Furnish the photo in a worker thread (CPU-bound); free, so nothing to resume."""
        photo = await asyncio.to_thread(
            furnish, request.photo, request.room_type, request.style, request.seed
        )
        return StageResult(photo=photo, model=LOCAL_MODEL, cost_usd=0.0)

    async def aclose(self) -> None:
        """Nothing to release."""
