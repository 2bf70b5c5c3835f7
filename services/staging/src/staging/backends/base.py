"""The interface every staging backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from contracts.enums import RoomType, Style


@dataclass(frozen=True)
class StageRequest:
    """What to stage: the upright RGB photo, the room type, the style and a seed."""

    photo: Image.Image
    room_type: RoomType
    style: Style
    seed: int


@dataclass(frozen=True)
class StageResult:
    """The staged photo and what it cost."""

    photo: Image.Image
    model: str | None = None
    cost_usd: float | None = None
    prediction_id: str | None = None


class StagingBackend(Protocol):
    """Turns a photo of an empty room into a furnished one."""

    name: str

    async def stage(self, request: StageRequest) -> StageResult:
        """Stage one photo."""
        ...
