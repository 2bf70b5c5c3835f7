"""Versioned event models, each with its routing key.

Every message on the bus is an `Envelope` whose `data` is one of the payload models below.
Readers ignore unknown fields, so a producer may add optional fields without a new version;
a breaking change is a new model with a new `version`, published side by side.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from contracts.enums import ImageStatus, PlanCode, RoomType, Style


class Event(BaseModel):
    """Base of every event payload: frozen, tolerant of unknown fields."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    routing_key: ClassVar[str]
    version: ClassVar[int] = 1


class UserCreated(Event):
    """A user was seen for the first time by the gateway."""

    routing_key: ClassVar[str] = "user.created"

    user_id: uuid.UUID
    email: str | None = None


class CustomerLinked(Event):
    """Billing created a Stripe customer for a user."""

    routing_key: ClassVar[str] = "customer.linked"

    user_id: uuid.UUID
    stripe_customer_id: str


class ImageQueued(Event):
    """An image is waiting to be staged; `attempt` counts restages of the same image."""

    routing_key: ClassVar[str] = "image.queued"

    image_id: uuid.UUID
    user_id: uuid.UUID
    project_id: uuid.UUID
    original_key: str
    room_type: RoomType
    style: Style
    seed: int | None = None
    attempt: int = 1


class ImageSettle(ImageQueued):
    """Projects asks staging to settle an attempt that has been unfinished for too long.

    Staging answers with the attempt's real outcome (`image.ready` or `image.failed`) when its
    job has finished, runs it if it never started, and takes it over if its lease lapsed. It
    never calls a backend again for an attempt whose result is stored.
    """

    routing_key: ClassVar[str] = "image.settle"


class ImageProcessing(Event):
    """Staging has started work on an image."""

    routing_key: ClassVar[str] = "image.processing"

    image_id: uuid.UUID
    user_id: uuid.UUID
    attempt: int = 1
    backend: str


class ImageReady(Event):
    """The staged photo is stored."""

    routing_key: ClassVar[str] = "image.ready"

    image_id: uuid.UUID
    user_id: uuid.UUID
    attempt: int = 1
    staged_key: str
    content_type: str = "image/jpeg"
    size_bytes: int | None = None
    backend: str
    model: str | None = None
    duration_ms: int | None = None
    cost_usd: float | None = None


class ImageFailed(Event):
    """Staging gave up on an image; `reason` is written for a person."""

    routing_key: ClassVar[str] = "image.failed"

    image_id: uuid.UUID
    user_id: uuid.UUID
    attempt: int = 1
    reason: str
    backend: str | None = None


class ImageDeleted(Event):
    """An image was deleted: pending work is cancelled and its objects removed."""

    routing_key: ClassVar[str] = "image.deleted"

    image_id: uuid.UUID
    user_id: uuid.UUID
    keys: list[str] = Field(default_factory=list)


class ProjectDeleted(Event):
    """A project and all its images were deleted."""

    routing_key: ClassVar[str] = "project.deleted"

    project_id: uuid.UUID
    user_id: uuid.UUID
    image_ids: list[uuid.UUID] = Field(default_factory=list)
    keys: list[str] = Field(default_factory=list)


class SubscriptionUpdated(Event):
    """A user's entitlement changed: the plan and monthly allowance now in force."""

    routing_key: ClassVar[str] = "subscription.updated"

    user_id: uuid.UUID
    plan_code: PlanCode
    monthly_limit: int
    period_start: datetime
    period_end: datetime
    status: str
    renewal_grace_until: datetime | None = None
    """If no renewal is heard by `period_end`, the plan stays in force until this instant, with
    its allowance counted afresh from `period_end` (Stripe's renewal webhook can be late)."""
    fallback_plan_code: PlanCode | None = None
    fallback_limit: int | None = None
    """The plan and monthly allowance that apply once this entitlement lapses unrenewed."""


IMAGE_STATUS_EVENTS: dict[str, ImageStatus] = {
    ImageQueued.routing_key: ImageStatus.QUEUED,
    ImageProcessing.routing_key: ImageStatus.PROCESSING,
    ImageReady.routing_key: ImageStatus.READY,
    ImageFailed.routing_key: ImageStatus.ERROR,
}

EVENT_TYPES: dict[str, type[Event]] = {
    cls.routing_key: cls
    for cls in (
        UserCreated,
        CustomerLinked,
        ImageQueued,
        ImageSettle,
        ImageProcessing,
        ImageReady,
        ImageFailed,
        ImageDeleted,
        ProjectDeleted,
        SubscriptionUpdated,
    )
}

E = TypeVar("E", bound=Event)


def _now() -> datetime:
    return datetime.now(UTC)


class Envelope(BaseModel, Generic[E]):
    """What travels on the bus: metadata around one event payload."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    event_type: str
    occurred_at: datetime = Field(default_factory=_now)
    producer: str
    correlation_id: str | None = None
    version: int = 1
    data: E

    @classmethod
    def wrap(cls, event: E, *, producer: str, correlation_id: str | None = None) -> Envelope[E]:
        """Wrap a payload for publishing."""
        return cls(
            event_type=event.routing_key,
            producer=producer,
            correlation_id=correlation_id,
            version=event.version,
            data=event,
        )


def parse_envelope(body: bytes | str | dict[str, Any], event_type: type[E]) -> Envelope[E]:
    """Parse a message body as an envelope carrying `event_type`."""
    model = Envelope[event_type]  # type: ignore[valid-type]
    if isinstance(body, dict):
        return model.model_validate(body)
    return model.model_validate_json(body)
