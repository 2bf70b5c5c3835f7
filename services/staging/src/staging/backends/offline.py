"""The `local` backend: offline, deterministic furnishing drawn with Pillow (not AI)."""

from __future__ import annotations

import asyncio

from staging.backends.base import StageRequest, StageResult
from staging.backends.local import furnish


class LocalBackend:
    """Draws furniture that fits the room type, in the style's palette, on the floor."""

    name = "local"

    async def stage(self, request: StageRequest) -> StageResult:
        """Furnish the photo in a worker thread (CPU-bound)."""
        photo = await asyncio.to_thread(
            furnish, request.photo, request.room_type, request.style, request.seed
        )
        return StageResult(photo=photo, model="local-furnisher-v1", cost_usd=0.0)
