"""The interface every staging backend implements, and the errors it may raise."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from contracts.enums import RoomType, Style
from contracts.reasons import FailureReason
from servicekit.messaging import PermanentError
from staging.reasons import Failure

OnSubmitted = Callable[[str], Awaitable[None]]
"""Called with a remote prediction id once it exists; returns after the id is durable."""


@dataclass(frozen=True)
class StageRequest:
    """What to stage: the upright RGB photo, the room type, the style, a seed and the model."""

    photo: Image.Image
    room_type: RoomType
    style: Style
    seed: int
    model: str | None = None


@dataclass(frozen=True)
class StageResult:
    """The staged photo and what it cost."""

    photo: Image.Image
    model: str | None = None
    cost_usd: float | None = None
    prediction_id: str | None = None


class TransientBackendError(Failure):
    """A failure a later run may fix; the consumer retries the message with growing delay.

    `resumable` says whether the next run may resume the same remote prediction; False when the
    prediction is finished without a usable result (failed, cancelled), so resuming is pointless.
    The message is the detail; `reason` is what the owner reads if the retries run out.
    """

    reason = FailureReason.SERVICE_BUSY

    def __init__(
        self, message: str, *, resumable: bool = True, reason: FailureReason | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.resumable = resumable


class BackendRefused(Failure, PermanentError):
    """The backend refused this photo or request for good; the message is the detail."""

    reason = FailureReason.MODEL_REFUSED


class LeaseLost(TransientBackendError):
    """Another worker took the job over; this run must stop without reporting anything."""


async def _no_op(_: str) -> None:
    return None


NO_OP_SUBMITTED: OnSubmitted = _no_op


class StagingBackend(Protocol):
    """Turns a photo of an empty room into a furnished one.

    A backend that pays per call and gets an id back (Replicate) reports that id through
    `on_submitted` before it waits, and resumes `resume_id` instead of paying again when the
    job runs a second time.
    """

    name: str
    models: tuple[str, ...]

    async def stage(
        self,
        request: StageRequest,
        *,
        resume_id: str | None = None,
        on_submitted: OnSubmitted = NO_OP_SUBMITTED,
    ) -> StageResult:
        """Stage one photo."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
